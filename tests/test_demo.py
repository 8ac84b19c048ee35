"""The built-in synthetic street scenes and ``pspnet demo`` end to end (quick mode)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pspnet.data.synthetic import CLASSES, PALETTE, SyntheticSpec, make_scene, render_scene, write_dataset


def test_scenes_are_deterministic_per_seed():
    a_img, a_lbl = make_scene(seed=7, index=3)
    b_img, b_lbl = make_scene(seed=7, index=3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lbl, b_lbl)
    c_img, _ = make_scene(seed=8, index=3)
    d_img, _ = make_scene(seed=7, index=4)
    e_img, _ = make_scene(seed=7, index=3, split="val")
    for other in (c_img, d_img, e_img):
        assert not np.array_equal(a_img, other)


def test_labels_are_valid_and_cover_every_class():
    seen = np.zeros(len(CLASSES), int)
    for i in range(8):
        image, label = make_scene(0, i, height=96, width=128)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        assert label.shape == (96, 128) and label.dtype == np.uint8
        assert label.max() < len(CLASSES)
        present = np.bincount(label.ravel(), minlength=len(CLASSES)) > 0
        assert present[[0, 1, 2, 3]].all(), f"scene {i}: sky, building, road, sidewalk always visible"
        seen += present
    assert (seen > 0).all(), dict(zip(CLASSES, seen))
    assert (seen >= 4).all(), dict(zip(CLASSES, seen))  # every class in most scenes, small ones included


def test_classes_look_different():
    """The task is learnable: class colour statistics differ (sky bright and blue, road darker)."""
    means = {c: [] for c in range(len(CLASSES))}
    for i in range(6):
        image, label = make_scene(1, i)
        for c in range(len(CLASSES)):
            if (label == c).any():
                means[c].append(image[label == c].mean(0))
    sky, road, veg = (np.mean(means[c], 0) for c in (0, 2, 4))
    assert sky[2] > sky[0] + 20 and sky.mean() > road.mean()
    assert veg[1] > veg[2]  # greener than blue
    image, _ = make_scene(1, 0)
    assert image.std() > 20  # textured, not flat


def test_scene_size_limits():
    image, label = render_scene(np.random.default_rng(0), 24, 40)
    assert image.shape == (24, 40, 3) and label.shape == (24, 40)
    with pytest.raises(ValueError, match="at least 24x24"):
        render_scene(np.random.default_rng(0), 16, 64)
    with pytest.raises(ValueError, match="split"):
        make_scene(0, 0, split="holdout")


def test_written_dataset_reads_as_a_folder_dataset(tmp_path):
    from pspnet.data.datasets import build_dataset, dataset_info
    root = write_dataset(tmp_path / "streets", SyntheticSpec(train=3, val=2, height=32, width=48, seed=5))
    info = dataset_info("folder", len(CLASSES), CLASSES, PALETTE)
    train = build_dataset("folder", root, "train", info=info)
    val = build_dataset("folder", root, "val", info=info)
    assert len(train) == 3 and len(val) == 2
    image, label = train[1]
    expected_img, expected_lbl = make_scene(5, 1, "train", 32, 48)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected_img)  # PNG is lossless
    assert np.array_equal(label.numpy(), expected_lbl)
    meta = json.loads((root / "classes.json").read_text())
    assert meta["class_names"] == list(CLASSES) and len(meta["palette"]) == len(CLASSES)


def test_demo_refuses_to_overwrite_a_foreign_folder(tmp_path, capsys):
    from pspnet.cli import main
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert main(["demo", "--quick", "--out", str(tmp_path / "mine")]) == 2
    assert "was not written by 'pspnet demo'" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_quick_demo_end_to_end(tmp_path, capsys):
    from pspnet.cli import main
    from pspnet.models.weights import load_weights
    out = tmp_path / "demo"
    # the quick default (6 iterations) only shows that the pipeline runs; 20 are enough to learn
    # something, which the held-out check at the end asks for (still seconds)
    assert main(["demo", "--quick", "--iters", "20", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip().endswith(f"Output folder: {out.resolve()}")
    assert "mIoU" in printed and "sidewalk" in printed  # the evaluation table
    for name in ("model.safetensors", "metrics.json", "summary.json", "curves.png", "predictions/legend.png",
                 "predictions/val_0000_color.png", "predictions/val_0000_overlay.png",
                 "predictions/val_0001_color.png", "data/train/images/train_0000.png", "data/val/labels/val_0003.png",
                 "run/log.jsonl", "run/config.yaml"):
        assert (out / name).is_file(), name
    assert not (out / "run" / "last.pt").exists()  # the demo keeps one weight file
    model, meta = load_weights(out / "model.safetensors")
    assert meta["class_names"] == list(CLASSES) and meta["palette"] == [tuple(c) for c in PALETTE]
    assert model.config.depth == 18
    summary = json.loads((out / "summary.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["mIoU"] == metrics["mIoU"] and 0.0 <= summary["mIoU"] <= 1.0
    assert [c["name"] for c in metrics["per_class"]] == list(CLASSES)
    from PIL import Image
    with Image.open(out / "predictions" / "val_0000_color.png") as im:
        assert im.size == (64, 48)
    # a second run into the same folder is allowed (it was written by the demo)
    assert (out / ".pspnet-demo").is_file()
    # the trained model beats always guessing the held-out scenes' most frequent class, a baseline
    # computed here from the label files the demo wrote (mIoU averages the classes present)
    counts = np.zeros(len(CLASSES), np.int64)
    for path in sorted((out / "data" / "val" / "labels").glob("*.png")):
        label = np.asarray(Image.open(path))
        counts += np.bincount(label[label < len(CLASSES)].ravel(), minlength=len(CLASSES))
    assert counts.sum() == 4 * 48 * 64  # the quick demo's 4 held-out 64x48 scenes, every pixel labelled
    majority_share = counts.max() / counts.sum()
    baseline = majority_share / (counts > 0).sum()
    assert summary["majority_class_mIoU"] == pytest.approx(baseline)
    assert metrics["mIoU"] > baseline, (metrics["mIoU"], baseline)
    assert metrics["allAcc"] > majority_share, (metrics["allAcc"], majority_share)
