"""Hostile input cannot hurt the user (issue 41): configs that cannot explode, weight files checked for
their tensors before a model is built, every CLI option validated where it is parsed (exit 2 and the
allowed range), outputs written atomically, a batch that goes on past a failing image, a memory budget.

The download path cases (``%2F`` and friends) are in ``tests/hub/test_hub.py``. Every case here runs in
well under a second of its own and a few hundred MB at most; the regression cases each fail on the code
before the fix (the module docstring of each section says how they did).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from pspnet.config import load_config
from pspnet.errors import ConfigError, PSPNetError, WeightsError
from pspnet.models import PSPNet
from pspnet.models.weights import load_weights

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------ YAML alias bombs
def _alias_bomb(levels: int = 9, width: int = 10, where: str = "train: {lr: *L%d}") -> str:
    """``levels`` nested lists of ``width`` aliases each: width**levels values once expanded."""
    lines = ["l0: &L0 [" + ",".join(["1"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &L{i} [" + ",".join([f"*L{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n" + (where % (levels - 1) if "%d" in where else where) + "\n"


@pytest.mark.parametrize("where", ["train: {lr: *L%d}", "train: *L%d", "model: {bins: *L%d}",
                                   "data: {class_names: *L%d}"])
def test_a_yaml_alias_bomb_is_refused_in_under_a_second(tmp_path, where):
    """Was: 3 GB and killed at 90 s (the error message repr'd the 10^9 values), or 65 s to a refusal."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(where=where))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="anchors and aliases") as e:
        load_config(path)
    assert time.perf_counter() - start < 1.0
    assert len(str(e.value)) < 400


def test_an_alias_bomb_in_an_override_is_refused():
    with pytest.raises(ConfigError):
        load_config(None, ["train.lr=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                           "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                           "&e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]]"])


def test_a_modest_alias_is_fine_and_errors_never_expand_a_value(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("common: &lr 0.01\n")
    with pytest.raises(ConfigError, match="unknown key 'common'"):
        load_config(path)
    path.write_text("train: {lr: &n 0.01, iters: 50}\neval: {}\nmodel: {dropout: *n}\n")
    assert load_config(path).train.lr == 0.01
    # a big value under a known key: the message shows a few dozen characters of it, not all of it
    path.write_text(_alias_bomb(levels=4, where="train: {lr: *L%d}"))  # 10^4 values: under the limit
    with pytest.raises(ConfigError) as e:
        load_config(path)
    line = next(ln for ln in str(e.value).splitlines() if "train.lr" in ln)
    assert len(line) < 200, line


def test_a_recursive_yaml_document_is_a_config_error(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("train: &t {lr: *t}\n")
    with pytest.raises(ConfigError):
        load_config(path)


_yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                            lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                                                    max_size=4), max_leaves=20)


@FAST
@given(section=st.sampled_from(["train", "data", "model", "eval", "other"]), key=st.text(max_size=10),
       value=_yaml_values, alias_depth=st.integers(0, 12))
def test_yaml_shapes_load_or_are_config_errors(tmp_path, section, key, value, alias_depth):
    """Any document shape, with its value put behind a chain of anchors: a Config or a ConfigError, fast."""
    text = _alias_bomb(levels=alias_depth, width=3, where="") if alias_depth else ""
    text += yaml.safe_dump({section: {key: value}})
    path = tmp_path / "shape.yaml"
    path.write_text(text)
    start = time.perf_counter()
    try:
        load_config(path)
    except ConfigError as e:
        assert len(str(e)) < 5000
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------ weight files: tensors checked before a model
_LARGEST = dict(num_classes=65536, depth=152, head_channels=16384, aux_channels=16384, bins=list(range(1, 17)),
                stem_channels=[4096, 4096, 4096], ppm_channels=16384)


def _metadata_only(path: Path, config: dict, tensors: dict | None = None) -> Path:
    save_file(tensors or {}, str(path), metadata={"format": "pspnet-weights-v1", "config": json.dumps(config)})
    return path


@pytest.fixture
def no_real_model(monkeypatch):
    """Fails the test as soon as a PSPNet is built anywhere but on the meta device (a spy: the old code
    built the 40 GB model first; this stops it before it allocates)."""
    real_init = PSPNet.__init__

    def spy(self, *a, **k):
        if torch.get_default_device().type != "meta":
            raise AssertionError("a real model was built before the file's tensors were checked")
        real_init(self, *a, **k)
    monkeypatch.setattr(PSPNet, "__init__", spy)


def test_a_metadata_only_weight_file_is_refused_before_a_model_is_built(tmp_path, no_real_model):
    """Was: a 492-byte file made predict/eval allocate 39.9 GB and die with a traceback."""
    path = _metadata_only(tmp_path / "huge.safetensors", _LARGEST)
    assert path.stat().st_size < 1000
    with pytest.raises(WeightsError, match="no tensors"):
        load_weights(path)


def test_a_weight_file_missing_tensors_is_refused_before_a_model_is_built(tmp_path, no_real_model):
    """Was: a 572-byte one took 5.2 GB and 21.7 s before its error."""
    path = _metadata_only(tmp_path / "some.safetensors", dict(_LARGEST, depth=50),
                          {"cls.4.bias": torch.zeros(65536)})
    with pytest.raises(WeightsError, match="missing keys"):
        load_weights(path)


def test_predict_with_a_metadata_only_file_is_a_usage_error(tmp_path, capsys, no_real_model):
    from pspnet.cli import main
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    path = _metadata_only(tmp_path / "huge.safetensors", _LARGEST)
    assert main(["predict", str(image), "--weights", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "no tensors" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_devices_fifos_and_folders_as_weights_say_what_they_are(tmp_path):
    """Was: 'weight file not found' for a link to /dev/zero or a FIFO."""
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "nowhere")
    for name, words in [("zero", "device, FIFO"), ("fifo", "device, FIFO"), ("dir", "a folder"),
                        ("dangling", "broken symbolic link"), ("absent", "not found")]:
        with pytest.raises(WeightsError, match=words):
            load_weights(tmp_path / f"{name}.safetensors")


@FAST
@given(header=st.binary(max_size=64), declared=st.integers(0, 2**64 - 1))
def test_weight_file_headers_are_weights_errors(tmp_path, header, declared):
    path = tmp_path / "w.safetensors"
    path.write_bytes(declared.to_bytes(8, "little") + header)
    with pytest.raises(PSPNetError):
        load_weights(path)
