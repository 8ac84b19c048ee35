"""Recognising a data folder (pspnet.data.inspect) and its starter config (pspnet.data.starter): each layout
and label encoding a newcomer's data comes in is named, and the config written for it trains on it as is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.config import config_for_data, load_config, load_run_config
from pspnet.data.datasets import build_dataset, dataset_info
from pspnet.data.inspect import check_finding, label_encoding, recognise, recognise_layout
from pspnet.data.starter import starter_recipe, write_starter
from pspnet.errors import ConfigError, DataError


def _write(root: Path, split_dirs: dict[str, tuple[str, str]], n: int = 5, levels=(0, 128, 255),
           size: tuple[int, int] = (40, 60), mode: str = "L") -> Path:
    """Images and masks whose values are ``levels`` (one vertical band each), under ``split_dirs``:
    name -> (image folder, label folder) relative to ``root``."""
    rng = np.random.default_rng(0)
    for images, labels in split_dirs.values():
        (root / images).mkdir(parents=True, exist_ok=True)
        (root / labels).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            band = np.arange(size[1]) * len(levels) // size[1]
            lbl = np.asarray(levels, np.uint8)[np.broadcast_to(band, size)]
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / images / f"{i:03d}.png")
            if mode == "RGB":
                Image.fromarray(np.stack([lbl, 255 - lbl, lbl], -1)).save(root / labels / f"{i:03d}.png")
            else:
                Image.fromarray(lbl).save(root / labels / f"{i:03d}.png")
    return root


def _folder(root: Path, labels: str = "masks", **kw) -> Path:
    return _write(root, {s: (f"{s}/images", f"{s}/{labels}") for s in ("train", "val")}, **kw)


# ------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("labels", ["labels", "masks"])
def test_folder_layout_with_labels_or_masks(tmp_path: Path, labels: str) -> None:
    lay = recognise_layout(_folder(tmp_path, labels))
    assert (lay.dataset, lay.train_split, lay.val_split) == ("folder", "train", "val")
    assert {s: len(p) for s, p in lay.split_pairs().items()} == {"train": 5, "val": 5}
    # the folder dataset reads masks/ too, as the starter config will name it
    ds = build_dataset("folder", tmp_path, "val", info=dataset_info("folder", 3, label_map={128: 1, 255: 2}))
    assert len(ds) == 5 and set(np.unique(ds.load(0)[1])) == {0, 1, 2}


def test_list_layout(tmp_path: Path) -> None:
    _write(tmp_path, {"a": ("img", "ann")}, n=4)
    for split, names in (("train", "000 001 002"), ("val", "003")):
        (tmp_path / f"{split}.txt").write_text("".join(f"img/{n}.png ann/{n}.png\n" for n in names.split()))
    lay = recognise_layout(tmp_path)
    assert (lay.dataset, lay.train_split, lay.val_split) == ("list", "train", "val")
    assert len(lay.split_pairs()["train"]) == 3


def test_flat_layout_holds_every_fifth_pair_out(tmp_path: Path) -> None:
    _write(tmp_path, {"all": ("images", "masks")}, n=12)
    lay = recognise_layout(tmp_path)
    split = lay.split_pairs()
    assert lay.dataset == "flat" and len(split["train"]) == 10 and len(split["val"]) == 2
    assert [p[0].name for p in split["val"]] == ["004.png", "009.png"]


@pytest.mark.parametrize("dirs,name", [(("leftImg8bit", "gtFine"), "cityscapes"),
                                       (("images/training", "annotations/training"), "ade20k"),
                                       (("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/SegmentationClass"), "voc"),
                                       (("training/image_2", "training/gt_image_2"), "kitti_road"),
                                       (("trainannot",), "camvid")])
def test_named_datasets_by_their_folders(tmp_path: Path, dirs, name: str) -> None:
    for d in dirs:
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "train.txt").write_text("")
    finding = recognise(tmp_path)
    assert finding.layout.dataset == name and finding.encoding is None
    assert finding.data_settings()["dataset"] == name


def test_an_unknown_layout_says_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match=r"no known layout.*images \+ <root>/<split>/labels \(or masks\).*"
                                        r"Found: photos/"):
        recognise_layout(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        recognise_layout(tmp_path / "nope")


# ------------------------------------------------------------------------------------ encodings
def _encoding(tmp_path: Path, levels, mode: str = "L"):
    return recognise(_folder(tmp_path, levels=levels, mode=mode)).encoding


def test_grey_levels_become_classes_in_order(tmp_path: Path) -> None:
    enc = _encoding(tmp_path, (0, 128, 255))
    assert enc.kind == "levels" and enc.num_classes == 3 and enc.label_map == {0: 0, 128: 1, 255: 2}
    assert any("255 is read as class 2 (the top level)" in n and "data.label_map" in n for n in enc.notes)


def test_binary_masks_map_255_to_class_1(tmp_path: Path) -> None:
    enc = _encoding(tmp_path, (0, 255))
    assert enc.kind == "binary" and enc.num_classes == 2 and enc.label_map == {255: 1}


def test_class_ids_are_read_as_they_are_with_255_ignored(tmp_path: Path) -> None:
    enc = _encoding(tmp_path, (0, 1, 3, 255))
    assert enc.kind == "ids" and enc.num_classes == 4 and enc.label_map is None and enc.ignore_present
    assert any("class id(s) 2 appear in none" in n for n in enc.notes)


def test_colour_masks_get_the_exact_colour_to_class_map(tmp_path: Path) -> None:
    finding = recognise(_folder(tmp_path / "d", mode="RGB"))  # colours (v, 255 - v, v) for v in 0, 128, 255
    enc = finding.encoding
    assert enc.kind == "colours" and finding.usable and enc.num_classes == 3
    assert enc.label_colors == [[0, 255, 0], [128, 127, 128], [255, 0, 255]]
    assert ("RGB(0, 255, 0) -> 0, RGB(128, 127, 128) -> 1, RGB(255, 0, 255) -> 2: "
            "data.label_colors=[[0, 255, 0], [128, 127, 128], [255, 0, 255]]") in finding.format()
    written = write_starter(finding, tmp_path / "c.yaml")
    cfg = load_config(written[0])
    assert cfg.data.label_colors == [(0, 255, 0), (128, 127, 128), (255, 0, 255)] and cfg.model.num_classes == 3
    reports = check_finding(finding, progress=False)
    assert all(r.ok for r in reports) and all(r.class_pixels.min() > 0 for r in reports)
    info = dataset_info("folder", 3, label_colors=cfg.data.label_colors)
    _, label = build_dataset("folder", tmp_path / "d", "val", info=info)[0]
    assert sorted(np.unique(np.asarray(label)).tolist()) == [0, 1, 2]
    with pytest.raises(DataError, match=r"unknown label colour RGB\(255, 0, 255\)"):
        build_dataset("folder", tmp_path / "d", "val", info=dataset_info("folder", 2, label_colors=[(0, 255, 0),
                                                                                                   (128, 127, 128)]))[0]
    with pytest.raises(ConfigError, match="data.label_colors does not list"):
        from pspnet.config import check_config_against_data
        check_config_against_data(load_config(written[0], ["data.label_colors=[[0,255,0],[128,127,128]]",
                                                           "model.num_classes=2", "data.class_names=null"]))


def test_many_values_are_not_classes(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.arange(200, dtype=np.uint8).reshape(10, 20)).save(tmp_path / f"{i}.png")
    enc = label_encoding(sorted(tmp_path.glob("*.png")))
    assert enc.kind == "unknown" and any("not class ids" in n for n in enc.notes)


# ------------------------------------------------------------------------------------ the starter config
def test_the_starter_config_reads_the_folder_and_checks_clean(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", size=(360, 480))
    finding = recognise(data)
    assert starter_recipe(finding)["crop_size"] == [192, 256]
    (path,) = write_starter(finding, tmp_path / "mine.yaml")
    cfg = load_config(path)
    assert cfg.model.num_classes == 3 and cfg.data.dataset == "folder" and cfg.data.val_split == "val"
    assert cfg.data.label_map == {0: 0, 128: 1, 255: 2} and cfg.train.class_weights == "auto"
    assert cfg.train.output_dir == "runs/mine" and cfg.data.class_names == ["class_0", "class_1", "class_2"]
    reports = check_finding(finding, progress=False)
    assert [r.ok for r in reports] == [True, True]
    assert all(r.class_pixels.tolist() == [5 * 360 * 160] * 3 for r in reports)  # a third of 5 images
    with pytest.raises(DataError, match="never overwrites"):
        write_starter(finding, path)


def test_the_flat_layouts_starter_writes_its_lists(tmp_path: Path) -> None:
    data = _write(tmp_path / "data", {"all": ("images", "masks")}, n=10, levels=(0, 255))
    written = write_starter(recognise(data), tmp_path / "cfg" / "flat.yaml")
    assert sorted(p.name for p in written) == ["flat.train.txt", "flat.val.txt", "flat.yaml"]
    cfg = load_config(tmp_path / "cfg" / "flat.yaml")
    assert cfg.data.dataset == "list" and cfg.data.label_map == {255: 1}
    val = build_dataset("list", cfg.data.root, "val", list_file=cfg.data.val_list,
                        info=dataset_info("list", 2, label_map=cfg.data.label_map))
    assert len(val) == 2 and set(np.unique(val.load(0)[1])) == {0, 1}


def test_overrides_without_a_config_file(tmp_path: Path) -> None:
    data = _folder(tmp_path / "d", levels=(0, 255))
    cfg = load_run_config(None, ["train.iters=7"], data_root=str(data))
    assert cfg.train.iters == 7 and cfg.model.num_classes == 2 and cfg.data.label_map == {255: 1}
    assert load_run_config(None, [f"data.root={data}"]).data.root == str(data)
    assert config_for_data(data).train.output_dir == "runs/d"
    # naming the dataset: no recognition, the overrides over the defaults (as before)
    assert load_run_config(None, ["data.dataset=folder", f"data.root={data}"]).data.label_map is None
    flat = _write(tmp_path / "flat", {"all": ("images", "masks")}, n=10)
    with pytest.raises(ConfigError, match="needs list files.*--write-config"):
        config_for_data(flat)


# ------------------------------------------------------------------------------------ the commands
def test_data_check_without_a_dataset_recognises_checks_and_writes_the_config(tmp_path: Path, capsys) -> None:
    from pspnet.cli import main
    data = _folder(tmp_path / "d")
    cfg = tmp_path / "d.yaml"
    assert main(["data", "check", "--data-root", str(data), "--write-config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "masks, splits train, val" in out and "3 grey levels 0, 128, 255" in out
    assert out.count("result: OK") == 2 and f"next: pspnet train --config {cfg}" in out
    assert load_config(cfg).data.label_map == {0: 0, 128: 1, 255: 2}
    # an override without a config file changes what is checked: 255 unlabelled
    assert main(["data", "check", "--data-root", str(data), "--no-progress", "data.label_map={128: 1, 255: ignore}",
                 "data.class_names=[a,b]"]) == 0
    out = capsys.readouterr().out
    assert "2 classes" in out and " 255  (ignore)  " in out
    assert main(["data", "check", "--data-root", str(data), "--write-config", str(cfg)]) == 2  # never overwrites
    assert "never overwrites" in capsys.readouterr().err
    colours = _folder(tmp_path / "c", mode="RGB")
    assert main(["data", "check", "--data-root", str(colours), "--no-progress"]) == 0
    assert "data.label_colors=[[0, 255, 0], [128, 127, 128], [255, 0, 255]]" in capsys.readouterr().out
    noise = tmp_path / "n"
    _folder(noise, n=2)
    for p in noise.rglob("masks/*.png"):
        Image.fromarray(np.arange(2400, dtype=np.uint8).reshape(40, 60)).save(p)
    assert main(["data", "check", "--data-root", str(noise), "--no-progress"]) == 1
    assert "nothing was checked" in capsys.readouterr().out


def test_version_and_train_without_a_config(tmp_path: Path, capsys) -> None:
    from pspnet.cli import main
    from pspnet.version import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pspnet {__version__}"
    assert main(["train"]) == 2
    assert "needs --config FILE, or --data-root DIR" in capsys.readouterr().err
    data = _folder(tmp_path / "d", levels=(0, 128, 255), n=4)
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(data), "--no-progress", "data.crop_size=[32,32]", "data.workers=0",
                 "model.head_channels=16", "model.aux_channels=8", "train.iters=2", "train.batch_size=2",
                 "train.precision=fp32", f"train.output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "no config file: data.dataset=folder" in printed and "model.num_classes=3" in printed
    assert (out / "final.safetensors").is_file()
    assert load_config(out / "config.yaml").data.label_map == {0: 0, 128: 1, 255: 2}
    # the weights record how the masks were read: eval on the same 0/128/255 masks needs no config
    assert main(["eval", "--weights", str(out / "final.safetensors"), "--data-root", str(data), "--no-progress",
                 "--out", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "dataset: folder (weights), data.label_map={0: 0, 128: 1, 255: 2} (weights), split val" in printed
    assert "mIoU" in printed and (tmp_path / "m.json").is_file()


def test_255_says_how_it_is_read_and_the_key_that_flips_it(tmp_path: Path) -> None:
    assert any("255 is read as class 1 (the object)" in n and "data.label_map" in n
               for n in _encoding(tmp_path / "b", (0, 255)).notes)
    assert any("255 is read as the ignore value" in n and "data.label_map: write {255: 3}" in n
               for n in _encoding(tmp_path / "i", (0, 1, 2, 255)).notes)


def test_data_check_names_the_dataset_as_the_flag_does_and_warns_of_unmapped_values(tmp_path: Path, capsys) -> None:
    from pspnet.cli import main
    data = _folder(tmp_path / "d", levels=(0, 128, 255))
    assert main(["data", "check", "--dataset", "folder", "--data-root", str(data)]) == 2
    assert "--dataset folder needs --num-classes N" in capsys.readouterr().err
    assert main(["data", "check", "--dataset", "folder", "--data-root", str(data), "--num-classes", "3",
                 "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "classes 0..2 of folder and" in out and "custom" not in out
    assert "map them to classes with data.label_map" in out
    # overrides work with --dataset too
    assert main(["data", "check", "--dataset", "folder", "--data-root", str(data), "--no-progress",
                 "data.label_map={128: 1, 255: 2}", "model.num_classes=3"]) == 0
    capsys.readouterr()
    # a map that leaves 255 out: OK, but a loud warning names the value and its pixel share
    assert main(["data", "check", "--data-root", str(data), "--no-progress", "data.label_map={128: 1}"]) == 0
    out = capsys.readouterr().out
    assert "warning: label-file value 255 is not in data.label_map {128: 1}, so it is read as ignore" in out
    assert "33.33% of the pixels" in out
