"""Inference never runs weights it did not load, refuses images too small on every path, and
uses the test settings a weight file records (printing what it used)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import capability
from pspnet.cli import main
from pspnet.models import PSPNet
from pspnet.models.weights import save_weights


def _release_checkpoint(path: Path, model: PSPNet) -> Path:
    """``model`` as a checkpoint in the original release's layout (``state_dict`` with ``module.`` keys, no config)."""
    torch.save({"epoch": 200, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_release_checkpoint_with_other_class_count_is_refused(tmp_path, capsys, tiny_pspnet):
    ckpt = _release_checkpoint(tmp_path / "train_epoch_200.pth", tiny_pspnet(19, head_channels=256, aux_channels=128))
    rc = main(["eval", "--config", "camvid/pspnet_r18_cpu", "--weights", str(ckpt),
               "--data-root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "19 classes" in err and "11" in err and "--num-classes 11" in err, err
    assert "mIoU" not in capsys.readouterr().out  # no metrics table from a random classifier


def test_same_class_count_release_checkpoint_still_loads(tmp_path, tiny_pspnet):
    from pspnet.config import load_config
    from pspnet.inference.loading import load_for_inference
    ckpt = _release_checkpoint(tmp_path / "train_epoch_200.pth", tiny_pspnet(11, head_channels=256, aux_channels=128))
    model, _ = load_for_inference(ckpt, load_config("camvid/pspnet_r18_cpu", []), "cpu")
    assert model.config.num_classes == 11


@pytest.fixture
def tiny_weights(tiny_pspnet):
    """``tiny_weights(path, test_settings)``: a tiny 3-class model without aux head saved to ``path``,
    recording ``test_settings``."""
    def write(path: Path, test_settings: dict) -> Path:
        save_weights(tiny_pspnet(aux=False), path, class_names=["a", "b", "c"],
                     extra={"test_settings": test_settings})
        return path
    return write


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_predict_refuses_a_3x3_image_at_every_precision(tmp_path, capsys, precision, tiny_weights):
    weights = tiny_weights(tmp_path / "w.safetensors", {"base_size": 64})
    Image.fromarray(np.full((3, 3, 3), 90, np.uint8)).save(tmp_path / "tiny.png")
    rc = main(["predict", str(tmp_path / "tiny.png"), "--weights", str(weights), "--out", str(tmp_path / "out"),
               "--precision", precision, "--no-progress"])
    if precision == "bf16" and not capability.check("bf16").runs:  # an AVX2-only CPU: refused before any image
        assert rc == 2 and "precision bf16 on backend torch does not run" in capsys.readouterr().err
        return
    assert rc == 1
    assert "3x3 pixels is too small" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("tiny_*"))


def test_predict_uses_recorded_settings_unless_overridden(tmp_path, capsys, monkeypatch, tiny_weights):
    weights = tiny_weights(tmp_path / "w.safetensors", {"base_size": 48, "flip": True})
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    seen = []
    import pspnet.inference.predict as predict_mod
    real = predict_mod.predict_logits

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(predict_mod, "predict_logits", spy)
    assert main(["predict", str(tmp_path / "x.png"), "--weights", str(weights), "--out", str(tmp_path / "o1"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "base_size=48 (weights)" in out and "flip=True (weights)" in out and "protocol=release" in out, out
    assert seen[-1]["base_size"] == 48 and seen[-1]["flip"] is True and seen[-1]["protocol"] == "release"
    assert main(["predict", str(tmp_path / "x.png"), "--weights", str(weights), "--out", str(tmp_path / "o2"),
                 "--base-size", "0", "--no-flip", "--protocol", "logit-average", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "base_size=None (command line)" in out and "flip=False (command line)" in out, out
    assert seen[-1]["base_size"] is None and seen[-1]["flip"] is False and seen[-1]["protocol"] == "logit-average"


def test_older_files_record_eval_base_size(tmp_path):
    from pspnet.config import recorded_test_settings
    assert recorded_test_settings({"eval_base_size": 240}, "f") == {"base_size": 240}
    assert recorded_test_settings({}, "f") == {}


@pytest.mark.parametrize("bad, words", [({"base_size": "big"}, "base_size"), ({"scalez": [1.0]}, "scalez"),
                                        ({"protocol": "mine"}, "protocol"), ([240], "JSON object")])
def test_recorded_settings_are_validated(bad, words):
    from pspnet.config import recorded_test_settings
    from pspnet.errors import ConfigError
    with pytest.raises(ConfigError, match=words):
        recorded_test_settings({"test_settings": bad}, "w.safetensors")


def test_eval_json_records_settings_and_their_sources(tmp_path, capsys, folder_dataset, tiny_weights):
    root = folder_dataset(tmp_path / "data", splits=("val",), n=2, classes=3)
    weights = tiny_weights(tmp_path / "w.safetensors", {"base_size": 40})
    rc = main(["eval", "--dataset", "folder", "--data-root", str(root), "--weights", str(weights),
               "--split", "val", "--flip", "--out", str(tmp_path / "m.json"), "--no-progress"])
    assert rc == 0, capsys.readouterr()
    s = json.loads((tmp_path / "m.json").read_text())["settings"]
    assert s["base_size"] == 40 and s["flip"] is True and s["protocol"] == "release"
    assert s["sources"]["base_size"] == "weights" and s["sources"]["flip"] == "command line"
