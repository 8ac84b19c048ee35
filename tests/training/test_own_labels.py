"""Training on your own labels: 0/255 binary masks train to both classes with ``data.label_map={255: 1}``
(without it every labelled pixel is class 0), and ``train.class_weights: auto`` computes
``sqrt(median frequency / frequency)`` from the training labels, logs it and stores it in config.yaml."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import yaml
from PIL import Image

from pspnet.training.trainer import Trainer, train


def _to_0_255(root):
    """Rewrite a 2-class folder dataset's labels as 0/255 masks, as image editors save binary masks."""
    for p in root.rglob("labels/*.png"):
        Image.fromarray((np.asarray(Image.open(p)) * 255).astype(np.uint8)).save(p)
    return root


@pytest.mark.slow
def test_0_255_masks_train_to_both_classes_with_label_map(tmp_path, folder_dataset, tiny_run_config):
    data = _to_0_255(folder_dataset(tmp_path / "data", splits=("train", "val"), classes=2))
    common = ("model.num_classes=2", "train.iters=8", "train.lr=0.05")
    mapped = train(tiny_run_config(data, tmp_path / "mapped", *common, "data.label_map={255: 1}"),
                   progress=False, device="cpu")
    iou = [c["iou"] for c in mapped.final_metrics["per_class"]]
    assert all(v is not None and v > 0 for v in iou), iou  # both classes in the ground truth and predicted
    assert yaml.safe_load((tmp_path / "mapped" / "config.yaml").read_text())["data"]["label_map"] == {255: 1}

    plain = train(tiny_run_config(data, tmp_path / "plain", *common), progress=False, device="cpu")
    iou = [c["iou"] for c in plain.final_metrics["per_class"]]
    assert iou[1] is None or np.isnan(iou[1])  # what the issue reports: class 1 never reaches the model


def test_auto_class_weights_are_computed_logged_and_stored(tmp_path, folder_dataset, tiny_run_config, caplog):
    data = folder_dataset(tmp_path / "data", n=4, classes=3, ignore="top_band")
    cfg = tiny_run_config(data, tmp_path / "run", "train.class_weights=auto", "train.iters=1")
    counts = np.zeros(3)
    for p in sorted((data / "train" / "labels").glob("*.png")):
        label = np.asarray(Image.open(p))
        counts += np.bincount(label[label < 3], minlength=3)
    freq = counts / counts.sum()
    expected = np.sqrt(np.median(freq) / freq)

    with caplog.at_level(logging.INFO, logger="pspnet.train"):
        trainer = Trainer(cfg, progress=False, device="cpu")
    weights = trainer.cfg.train.class_weights
    assert weights == pytest.approx(expected.tolist(), abs=1e-4)
    assert trainer.criterion.class_weights.tolist() == pytest.approx(weights)  # the loss uses them
    assert "train.class_weights=auto" in caplog.text and f"class_2 {weights[2]:g}" in caplog.text
    assert cfg.train.class_weights == "auto"  # the caller's config is left alone
    trainer.fit()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["class_weights"]
    assert saved == weights  # the run's config records the numbers, not "auto"
