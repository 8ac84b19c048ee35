"""Your own labels: ``data.label_map`` maps label-file values of ``folder`` and ``list`` data to classes
or to ignore (e.g. ``{255: 1}`` for 0/255 binary masks); ``pspnet data check`` spots 0/255 masks and
prints that fix; ``median_frequency_weights`` is ``sqrt(median frequency / frequency)``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from pspnet.cli import main
from pspnet.data.check import median_frequency_weights
from pspnet.data.datasets import build_dataset, dataset_info, label_table
from pspnet.errors import ConfigError, DataError


def _binary_masks(root, n: int = 3, size=(24, 32)):
    """``root/train/{images,labels}``: masks saved as 0/255 images (255 = the object), as image editors write them."""
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "train" / "images" / f"{i}.png")
        mask = np.where(img[..., 0] > 127, 255, 0).astype(np.uint8)
        Image.fromarray(mask).save(root / "train" / "labels" / f"{i}.png")
    return root


def test_the_table_maps_named_values_and_keeps_the_others():
    lut = label_table({255: 1}, 2)
    assert lut.dtype == np.uint8 and len(lut) == 256
    assert lut[[0, 1, 7, 255]].tolist() == [0, 1, 7, 1]  # 7: left alone, so a bad value is still reported
    many = label_table({10: 1, 20: 1, 30: 2, 40: "ignore", 50: 255}, 3)
    assert many[[10, 20, 30, 40, 50, 0]].tolist() == [1, 1, 2, 255, 255, 0]
    assert label_table({9: "ignore"}, 3, ignore_index=200)[9] == 200
    wide = label_table({1000: 2}, 3)  # 16-bit label files
    assert len(wide) == 65536 and wide[1000] == 2 and wide[999] == 999


@pytest.mark.parametrize("mapping, words", [
    ({255: 2}, r"255 -> 2 is neither a class \(0..1\) nor 'ignore'"),
    ({255: "cat"}, r"255 -> 'cat' is neither"),
    ({-1: 0}, r"key -1 is not a label-file value"),
])
def test_a_bad_mapping_names_the_entry(mapping, words):
    with pytest.raises(DataError, match=words):
        dataset_info("folder", 2, label_map=mapping)


def test_named_datasets_refuse_a_label_map():
    with pytest.raises(DataError, match=r"label_map is for your own labels .*cityscapes maps its label files itself"):
        dataset_info("cityscapes", label_map={255: 1})


def test_folder_and_list_datasets_read_mapped_labels(tmp_path):
    root = _binary_masks(tmp_path)
    (root / "train.txt").write_text("".join(f"train/images/{i}.png train/labels/{i}.png\n" for i in range(3)))
    raw = np.asarray(Image.open(root / "train" / "labels" / "0.png"))
    assert set(np.unique(raw)) == {0, 255}
    for name in ("folder", "list"):
        ds = build_dataset(name, root, "train", info=dataset_info(name, 2, label_map={255: 1}))
        _, label = ds[0]
        assert label.numpy().tolist() == (raw == 255).astype(int).tolist(), name
        # without the map, 255 is the ignore index: every labelled pixel is class 0
        _, plain = build_dataset(name, root, "train", info=dataset_info(name, 2))[0]
        assert set(np.unique(plain.numpy())) == {0, 255}


def test_data_check_spots_0_255_masks_and_prints_the_fix(tmp_path, capsys):
    root = _binary_masks(tmp_path)
    args = ["data", "check", "--dataset", "folder", "--data-root", str(root), "--num-classes", "2", "--no-progress"]
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0  # valid labels: a warning, not an error
    out = capsys.readouterr().out
    assert "warning: every label holds only 0 and 255" in out and "data.label_map={255: 1}" in out
    assert "data.label_map={255: 1}" in json.loads((tmp_path / "r.json").read_text())[0]["hints"][0]

    cfg = tmp_path / "binary.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"num_classes": 2},
                                   "data": {"dataset": "folder", "root": str(root), "val_split": None,
                                            "crop_size": [24, 32]}}))
    assert main(["data", "check", "--config", str(cfg), "data.label_map={255: 1}", "--no-progress",
                 "--json", str(tmp_path / "mapped.json")]) == 0
    assert "warning" not in capsys.readouterr().out
    report = json.loads((tmp_path / "mapped.json").read_text())[0]
    assert report["hints"] == [] and all(c["pixels"] > 0 for c in report["class_pixels"])  # both classes now


def test_data_check_says_nothing_of_labels_that_use_their_classes(tmp_path, capsys, folder_dataset):
    root = folder_dataset(tmp_path, classes=2, ignore="top_band")  # classes 0 and 1 and ignored pixels
    assert main(["data", "check", "--dataset", "folder", "--data-root", str(root), "--num-classes", "2",
                 "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_label_map_is_a_config_key():
    from pspnet.config import load_config
    cfg = load_config(None, ["data.label_map={255: 1, 128: ignore}"])
    assert cfg.data.label_map == {255: 1, 128: "ignore"}
    with pytest.raises(ConfigError, match="label_map"):
        load_config(None, ["data.label_map={255: cat}"])


def test_median_frequency_weights():
    pixels = np.array([600, 300, 100, 0])
    freq = pixels[:3] / 1000
    expected = np.sqrt(np.median(freq) / freq)  # median over the classes present: 0.3
    assert median_frequency_weights(pixels) == pytest.approx([*expected, 0.0], abs=1e-4)
    assert median_frequency_weights(pixels)[1] == 1.0  # the median class
    with pytest.raises(DataError, match="no labelled pixels"):
        median_frequency_weights(np.zeros(3))
