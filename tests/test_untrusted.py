"""Untrusted weight files: a pickle that would run code is refused and never runs; safetensors files
with wrong shapes, dtypes, non-finite values or a bad config in their metadata are refused with a
:class:`WeightsError` before a model is built from them or a tensor is used."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pspnet.config import load_config
from pspnet.errors import PSPNetError, WeightsError
from pspnet.models import PSPNet
from pspnet.models.weights import load_into, load_weights, read_state_dict, save_weights
from pspnet.training.state import load_checkpoint
from pspnet.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
# the config of tiny_pspnet(deep_stem=False) (conftest), as weight-file metadata records it
TINY = dict(num_classes=3, depth=18, head_channels=16, aux_channels=8, deep_stem=False)


class _Payload:
    """Unpickling this object calls ``os.system('touch MARKER')``: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    marker = tmp_path / "PWNED"
    zip_ckpt = tmp_path / "evil_zip.pt"  # torch.save's zip container, shaped like our training checkpoint
    torch.save({"model": {"w": torch.zeros(2)}, "iteration": 3, "optimizer": _Payload(marker)}, zip_ckpt)
    legacy = tmp_path / "evil_legacy.pth"  # a bare pickle stream, as old .pth files are
    with open(legacy, "wb") as f:
        pickle.dump({"state_dict": {"w": _Payload(marker)}}, f, protocol=2)
    # sanity: the payload really runs when unpickled without protection (in a subprocess we discard)
    probe = tmp_path / "probe.pkl"
    probe_marker = tmp_path / "PROBE_RAN"
    with open(probe, "wb") as f:
        pickle.dump(_Payload(probe_marker), f, protocol=2)
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(probe)!r}, 'rb'))"], check=True)
    assert probe_marker.exists(), "the test payload does not work, so the test would prove nothing"
    return marker, [zip_ckpt, legacy]


def test_malicious_pickle_refused_payload_never_runs(tmp_path):
    marker, files = _evil_files(tmp_path)
    for path in files:
        for loader in (read_state_dict, load_checkpoint, load_weights):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(WeightsError) as e:
                    loader(path)
            msg = str(e.value)
            assert str(path) in msg and "refused" in msg and "weights_only" in msg, msg
            assert "system" in msg, f"the message should name the refused callable: {msg}"
            assert not marker.exists(), f"{loader.__name__}({path.name}) ran the payload"


