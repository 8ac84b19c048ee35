"""evaluate / predict_paths / the eval and predict commands on tiny data made in tmp_path."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pspnet.cli import main
from pspnet.data.datasets import build_dataset, dataset_info
from pspnet.data.transforms import normalize
from pspnet.errors import DataError, WeightsError
from pspnet.inference import prepare
from pspnet.inference.evaluate import evaluate, format_table
from pspnet.inference.predict import predict_paths
from pspnet.inference.prepare import prepare_model
from pspnet.inference.testtime import predict_logits
from pspnet.models.weights import save_weights, update_metadata

NAMES = ["sky", "road", "car"]
PALETTE = [(10, 20, 30), (200, 0, 0), (0, 200, 100)]


class Oracle(nn.Module):
    """Reads the class back from the red channel (red = 80 * class): a perfect, pointwise model."""

    def __init__(self, shift: int = 0):
        super().__init__()
        self.shift = shift
        self.register_buffer("mean", torch.tensor(0.485 * 255))
        self.register_buffer("std", torch.tensor(0.229 * 255))

    def forward(self, x):
        red = x[:, 0] * self.std + self.mean
        cls = torch.round(red / 80).long().clamp(0, 2)
        if self.shift:
            cls = torch.roll(cls, self.shift, dims=-1)
        return nn.functional.one_hot(cls, 3).permute(0, 3, 1, 2).float() * 10


def _make_list_dataset(root, sizes=((40, 56), (33, 47), (48, 48))):
    rng = np.random.default_rng(0)
    lines = []
    for i, (h, w) in enumerate(sizes):
        blocks = rng.integers(0, 3, (h // 8 + 1, w // 8 + 1))
        label = np.kron(blocks, np.ones((8, 8), np.uint8))[:h, :w].astype(np.uint8)
        label[:3, :5] = 255  # ignore region
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        img[..., 0] = np.where(label == 255, 0, label * 80)
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "lbl").mkdir(exist_ok=True)
        Image.fromarray(img).save(root / "img" / f"{i}.png")
        Image.fromarray(label).save(root / "lbl" / f"{i}.png")
        lines.append(f"img/{i}.png lbl/{i}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def _dataset(root, **kw):
    info = dataset_info("list", 3, NAMES)
    return build_dataset("list", root, "val", info=info, **kw)


@pytest.fixture(scope="module")
def tiny_model(tiny_pspnet):
    model = tiny_pspnet(aux=False).eval()
    with torch.no_grad():
        model.cls[-1].weight.normal_(0, 1.0)  # non-trivial predictions
    return model


@pytest.fixture(scope="module")
def weights_file(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(tiny_model, path, NAMES, PALETTE)
    return path


def test_oracle_scores_one_and_shifted_oracle_scores_less(tmp_path):
    ds = _dataset(_make_list_dataset(tmp_path))
    for kw in ({}, {"flip": True}, {"mode": "sliding", "crop_size": (16, 24)}):
        res = evaluate(Oracle(), ds, num_classes=3, class_names=NAMES, progress=False, **kw)
        assert res["mIoU"] == 1.0 and res["mAcc"] == 1.0 and res["allAcc"] == 1.0, kw
    cm = np.array(res["confusion_matrix"])
    labels = [np.asarray(Image.open(tmp_path / "lbl" / f"{i}.png")) for i in range(3)]
    counts = np.bincount(np.concatenate([lb[lb != 255] for lb in labels]), minlength=3)
    assert cm.trace() == cm.sum() and cm.diagonal().tolist() == counts.tolist()  # ignore pixels skipped
    bad = evaluate(Oracle(shift=5), ds, num_classes=3, class_names=NAMES, progress=False)
    assert 0 < bad["mIoU"] < 1 and 0 < bad["allAcc"] < 1


def test_evaluate_matches_independent_computation(tmp_path, tiny_model):
    ds = _dataset(_make_list_dataset(tmp_path))
    res = evaluate(tiny_model, ds, num_classes=3, class_names=NAMES, progress=False)
    ref = np.zeros((3, 3), np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            image, label = ds[i]
            pred = tiny_model(normalize(image[None]))[0].argmax(0).numpy()
            keep = label.numpy() != 255
            np.add.at(ref, (label.numpy()[keep], pred[keep]), 1)
    assert res["confusion_matrix"] == ref.tolist()
    tp, gt, pr = ref.diagonal(), ref.sum(1), ref.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt + pr - tp)
        acc = tp / gt
    assert res["mIoU"] == pytest.approx(np.nanmean(iou)) and res["mAcc"] == pytest.approx(np.nanmean(acc))
    assert res["allAcc"] == pytest.approx(tp.sum() / ref.sum())
    assert [c["name"] for c in res["per_class"]] == NAMES
    assert res["settings"]["mode"] == "whole" and res["num_images"] == 3 and res["bad_files"] == []
    table = format_table(res)
    assert all(n in table for n in NAMES) and "mIoU" in table and "allAcc" in table


def test_bad_item_is_skipped_or_raised(tmp_path):
    root = _make_list_dataset(tmp_path)
    (root / "img" / "1.png").write_bytes(b"not a png")
    ds = _dataset(root)
    with pytest.raises(DataError, match="1.png"):
        evaluate(Oracle(), ds, num_classes=3, progress=False)
    res = evaluate(Oracle(), ds, num_classes=3, progress=False, skip_bad=True)
    assert res["num_images"] == 2 and len(res["bad_files"]) == 1 and res["bad_files"][0]["path"].endswith("1.png")
    assert res["mIoU"] == 1.0


def test_eval_command_writes_json(tmp_path, weights_file, capsys):
    root = _make_list_dataset(tmp_path / "data")
    out = tmp_path / "m.json"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  dataset: list\n  root: {root}\n  class_names: {NAMES}\neval:\n  flip: true\n")
    rc = main(["eval", "--weights", str(weights_file), "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert {"mIoU", "mAcc", "allAcc", "per_class", "confusion_matrix", "settings"} <= set(res)
    assert all(0 <= res[k] <= 1 for k in ("mIoU", "mAcc", "allAcc"))
    assert res["settings"]["flip"] is True and res["settings"]["split"] == "val"
    assert f"mIoU {res['mIoU']:.4f}" in printed and "road" in printed
    # without --config: the weights' metadata + --dataset/--data-root; flags override
    out2 = tmp_path / "m2.json"
    rc = main(["eval", "--weights", str(weights_file), "--dataset", "list", "--data-root", str(root),
               "--sliding", "--crop-size", "24", "24", "--scales", "1.0", "0.75", "--out", str(out2), "--no-progress"])
    res2 = json.loads(out2.read_text())
    assert rc == 0 and res2["settings"]["mode"] == "sliding" and res2["settings"]["scales"] == [1.0, 0.75]
    assert [c["name"] for c in res2["per_class"]] == NAMES
    assert main(["eval", "--weights", str(weights_file), "--no-progress"]) == 2  # no data given


def test_eval_takes_the_dataset_the_weights_record(tmp_path, weights_file, capsys):
    """Without --dataset or --config, eval reads the data as the dataset the weights were trained on
    (the packaged model records camvid, so `pspnet eval --data-root D --split test` is the whole command)."""
    root = _make_list_dataset(tmp_path / "data")
    weights_file = Path(shutil.copy(weights_file, tmp_path / "w.safetensors"))  # the module's file stays as it is
    assert main(["eval", "--weights", str(weights_file), "--data-root", str(root), "--no-progress"]) == 2
    assert "does not record the dataset it was trained on; pass --dataset" in capsys.readouterr().err
    update_metadata(weights_file, {"trained_on": {"dataset": "list", "split": "train", "images": 3}})
    out = tmp_path / "m.json"
    rc = main(["eval", "--weights", str(weights_file), "--data-root", str(root), "--out", str(out), "--no-progress"])
    assert rc == 0 and "dataset: list (weights), split val" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["settings"]["dataset"] == "list" and [c["name"] for c in res["per_class"]] == NAMES
    # --dataset still wins over the record
    rc = main(["eval", "--weights", str(weights_file), "--data-root", str(root), "--dataset", "camvid",
               "--no-progress"])
    assert rc == 2 and "camvid" in capsys.readouterr().err


def _write_mixed_inputs(folder):
    rng = np.random.default_rng(1)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (33, 47), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (50, 30, 4), dtype=np.uint8)).save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (45, 45, 3), dtype=np.uint8)).convert("P").save(folder / "pal.png")
    Image.fromarray(rng.integers(0, 65535, (36, 52), dtype=np.uint16)).save(folder / "deep.png")
    Image.fromarray(rng.integers(0, 256, (41, 61, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "tiny.png")  # below the model's minimum
    modes = {p.name: Image.open(p).mode for p in folder.iterdir() if p.name not in ("broken.png",)}
    assert {"RGB", "L", "RGBA", "P", "I;16"} <= set(modes.values())
    return {"rgb": (40, 50), "grey": (33, 47), "alpha": (50, 30), "pal": (45, 45), "deep": (36, 52), "photo": (41, 61)}


def test_predict_folder_of_mixed_sizes_and_modes(tmp_path, tiny_model):
    sizes = _write_mixed_inputs(tmp_path / "in")
    out = predict_paths(tiny_model, [tmp_path / "in"], tmp_path / "out", class_names=NAMES, palette=PALETTE,
                        progress=False)
    assert sorted(f for f, _ in out.failed) == sorted(str(tmp_path / "in" / n) for n in ("broken.png", "tiny.png"))
    assert (tmp_path / "out" / "legend.png").is_file() and out[-1].name == "legend.png"
    for stem, (h, w) in sizes.items():
        label = Image.open(tmp_path / "out" / f"{stem}_label.png")
        color = Image.open(tmp_path / "out" / f"{stem}_color.png")
        overlay = Image.open(tmp_path / "out" / f"{stem}_overlay.png")
        assert label.mode == "L" and color.mode == "RGB" and overlay.mode == "RGB"
        assert label.size == color.size == overlay.size == (w, h)
        lab = np.asarray(label)
        assert lab.max() < 3
        assert np.array_equal(np.asarray(color), np.asarray(PALETTE, np.uint8)[lab])
    # the label file is the model's argmax (independent path through predict_logits)
    from pspnet.data.io import read_image
    img = read_image(tmp_path / "in" / "rgb.png")
    ref = predict_logits(tiny_model, torch.from_numpy(img.transpose(2, 0, 1).copy())[None])[0].argmax(0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "rgb_label.png")), ref.numpy())
    overlay = np.asarray(Image.open(tmp_path / "out" / "rgb_overlay.png")).astype(int)
    color = np.asarray(PALETTE)[ref.numpy()]
    assert np.abs(overlay - (img.astype(int) + color) / 2).max() <= 1


def test_predict_command_globs_duplicate_stems_and_exit_status(tmp_path, weights_file, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(tmp_path / d / "x.png")
    (tmp_path / "a" / "bad.jpg").write_bytes(b"nope")
    rc = main(["predict", str(tmp_path / "*" / "*.png"), str(tmp_path / "missing.png"), "--weights",
               str(weights_file), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1  # missing.png failed; the rest were written
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "x_label.png", "x_color.png", "x_overlay.png", "x-2_label.png", "x-2_color.png", "x-2_overlay.png",
        "legend.png"}
    assert "missing.png" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "a"), "--weights", str(weights_file), "--out", str(tmp_path / "o2"),
               "--no-progress"])
    assert rc == 1 and (tmp_path / "o2" / "x_label.png").is_file()  # bad.jpg reported after the rest


def test_default_weights(tmp_path, tiny_model, monkeypatch, capsys):
    import pspnet.models.pretrained as pretrained
    monkeypatch.setattr(pretrained, "_weights_dir", lambda: tmp_path / "weights")
    with pytest.raises(WeightsError, match="camvid_pspnet18.safetensors.*--weights"):
        pretrained.default_weights_path()
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(tmp_path / "im.png")
    assert main(["predict", str(tmp_path / "im.png"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "packaged CamVid model is not installed" in capsys.readouterr().err
    save_weights(tiny_model, tmp_path / "weights" / "camvid_pspnet18.safetensors", NAMES, PALETTE)
    assert main(["predict", str(tmp_path / "im.png"), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert (tmp_path / "o" / "im_label.png").is_file()


def test_precision_goes_through_prepare_for_inference(monkeypatch, tiny_model):
    calls = []

    def prepare_for_inference(model, precision="auto", backend="torch", compile=False, **auto_hints):
        calls.append(precision)
        return model
    monkeypatch.setattr(prepare, "prepare_for_inference", prepare_for_inference)
    runner, used = prepare_model(tiny_model, "bf16")
    assert calls == ["bf16"] and runner is tiny_model and used == "bf16"
    runner, used = prepare_model(tiny_model, "fp32")
    assert calls == ["bf16"] and used == "fp32"  # fp32 is the plain model


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_predict_and_eval_on_the_onnxruntime_backend(tmp_path, weights_file):
    """--backend onnxruntime gives the torch backend's labels (fp32) and is recorded in eval's settings."""
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "im.png")
    for backend in ("torch", "onnxruntime"):
        rc = main(["predict", str(tmp_path / "im.png"), "--weights", str(weights_file), "--out",
                   str(tmp_path / backend), "--precision", "fp32", "--backend", backend, "--no-progress"])
        assert rc == 0
    a = np.array(Image.open(tmp_path / "torch" / "im_label.png"))
    b = np.array(Image.open(tmp_path / "onnxruntime" / "im_label.png"))
    assert a.shape == (24, 32) and (a == b).mean() > 0.99
    root = _make_list_dataset(tmp_path / "data")
    out = tmp_path / "m.json"
    rc = main(["eval", "--weights", str(weights_file), "--dataset", "list", "--data-root", str(root),
               "--backend", "onnxruntime", "--out", str(out), "--no-progress"])
    assert rc == 0 and json.loads(out.read_text())["settings"]["backend"] == "onnxruntime"


def test_eval_says_it_measures_fp32_while_predict_runs_auto(tmp_path, weights_file, capsys):
    """eval's default stays fp32 (the model's own metrics), and it says so on stderr and in its JSON,
    naming predict's default mode and the flag that measures it; asked for a mode, it records that mode."""
    root = _make_list_dataset(tmp_path / "data")
    base = ["eval", "--weights", str(weights_file), "--dataset", "list", "--data-root", str(root), "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "default.json")]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "note: precision fp32" in ln]
    assert len(lines) == 1 and "pspnet predict runs --precision auto" in lines[0], err
    assert "pspnet eval --precision auto" in lines[0]
    settings = json.loads((tmp_path / "default.json").read_text())["settings"]
    assert settings["precision"] == "fp32" and settings["precision_note"].startswith("precision fp32")
    for precision in ("fp32", "auto"):  # chosen: no note, and the JSON names the mode that ran
        out = tmp_path / f"{precision}.json"
        assert main(base + ["--precision", precision, "--out", str(out)]) == 0
        assert "note: precision" not in capsys.readouterr().err
        settings = json.loads(out.read_text())["settings"]
        assert "precision_note" not in settings and settings["precision"] in ("fp32", "bf16", "int8")


def test_eval_grid_decides_like_the_evaluation_with_the_recorded_int8_agreement(tmp_path, weights_file,
                                                                                  monkeypatch):
    """--grid's predictions come from the mode the metrics were measured in: auto gets the weights'
    recorded int8 agreement (the 99.5% bound of predict and the evaluation) and the evaluation's call count."""
    from pspnet.inference import evaluate as evaluate_module
    root = _make_list_dataset(tmp_path / "data")
    weights = Path(shutil.copy(weights_file, tmp_path / "w.safetensors"))
    update_metadata(weights, {"int8_agreement": {"agreement": 0.9991}, "int8_agreement_torch": 0.99})
    seen = []

    def recording(model, precision="fp32", backend="torch", **kwargs):
        seen.append((precision, backend, kwargs))
        return prepare_model(model, precision, backend, **kwargs)
    monkeypatch.setattr(evaluate_module, "prepare_model", recording)
    monkeypatch.setattr(prepare, "prepare_model", recording)  # the CLI's grid imports it from here
    grid = tmp_path / "grid.png"
    assert main(["eval", "--weights", str(weights), "--dataset", "list", "--data-root", str(root), "--flip",
                 "--precision", "auto", "--grid", str(grid), "--grid-images", "2", "--no-progress"]) == 0
    assert grid.is_file() and len(seen) == 2
    (evaluated, grid_call) = seen
    assert evaluated[:2] == grid_call[:2] == ("auto", "torch")
    assert grid_call[2]["int8_agreement"] == evaluated[2]["int8_agreement"] == {"onnxruntime": 0.9991,
                                                                                 "torch": 0.99}
    assert grid_call[2]["expected_calls"] == evaluated[2]["expected_calls"] == 3  # 3 images, flip in one batch


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_auto_int8_names_the_image_it_calibrated_on(tmp_path, weights_file, monkeypatch, caplog):
    """auto's int8 calibrates on the first image it sees (as the recorded agreement was measured): never
    silently; predict logs that image's file, eval logs it and records it in its JSON."""
    from pspnet.inference.auto import AutoChoice
    monkeypatch.setattr(prepare, "choose_from_features", lambda device, agreement, calls=None: None)
    monkeypatch.setattr(prepare, "choose_auto", lambda *a, **k: AutoChoice("int8", "onnxruntime", "the test's"))
    root = _make_list_dataset(tmp_path / "data")
    out = tmp_path / "m.json"
    with caplog.at_level("INFO"):
        assert main(["eval", "--weights", str(weights_file), "--dataset", "list", "--data-root", str(root),
                     "--precision", "auto", "--out", str(out), "--no-progress"]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["precision"], settings["backend"]) == ("int8", "onnxruntime")
    assert settings["int8_calibration"].startswith("the first input batch (1 x 3 x 40 x 56): item 0 (")
    assert settings["int8_calibration"].endswith("0.png)")
    said = [r.getMessage() for r in caplog.records if "calibrat" in r.getMessage()]
    assert any("calibrates its activation ranges on the first input batch" in m for m in said), said
    assert any(m.startswith("int8 calibrated on") and "0.png" in m for m in said), said
    caplog.clear()
    (tmp_path / "in").mkdir()
    shutil.copy(root / "img" / "1.png", tmp_path / "in" / "first.png")
    shutil.copy(root / "img" / "2.png", tmp_path / "in" / "second.png")
    with caplog.at_level("INFO"):
        assert main(["predict", str(tmp_path / "in"), "--weights", str(weights_file), "--out", str(tmp_path / "out"),
                     "--no-progress"]) == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("int8 calibrated on")]
    assert len(said) == 1 and said[0].endswith("first.png"), said
