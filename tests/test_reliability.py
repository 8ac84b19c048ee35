"""Bad inputs: damaged, empty, mislabelled, oversized and odd-mode image/label files; NaN/inf.

By default training and evaluation stop with a :class:`DataError` that names the file and the
problem; ``data.skip_bad`` / ``--skip-bad`` skips such files, counts them and lists them (also when
they were met inside DataLoader worker processes); ``predict`` reports a bad file and goes on.
Non-finite inputs and losses are reported, not silently propagated.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import cli
from pspnet.data.datasets import DatasetInfo, SegmentationDataset, build_dataset
from pspnet.data.io import MAX_PIXELS, read_image, read_label
from pspnet.errors import DataError, TrainingError
from pspnet.inference.testtime import predict_logits
from pspnet.training.trainer import Trainer, train

INFO3 = DatasetInfo("toy", ("a", "b", "c"), ((0, 0, 0), (255, 0, 0), (0, 255, 0)))


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode=mode)
    im.save(buf, format=fmt)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims ``width x height`` pixels (a decompression bomb's header)."""
    raw = png_bytes(np.zeros((1, 1), np.uint8))
    ihdr = bytearray(raw[16:29])  # width, height, depth, colour type, ... of the 1x1 image
    ihdr[0:8] = struct.pack(">II", width, height)
    chunk = b"IHDR" + bytes(ihdr)
    return raw[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def rand_image(h=32, w=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def rand_label(h=32, w=40, seed=0, classes=3) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, classes, (h, w), dtype=np.uint8)


# ----------------------------------------------------------------------------- image files
BAD_IMAGES = {
    "zero_byte.png": (lambda: b"", "empty"),
    "truncated.png": (lambda: png_bytes(rand_image(64, 64))[:300], "truncated"),
    "truncated.jpg": (lambda: png_bytes(rand_image(64, 64), fmt="JPEG")[:400], "truncated"),
    "text_named.png": (lambda: b"this is a text file, not a picture\n" * 20, "cannot decode"),
    "random_bytes.jpg": (lambda: b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(500), "decode"),
    "bomb.png": (lambda: bomb_png(40_000, 40_000), "decompression bomb"),
    "bomb_just_over.png": (lambda: bomb_png(20_001, 20_000), "decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_file_is_a_clear_data_error(tmp_path, monkeypatch, name):
    make, words = BAD_IMAGES[name]
    path = tmp_path / name
    path.write_bytes(make())
    decoders = []  # every pixel decoding PIL starts goes through Image._getdecoder
    real_getdecoder = Image._getdecoder
    monkeypatch.setattr(Image, "_getdecoder", lambda *a, **k: decoders.append(a[1]) or real_getdecoder(*a, **k))
    for reader in (read_image, read_label):
        with pytest.raises(DataError) as e:
            reader(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: "), msg
        assert words in msg, msg
    if name.startswith("bomb"):  # refused from its header: not one decoder started (no time limit to tune)
        assert decoders == [], f"a decompression bomb must be refused from its header, not decoded: {decoders}"
    elif name == "truncated.png":  # the counter sees decoding where it happens
        assert decoders, "a truncated PNG is decoded until its data runs out"
    assert 20_001 * 20_000 > MAX_PIXELS


def test_missing_and_folder_paths(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match="dir.png"):
        read_image(tmp_path / "dir.png")


def test_contents_decide_the_format_not_the_extension(tmp_path):
    yy, xx = np.mgrid[0:32, 0:40]
    img = np.stack([yy * 8, xx * 6, (yy + xx) * 3], -1).astype(np.uint8)  # smooth: JPEG keeps it closely
    (tmp_path / "photo.png").write_bytes(png_bytes(img, fmt="JPEG"))  # a JPEG named .png
    out = read_image(tmp_path / "photo.png")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < 4  # lossy JPEG, but the same picture
    (tmp_path / "label.jpg").write_bytes(png_bytes(rand_label()))  # a PNG named .jpg
    assert np.array_equal(read_label(tmp_path / "label.jpg"), rand_label())


def test_16bit_palette_and_float_images(tmp_path):
    g16 = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (2, 2, 3) and out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and 126 <= out[1, 0, 0] <= 129

    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    p = Image.fromarray(idx, mode="P")
    p.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * 759)
    p.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png")[1, 0].tolist() == [0, 0, 255]  # expanded through the palette
    assert np.array_equal(read_label(tmp_path / "pal.png"), idx)  # labels: the indices

    f = np.full((4, 4), 0.5, dtype=np.float32)
    f[1, 2] = np.nan
    Image.fromarray(f, mode="F").save(tmp_path / "nan.tiff")
    with pytest.raises(DataError, match="NaN/inf") as e:
        read_image(tmp_path / "nan.tiff")
    assert str(tmp_path / "nan.tiff") in str(e.value)


def _pair(tmp_path: Path, image: np.ndarray, label_bytes: bytes, name="x") -> SegmentationDataset:
    (tmp_path / f"{name}.png").write_bytes(png_bytes(image))
    (tmp_path / f"{name}_gt.png").write_bytes(label_bytes)
    return SegmentationDataset([(tmp_path / f"{name}.png", tmp_path / f"{name}_gt.png")], INFO3)


def test_label_problems_name_the_file_and_the_fix(tmp_path):
    img = rand_image()
    lbl = rand_label()
    cases = {
        "rgb": (png_bytes(np.stack([lbl * 80] * 3, -1)), "colour (RGB)"),
        "size": (png_bytes(rand_label(16, 40)), "40x16"),
        "value": (png_bytes(np.where(lbl == 1, 7, lbl).astype(np.uint8)), "label value 7"),
        "negative": (png_bytes(np.full((32, 40), -3, np.int32), fmt="TIFF"), "negative"),  # 32-bit TIFF
        "big16": (png_bytes(np.full((32, 40), 300, np.uint16)), "label value 300"),
    }
    for name, (content, words) in cases.items():
        ds = _pair(tmp_path, img, content, name)
        with pytest.raises(DataError, match=re.escape(words)) as e:
            ds[0]
        assert str(tmp_path / f"{name}_gt.png") in str(e.value), str(e.value)
    ok = _pair(tmp_path, img, png_bytes(np.where(lbl == 2, 255, lbl).astype(np.uint16)), "ok16")  # 16-bit, ignore
    image, label = ok[0]
    assert image.shape == (3, 32, 40) and set(label.unique().tolist()) <= {0, 1, 255}


def test_too_small_image_for_the_augmentation(tmp_path):
    """A 1-pixel-wide image scaled by < 1 has no pixel left: OpenCV's assertion becomes a DataError."""
    from pspnet.data.transforms import TrainTransform
    from pspnet.training.sampler import BAD_SEP, SeededAugment
    (tmp_path / "tiny.png").write_bytes(png_bytes(rand_image(1, 1)))
    (tmp_path / "tiny_gt.png").write_bytes(png_bytes(rand_label(1, 1)))
    (tmp_path / "ok.png").write_bytes(png_bytes(rand_image(32, 32)))
    (tmp_path / "ok_gt.png").write_bytes(png_bytes(rand_label(32, 32)))
    base = SegmentationDataset([(tmp_path / "tiny.png", tmp_path / "tiny_gt.png"),
                                (tmp_path / "ok.png", tmp_path / "ok_gt.png")], INFO3)
    strict = SeededAugment(base, TrainTransform((24, 24), (0.5, 2.0)))
    lenient = SeededAugment(base, TrainTransform((24, 24), (0.5, 2.0)), skip_bad=True)
    failures = 0
    for seed in range(12):
        try:
            strict[(0, seed)]
        except DataError as e:
            failures += 1
            assert str(e).startswith(f"{tmp_path / 'tiny.png'}: the training augmentation failed on this 1x1"), e
            image, label, skipped = lenient[(0, seed)]  # replaced by the next sample, and reported
            assert image.shape == (3, 24, 24) and skipped.split(BAD_SEP)[0] == str(e)
    assert failures > 0, "no seed scaled the 1x1 image down; the test proves nothing"


# ----------------------------------------------------------------------------- training / eval / predict
@pytest.fixture
def make_folder(folder_dataset):
    """``make_folder(root, n=6, size=(32, 32), bad=None)``: the tiny folder dataset (conftest) with ``n``
    good pairs in ``root/train``; ``bad`` maps 'images/x.png' -> bytes to add."""
    def make(root: Path, n: int = 6, size: tuple[int, int] = (32, 32), bad: dict[str, bytes] | None = None) -> Path:
        folder_dataset(root, n=n, size=size)
        for rel, content in (bad or {}).items():
            (root / "train" / rel).write_bytes(content)
        return root
    return make


def overrides(workers: int, iters: int = 3) -> list[str]:
    """On top of the tiny run (conftest): 24 px crops, validation on the training split, one thread."""
    return ["data.crop_size=[24,24]", f"data.workers={workers}", "data.val_split=train", f"train.iters={iters}",
            "train.threads=1"]


BAD_FILES = {"images/90.png": b"", "labels/90.png": png_bytes(rand_label(32, 32)),          # empty image
             "images/91.png": png_bytes(rand_image(32, 32)), "labels/91.png": b"not a png"}  # corrupt label


@pytest.mark.parametrize("workers", [0, 1])
def test_training_stops_at_a_bad_file_by_default(tmp_path, workers, make_folder, tiny_run_config):
    data = make_folder(tmp_path / "data", bad=BAD_FILES)
    cfg = tiny_run_config(data, tmp_path / "run", *overrides(workers))
    with pytest.raises(DataError) as e:
        train(cfg, progress=False)
    msg = str(e.value)
    assert "90.png" in msg or "91.png" in msg, msg
    assert "Traceback" not in msg and "worker process" not in msg, f"worker traceback leaked into: {msg}"


def test_skip_bad_training_counts_and_lists_files_from_workers(tmp_path, capsys, make_folder, tiny_run_config,
                                                               tiny_run_overrides):
    # 7 good pairs + an empty image + a corrupt label + an image without label = 10 samples;
    # batch 2, 5 iterations = one epoch: every sample is drawn once, inside the worker process
    # (no validation set, so only the workers can have met the bad files)
    missing = {"images/92.png": png_bytes(rand_image(32, 32))}
    data = make_folder(tmp_path / "data", n=7, bad={**BAD_FILES, **missing})
    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("{}\n")
    run = tiny_run_overrides(data, out, *overrides(workers=1, iters=5), "data.val_split=''")
    rc = cli.main(["train", "-c", str(cfg_file), *run, "--skip-bad", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "skipped 3 bad file(s)" in printed, printed
    listed = (out / "bad_files.txt").read_text().splitlines()
    assert len(listed) == 3, listed
    assert listed[0].startswith(str(data / "train/images/90.png")) and "empty" in listed[0], listed
    assert listed[1].startswith(str(data / "train/labels/91.png")) and "decode" in listed[1], listed
    assert listed[2].startswith(str(data / "train/labels/92.png")) and "not found" in listed[2], listed
    assert (out / "final.safetensors").is_file()

    # validation during training skips and lists too (here in the main process)
    cfg = tiny_run_config(data, tmp_path / "run2", *overrides(workers=0), "data.skip_bad=true")
    trainer = Trainer(cfg, progress=False)
    metrics = trainer.validate()
    assert metrics is not None and sorted(Path(k).name for k in trainer.bad_files) == ["90.png", "91.png", "92.png"]


def test_evaluate_stops_or_skips_and_lists(tmp_path, make_folder, tiny_pspnet):
    from pspnet.inference.evaluate import evaluate
    data = make_folder(tmp_path / "data", n=2, bad=BAD_FILES)
    ds = build_dataset("folder", data, "train", info=INFO3)
    model = tiny_pspnet().eval()
    with pytest.raises(DataError, match="90.png"):
        evaluate(model, ds, num_classes=3, progress=False)
    res = evaluate(model, ds, num_classes=3, progress=False, skip_bad=True)
    assert res["num_images"] == 2
    assert [Path(b["path"]).name for b in res["bad_files"]] == ["90.png", "91.png"], res["bad_files"]
    assert "empty" in res["bad_files"][0]["error"]


def test_predict_reports_a_bad_file_and_goes_on(tmp_path, tiny_pspnet):
    from pspnet.inference.predict import predict_paths
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a_good.png").write_bytes(png_bytes(rand_image()))
    (inputs / "b_text.png").write_bytes(b"hello")
    (inputs / "c_truncated.jpg").write_bytes(png_bytes(rand_image(64, 64), fmt="JPEG")[:300])
    (inputs / "d_good.jpg").write_bytes(png_bytes(rand_image(seed=3), fmt="JPEG"))
    model = tiny_pspnet().eval()
    out = predict_paths(model, [inputs], tmp_path / "out", class_names=INFO3.class_names, palette=INFO3.palette,
                        progress=False)
    assert [Path(p).name for p, _ in out.failed] == ["b_text.png", "c_truncated.jpg"], out.failed
    assert (tmp_path / "out" / "a_good_label.png").is_file() and (tmp_path / "out" / "d_good_label.png").is_file()


# ----------------------------------------------------------------------------- numerical
def test_non_finite_input_is_reported(tiny_pspnet):
    model = tiny_pspnet().eval()
    x = torch.full((1, 3, 32, 32), 100.0)
    assert torch.isfinite(predict_logits(model, x)).all()
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[0, 1, 3, 4] = bad
        with pytest.raises(DataError, match="1 NaN/inf"):
            predict_logits(model, y)


def test_non_finite_loss_stops_training(tmp_path, monkeypatch, make_folder, tiny_run_config):
    data = make_folder(tmp_path / "data", n=4)
    cfg = tiny_run_config(data, tmp_path / "run", *overrides(workers=0, iters=4), "data.val_split=''")
    trainer = Trainer(cfg, progress=False)
    real = trainer.criterion.forward
    calls = []

    def nan_on_third(out, target):
        loss, parts = real(out, target)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), parts

    monkeypatch.setattr(trainer.criterion, "forward", nan_on_third)
    with pytest.raises(TrainingError, match="loss is nan at iteration 2") as e:
        trainer.fit()
    assert "lower train.lr" in str(e.value)


def test_absurd_learning_rate_diverges_into_a_training_error(tmp_path, make_folder, tiny_run_config):
    data = make_folder(tmp_path / "data", n=4)
    cfg = tiny_run_config(data, tmp_path / "run", *overrides(workers=0, iters=6), "data.val_split=''", "train.lr=1e30",
                          "train.warmup_iters=0")
    with pytest.raises(TrainingError, match=r"loss is (nan|inf)"):
        train(cfg, progress=False)