def test_malicious_weights_refused_by_predict_and_eval_cli(tmp_path, capsys):
    from pspnet import cli
    marker, (zip_ckpt, legacy) = _evil_files(tmp_path)
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    for argv in (["predict", str(img), "--weights", str(legacy), "--out", str(tmp_path / "out")],
                 ["eval", "--weights", str(zip_ckpt), "--dataset", "folder", "--data-root", str(tmp_path)]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "refused to load" in err, err
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_malicious_checkpoint_refused_by_trainer_resume_and_cli(tmp_path, folder_dataset, tiny_run_overrides):
    marker, (zip_ckpt, legacy) = _evil_files(tmp_path)
    data = folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    overrides = tiny_run_overrides(data, tmp_path / "run", "data.crop_size=[16,16]", "data.val_split=''",
                                   "train.iters=1")
    cfg = load_config(None, overrides)
    with pytest.raises(WeightsError, match="refused"):
        Trainer(cfg, resume=zip_ckpt, progress=False)
    with pytest.raises(WeightsError, match="refused"):  # as pretrained weights
        Trainer(load_config(None, overrides + [f"train.pretrained={legacy}"]), progress=False)
    assert not marker.exists()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("{}\n")
    r = subprocess.run([sys.executable, "-m", "pspnet.cli", "train", "-c", str(cfg_file), *overrides,
                        "--resume", str(zip_ckpt)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error:" in r.stderr and "refused to load" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not marker.exists(), "the CLI ran the payload"


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_pspnet) -> tuple[Path, dict]:
    """A valid weight file (tiny PSPNet-18) and its tensors; the tests write damaged copies of it."""
    model = tiny_pspnet(deep_stem=False)
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    save_weights(model, path, ["a", "b", "c"], [(0, 0, 0), (1, 1, 1), (2, 2, 2)])
    return path, load_file(str(path))


def _rewrite(path: Path, out: Path, state=None, **meta_changes) -> Path:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    for k, v in meta_changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v if isinstance(v, str) else json.dumps(v)
    save_file(state if state is not None else load_file(str(path)), str(out), metadata=meta)
    return out


def test_good_file_loads(tmp_path, good):
    path, _ = good
    model, meta = load_weights(path)
    assert meta["class_names"] == ["a", "b", "c"] and model.config.num_classes == 3


def test_wrong_shapes_and_dtypes_refused_before_use(tmp_path, good, monkeypatch, tiny_pspnet):
    path, state = good
    used = []
    monkeypatch.setattr(PSPNet, "load_state_dict", lambda self, *a, **k: used.append(1))
    cases = {
        "shape": ("layer1.0.conv1.weight", state["layer1.0.conv1.weight"][:, :, :1].clone(), "wrongly shaped"),
        "int_for_float": ("layer1.0.conv1.weight", state["layer1.0.conv1.weight"].to(torch.int32), "dtype"),
        "float_for_int": ("layer0.1.num_batches_tracked", torch.zeros((), dtype=torch.float32), "dtype"),
        "nan": ("cls.0.weight", torch.full_like(state["cls.0.weight"], float("nan")), "NaN"),
    }
    for name, (key, value, words) in cases.items():
        bad = dict(state)
        bad[key] = value
        out = _rewrite(path, tmp_path / f"{name}.safetensors", bad)
        with pytest.raises(WeightsError, match=words) as e:
            load_weights(out)
        assert key in str(e.value), str(e.value)
        with pytest.raises(WeightsError, match=words):
            load_into(tiny_pspnet(deep_stem=False, seed=None), read_state_dict(out)[0], source=str(out))
    assert not used, "load_state_dict was called on a refused file"


def test_classifier_must_match_the_config(tmp_path, good):
    """A file whose classifier has another class count than its own config is inconsistent: refused
    (re-initialising the classifier is only for an explicit ``num_classes=`` fine-tuning request)."""
    path, state = good
    bad = dict(state)
    bad["cls.4.weight"], bad["cls.4.bias"] = state["cls.4.weight"][:2].clone(), state["cls.4.bias"][:2].clone()
    out = _rewrite(path, tmp_path / "cls.safetensors", bad, class_names=["a", "b", "c"])
    with pytest.raises(WeightsError, match="cls.4.weight"):
        load_weights(out)
    model, _ = load_weights(out, num_classes=5)  # explicit fine-tuning request: re-initialised
    assert model.cls[4].weight.shape[0] == 5


@pytest.mark.parametrize("config, words", [
    ({**TINY, "num_classes": -1}, "num_classes"),
    ({**TINY, "depth": 7}, "depth"),
    ({**TINY, "evil": 1}, "unknown key 'evil'"),
    ({**TINY, "num_classes": "3"}, "wrong type"),
    ({**TINY, "aux": "yes"}, "wrong type"),
    ({**TINY, "bins": 5}, "wrong type"),
    ({**TINY, "bins": [1, 10**9]}, "range"),
    ({**TINY, "head_channels": 10**9}, "range"),  # would allocate terabytes if the model were built
    ({**TINY, "dropout": 2.0}, "range"),
    ({**TINY, "norm": "evil"}, "norm"),
    ([1, 2, 3], "JSON object"),
])
def test_config_in_metadata_validated(tmp_path, good, monkeypatch, config, words):
    path, _ = good
    out = _rewrite(path, tmp_path / "bad_config.safetensors", config=config)
    built = []
    real_init = PSPNet.__init__
    monkeypatch.setattr(PSPNet, "__init__", lambda self, *a, **k: (built.append(1), real_init(self, *a, **k))[1])
    with pytest.raises(WeightsError, match=words) as e:
        load_weights(out)
    assert str(out) in str(e.value)
    assert not built, "a model was built from an invalid config"


@pytest.mark.parametrize("meta, words", [
    ({"config": "{not json"}, "not valid JSON"),
    ({"class_names": [1, 2, 3]}, "class_names"),
    ({"class_names": ["a"]}, "class names"),
    ({"palette": [[0, 0, 999]] * 3}, "palette"),
])
def test_other_metadata_validated(tmp_path, good, meta, words):
    path, _ = good
    out = _rewrite(path, tmp_path / "bad_meta.safetensors", **meta)
    with pytest.raises(WeightsError, match=words):
        load_weights(out)


def test_damaged_weight_files(tmp_path, good):
    path, _ = good
    raw = path.read_bytes()
    cases = {
        "empty.safetensors": b"",
        "truncated.safetensors": raw[: len(raw) // 2],
        "header_bomb.safetensors": (2**62).to_bytes(8, "little") + b"{}",
        "garbage.pt": os.urandom(256),
        "truncated.pt": b"PK\x03\x04" + raw[:100],
        "text.pth": b"hello, I am not a checkpoint\n",
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(WeightsError) as e:
            read_state_dict(p)
        assert str(p) in str(e.value)
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "missing.safetensors")


def test_plain_tensor_checkpoints_still_load(tmp_path, tiny_pspnet):
    """The guard must not refuse honest files: a state_dict and a training-style checkpoint."""
    model = tiny_pspnet(deep_stem=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "orig.pth")
    state, _ = read_state_dict(tmp_path / "orig.pth")
    fresh = tiny_pspnet(deep_stem=False, seed=None)
    load_into(fresh, state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    assert issubclass(WeightsError, PSPNetError)
