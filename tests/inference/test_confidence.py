"""How sure the model is, and where it fails: ``pspnet predict --save-probs`` (probabilities,
confidence and entropy maps) and ``pspnet eval --per-image`` (each image's scores, worst first,
:mod:`pspnet.inference.per_image`)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.cli import main
from pspnet.data.io import read_image
from pspnet.inference.per_image import PerImageScores
from pspnet.inference.testtime import predict_logits

NAMES = ["sky", "road", "car"]
PALETTE = [(10, 20, 30), (200, 0, 0), (0, 200, 100)]
CSV_COLUMNS = ["rank", "index", "image", "mIoU", "pixel_acc", "labelled_pixels",
               "worst_1", "worst_1_iou", "worst_2", "worst_2_iou", "worst_3", "worst_3_iou"]


@pytest.fixture(scope="module")
def tiny(varied_tiny_weights, tmp_path_factory):
    """(model, weight file): a tiny PSPNet-18 whose predictions and confidence vary over the image."""
    return varied_tiny_weights(tmp_path_factory.mktemp("w"), NAMES, PALETTE)


def test_save_probs_argmax_is_the_label_and_maps_follow_their_scaling(tmp_path, tiny):
    model, weights = tiny
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    sizes = {"a": (40, 56), "b": (33, 47)}
    for stem, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "in" / f"{stem}.png")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "in"), "--weights", str(weights), "--out", str(out), "--save-probs",
               "--precision", "fp32", "--no-progress"])
    assert rc == 0
    for stem, (h, w) in sizes.items():
        with np.load(out / f"{stem}_probs.npz", allow_pickle=False) as f:
            probs, names = f["probs"], f["class_names"].tolist()
        assert names == NAMES and probs.dtype == np.float16 and probs.shape == (3, h, w)
        p = probs.astype(np.float64)
        label = np.asarray(Image.open(out / f"{stem}_label.png"))
        # the label is the arg-max, except where float16 rounds the top two to one value
        top = p.max(0)
        differ = p.argmax(0) != label
        assert differ.mean() < 0.01 and np.all(np.take_along_axis(p, label[None], 0)[0][differ] == top[differ])
        # the stored probabilities are the model's (float16-rounded), computed here independently
        image = read_image(tmp_path / "in" / f"{stem}.png")
        exact = predict_logits(model, torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None])
        exact = exact[0].double().numpy()
        assert np.abs(p - exact).max() < 1e-3
        confidence = np.asarray(Image.open(out / f"{stem}_confidence.png")).astype(int)
        entropy = np.asarray(Image.open(out / f"{stem}_entropy.png")).astype(int)
        h_nat = -np.where(exact > 0, exact * np.log(np.where(exact > 0, exact, 1)), 0).sum(0)
        # round(255 * max_c p_c) and round(255 * H / ln C); float32 vs float64 may round a .5 the other way
        for got, want in ((confidence, np.round(255 * exact.max(0))), (entropy, np.round(255 * h_nat / math.log(3)))):
            assert got.shape == (h, w) and np.abs(got - want).max() <= 1 and (got != want).mean() < 0.01
        assert confidence.std() > 1 and entropy.std() > 1  # the maps vary: not a constant image
        assert np.corrcoef(confidence.ravel(), entropy.ravel())[0, 1] < -0.5  # sure where entropy is low


def test_per_image_records_are_sorted_worst_first_and_undefined_last():
    scores = PerImageScores(NAMES, ignore_index=255)
    perfect = torch.tensor([[0, 0, 1, 1, 2, 2]])
    scores.add(0, "perfect.png", perfect, perfect)
    scores.add(1, "void.png", perfect, torch.full_like(perfect, 255))  # nothing labelled: mIoU undefined
    scores.add(2, "bad.png", torch.tensor([[0, 0, 0, 1, 2, 2]]), perfect)  # one road pixel called sky
    worse = torch.tensor([[1, 1, 1, 1, 1, 1]])
    scores.add(3, "worse.png", worse, perfect)
    records = scores.records
    assert [r["path"] for r in records] == ["worse.png", "bad.png", "perfect.png", "void.png"]
    bad = records[1]
    # sky: 2 / 3, road: 1 / 2, car: 1 -> mIoU 13 / 18; 5 of 6 pixels right
    assert bad["mIoU"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3) and bad["pixel_acc"] == pytest.approx(5 / 6)
    assert bad["worst"] == [{"name": "road", "iou": 0.5}, {"name": "sky", "iou": pytest.approx(2 / 3)},
                            {"name": "car", "iou": 1.0}]
    assert records[0]["worst"][0]["iou"] == 0.0 and records[0]["mIoU"] == pytest.approx(1 / 9)
    assert records[3]["mIoU"] is None and records[3]["pixels"] == 0 and records[3]["worst"] == []


def test_eval_per_image_csv_lists_each_image_worst_first_with_its_scores(tmp_path, tiny, folder_dataset):
    model, weights = tiny
    # ignore bands of random width: images differ widely in what counts
    root = folder_dataset(tmp_path / "data", splits=("val",), n=5, ignore="random_cols", seed=3)
    csv_path, json_path = tmp_path / "per_image.csv", tmp_path / "m.json"
    rc = main(["eval", "--weights", str(weights), "--dataset", "folder", "--data-root", str(root),
               "--per-image", str(csv_path), "--out", str(json_path), "--no-progress"])
    assert rc == 0
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_COLUMNS and len(rows) == 6
    rows = [dict(zip(CSV_COLUMNS, r)) for r in rows[1:]]
    mious = [float(r["mIoU"]) for r in rows]
    assert mious == sorted(mious) and mious[0] < mious[-1]  # worst first, and they differ
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert sorted(int(r["index"]) for r in rows) == [0, 1, 2, 3, 4]
    for r in rows:  # each row: the image's own scores, computed here independently
        image = read_image(r["image"])
        label = np.asarray(Image.open(r["image"].replace("/images/", "/labels/")))
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        pred = predict_logits(model, x)[0].argmax(0).numpy()
        keep = label != 255
        cm = np.zeros((3, 3), np.int64)
        np.add.at(cm, (label[keep], pred[keep]), 1)
        tp, union = cm.diagonal(), cm.sum(0) + cm.sum(1) - cm.diagonal()
        iou = {NAMES[c]: tp[c] / union[c] for c in range(3) if union[c] > 0}
        assert float(r["mIoU"]) == pytest.approx(np.mean(list(iou.values())), abs=1e-6)
        assert float(r["pixel_acc"]) == pytest.approx(tp.sum() / cm.sum(), abs=1e-6)
        assert int(r["labelled_pixels"]) == keep.sum()
        worst = sorted(iou.items(), key=lambda kv: (kv[1], NAMES.index(kv[0])))
        for k, (name, value) in enumerate(worst, 1):
            assert r[f"worst_{k}"] == name and float(r[f"worst_{k}_iou"]) == pytest.approx(value, abs=1e-6)
    # the metrics JSON holds the same records, in the same order
    per_image = json.loads(json_path.read_text())["per_image"]
    assert [p["path"] for p in per_image] == [r["image"] for r in rows]
