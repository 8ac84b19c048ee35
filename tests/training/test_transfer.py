"""Transfer learning (seed 003): fine-tune an 11-class CamVid-style PSPNet on KITTI road (2 classes).

The CamVid model is a tiny freshly built one saved with ``save_weights`` (the real one is the
output of camvid/pspnet_r18_cpu); the KITTI data is generated in the KITTI road layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.config import load_config
from pspnet.data.datasets.camvid import CLASS_NAMES as CAMVID_CLASSES
from pspnet.data.datasets.camvid import PALETTE as CAMVID_PALETTE
from pspnet.models.weights import read_state_dict, save_weights
from pspnet.training.trainer import Trainer

ROAD, NOT_ROAD, VOID = (255, 0, 255), (255, 0, 0), (0, 0, 0)


def make_kitti_road(root: Path, n: int = 6, size=(40, 96), seed: int = 3) -> Path:
    """``training/image_2/um_00000i.png`` + ``training/gt_image_2/um_road_00000i.png``: grey road below a
    random horizon, colourful clutter above, an unlabelled (black) strip at the very bottom."""
    rng = np.random.default_rng(seed)
    (root / "training" / "image_2").mkdir(parents=True)
    (root / "training" / "gt_image_2").mkdir(parents=True)
    h, w = size
    for i in range(n):
        horizon = int(rng.integers(h // 3, 2 * h // 3))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[horizon:] = np.clip(rng.normal(110, 8, (h - horizon, w, 1)), 0, 255).astype(np.uint8)
        gt = np.zeros((h, w, 3), np.uint8)
        gt[:horizon] = NOT_ROAD
        gt[horizon:] = ROAD
        gt[-2:] = VOID
        Image.fromarray(img).save(root / "training" / "image_2" / f"um_{i:06d}.png")
        Image.fromarray(gt).save(root / "training" / "gt_image_2" / f"um_road_{i:06d}.png")
    return root


def test_finetune_camvid_model_on_kitti_road(tmp_path: Path, caplog, tiny_pspnet) -> None:
    widths = {"head_channels": 32, "aux_channels": 16}
    camvid = tiny_pspnet(11, seed=123, **widths)
    camvid_path = tmp_path / "camvid_pspnet18.safetensors"
    save_weights(camvid, camvid_path, CAMVID_CLASSES, CAMVID_PALETTE)
    source, _ = read_state_dict(camvid_path)

    root = make_kitti_road(tmp_path / "kitti")
    cfg = load_config(None, [
        "data.dataset=kitti_road", f"data.root={root}", "data.val_split=", "data.crop_size=[32,64]",
        "data.workers=0", "data.scale_min=0.75", "data.scale_max=1.25",
        "model.depth=18", *(f"model.{k}={v}" for k, v in widths.items()),
        f"train.pretrained={camvid_path}", "train.iters=10", "train.batch_size=2", "train.lr=0.03",
        "train.precision=fp32", "train.log_every=1", f"train.output_dir={tmp_path / 'run'}"])

    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg, progress=False)
    assert "re-initialised classifier layers ['aux.4', 'cls.4']" in caplog.text

    state = trainer.model.state_dict()
    assert state["cls.4.weight"].shape == (2, 32, 1, 1) and state["aux.4.bias"].shape == (2,)
    kept = [k for k in state if not k.startswith(("cls.4.", "aux.4."))]
    assert "layer4.1.conv2.weight" in kept and "ppm.features.3.1.weight" in kept
    for k in kept:  # every other tensor, backbone and head, BN statistics included, comes from CamVid
        assert torch.equal(state[k], source[k]), k
    backbone_before = state["layer3.0.conv1.weight"].clone()

    result = trainer.fit()
    losses = [r["loss"] for r in result.history if r["kind"] == "train"]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), f"loss did not decrease: {losses}"
    assert not torch.equal(trainer.model.state_dict()["layer3.0.conv1.weight"], backbone_before)

    weights, meta = read_state_dict(result.weights)
    assert meta["class_names"] == ["not_road", "road"] and meta["config"]["num_classes"] == 2
    assert weights["cls.4.weight"].shape[0] == 2


def test_pretrained_with_other_widths_fails_clearly(tmp_path: Path, tiny_pspnet) -> None:
    camvid_path = tmp_path / "camvid.safetensors"
    save_weights(tiny_pspnet(11, seed=None, head_channels=32, aux_channels=16), camvid_path)
    root = make_kitti_road(tmp_path / "kitti", n=2)
    cfg = load_config(None, ["data.dataset=kitti_road", f"data.root={root}", "data.val_split=",
                             "data.crop_size=[32,64]", "data.workers=0", "model.depth=18", "model.head_channels=64",
                             "model.aux_channels=16", f"train.pretrained={camvid_path}", "train.iters=1",
                             "train.batch_size=2", f"train.output_dir={tmp_path / 'run'}"])
    from pspnet.errors import WeightsError
    with pytest.raises(WeightsError,
                       match=r"(?s)wrongly shaped keys.*cls\.0\.weight: file \(32, 1024, 3, 3\) vs model \(64"):
        Trainer(cfg, progress=False)


def test_shipped_transfer_config_starts_from_the_packaged_model(tmp_path: Path, caplog) -> None:
    """kitti_road/pspnet_r18_from_camvid as shipped (``train.pretrained: packaged``) loads the packaged
    CamVid file: its model section fits it, every tensor but the classifier comes from it, and a few
    steps train."""
    from pspnet.models.pretrained import default_weights_path
    packaged = default_weights_path()
    source, _ = read_state_dict(packaged)
    root = make_kitti_road(tmp_path / "kitti", n=2)
    cfg = load_config("kitti_road/pspnet_r18_from_camvid", [
        f"data.root={root}", "data.crop_size=[32,64]", "data.workers=0", "train.iters=2", "train.batch_size=2",
        "train.precision=fp32", "train.ckpt_every=0", f"train.output_dir={tmp_path / 'run'}"])
    assert cfg.train.pretrained == "packaged"
    with caplog.at_level(logging.INFO):
        trainer = Trainer(cfg, progress=False)
    assert f"from {packaged}" in caplog.text
    state = trainer.model.state_dict()
    assert state["cls.4.weight"].shape[0] == 2
    for k in (k for k in source if not k.startswith("cls.4.")):
        assert torch.equal(state[k].float(), source[k].float()), k
    losses = [r["loss"] for r in trainer.fit().history if r["kind"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))
