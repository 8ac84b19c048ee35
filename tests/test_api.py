"""pspnet.load / Model.predict: the same labels as ``pspnet predict``, pixel for pixel, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pspnet
from pspnet.cli import main
from pspnet.errors import ConfigError, DataError, WeightsError


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """A street-like frame: sky, a building band, road, with noise (no ../shared needed)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    img[: h // 3] = (128, 160, 220)
    img[h // 3: 2 * h // 3] = (120, 90, 70)
    img[2 * h // 3:] = (110, 100, 120)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for i, (h, w) in enumerate([(72, 96), (61, 83)]):
        p = folder / f"frame{i}.png"
        Image.fromarray(_scene(h, w, i)).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def model():
    return pspnet.load("packaged", precision="fp32")


def test_api_labels_equal_the_cli_pixel_for_pixel(frames, model, tmp_path, capsys):
    assert main(["predict", *map(str, frames), "--out", str(tmp_path), "--precision", "fp32", "--no-progress"]) == 0
    results = model.predict(list(frames))
    assert isinstance(results, list) and len(results) == len(frames)
    for f, r in zip(frames, results):
        cli_labels = np.asarray(Image.open(tmp_path / f"{f.stem}_label.png"))
        assert r.labels.shape == cli_labels.shape == Image.open(f).size[::-1]
        assert r.labels.dtype == np.uint8
        np.testing.assert_array_equal(r.labels, cli_labels)
        np.testing.assert_array_equal(np.asarray(r.colorize()),
                                      np.asarray(Image.open(tmp_path / f"{f.stem}_color.png")))
        np.testing.assert_array_equal(np.asarray(r.overlay(alpha=0.5)),
                                      np.asarray(Image.open(tmp_path / f"{f.stem}_overlay.png")))
    # the same image as a PIL image and as an array: the same labels
    np.testing.assert_array_equal(model.predict(Image.open(frames[0])).labels, results[0].labels)
    np.testing.assert_array_equal(model.predict(np.asarray(Image.open(frames[0]).convert("RGB"))).labels,
                                  results[0].labels)
    assert "test settings:" in capsys.readouterr().out


def test_prediction_probabilities_classes_and_palette(frames, model):
    r = model.predict(frames[1], probabilities=True)
    p = r.probabilities
    assert p.dtype == np.float32 and p.shape == (len(r.class_names), *r.labels.shape)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(p.argmax(0), r.labels)
    lazy = model.predict(frames[1])
    assert lazy._probabilities is None
    np.testing.assert_allclose(lazy.probabilities, p, atol=1e-6)  # computed when asked
    assert r.class_names == model.class_names and len(r.class_names) == 11 and "road" in r.class_names
    assert r.palette.shape == (11, 3) and r.palette.dtype == np.uint8
    assert r.counts().sum() == r.labels.size
    assert r.overlay(0.0).tobytes() == Image.fromarray(r.image).tobytes()
    assert r.overlay(1.0).tobytes() == r.colorize().tobytes()


def test_settings_come_from_the_weights_and_keywords_override_them():
    m = pspnet.load(precision="fp32")
    assert m.settings["base_size"] == 480 and m.settings["flip"] is True and m.sources["flip"] == "weights"
    m2 = pspnet.load(precision="fp32", base_size=0, flip=False, scales=[0.5, 1.0])
    assert m2.settings["base_size"] is None and m2.settings["flip"] is False and m2.settings["scales"] == (0.5, 1.0)
    assert m2.sources["flip"] == m2.sources["base_size"] == "command line"
    assert "flip=False (command line)" in m2.settings_line()
    with pytest.raises(ConfigError, match="crop"):
        pspnet.load(precision="fp32", mode="sliding")


def test_errors_are_the_clis(model, tmp_path, monkeypatch):
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path / "home"))
    with pytest.raises(WeightsError, match="pspnet download mmseg-pspnet_r50-d8_4xb2-40k_cityscapes-512x1024"):
        pspnet.load("mmseg-pspnet_r50-d8_4xb2-40k_cityscapes-512x1024")
    with pytest.raises(WeightsError):
        pspnet.load(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="precision"):
        pspnet.load(precision="int9")
    with pytest.raises(DataError, match="H x W x 3 uint8"):
        model.predict(np.zeros((8, 8), np.float32))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        model.predict(bad)
    with pytest.raises(DataError, match="over the limit"):
        model.predict(Image.new("RGB", (300, 300)), max_pixels=1000)
    with pytest.raises(DataError, match="empty"):
        model.predict(b"")


def test_load_is_exported_lazily():
    import subprocess
    import sys
    code = "import sys, pspnet; assert 'pspnet.api' not in sys.modules; pspnet.load; print(pspnet.Model.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "Model", out.stderr
