"""Every named dataset format, built as a tiny fixture in tmp_path, maps its labels exactly.

Also: image modes and EXIF orientation of ``pspnet.data.io``, colour decoding errors, list and
folder layouts. Nothing here reads /work/shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.data.datasets import DATASETS, GENERIC, build_dataset, dataset_info
from pspnet.data.datasets.camvid import COLOR_32_TO_11
from pspnet.data.io import read_image, read_label
from pspnet.errors import DataError

H, W = 6, 8
def rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def save_palette_png(path: Path, idx: np.ndarray, palette: list[tuple[int, int, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(idx.astype(np.uint8), mode="L").convert("P")
    flat = [c for col in palette for c in col]
    im.putpalette(flat + [0] * (768 - len(flat)))
    im.save(path)
    return path


def label_of(ds, i: int = 0) -> np.ndarray:
    img, lbl = ds[i]
    assert img.dtype.is_floating_point is False and img.shape[0] == 3
    return lbl.numpy()


def test_every_dataset_has_a_fixture_test():
    # each of these names has a fixture test in this file
    names = {"camvid", "camvid32", "cityscapes", "ade20k", "voc", "voc_aug", "kitti_road"}
    assert set(DATASETS) == names, "a dataset was added or removed: add its fixture test to tests/data/test_datasets.py"
    assert set(GENERIC) == {"list", "folder"}


# ---------------------------------------------------------------- named datasets
def test_cityscapes_label_ids_to_train_ids(tmp_path):
    name = "cityscapes"
    raw = np.array([[0, 7, 8, 11, 12, 13, 17, 19],
                    [20, 21, 22, 23, 24, 25, 26, 27],
                    [28, 31, 32, 33, 1, 6, 14, 30],  # 1 ego vehicle, 6 ground, 14 guard rail, 30 trailer -> 255
                    [7, 7, 7, 7, 33, 33, 33, 33],
                    [4, 5, 9, 10, 15, 16, 18, 29],
                    [26, 26, 26, 26, 26, 26, 26, 26]], np.uint8)
    save(tmp_path / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png", rgb())
    save(tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png", raw)
    save(tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_color.png", rgb(1))  # not a label: ignored
    ds = build_dataset(name, tmp_path, "val")
    assert len(ds) == 1 and ds.info.num_classes == 19
    expected = np.array([[255, 0, 1, 2, 3, 4, 5, 6],
                         [7, 8, 9, 10, 11, 12, 13, 14],
                         [15, 16, 17, 18, 255, 255, 255, 255],
                         [0, 0, 0, 0, 18, 18, 18, 18],
                         [255, 255, 255, 255, 255, 255, 255, 255],
                         [13] * 8])
    np.testing.assert_array_equal(label_of(ds), expected)


def test_cityscapes_missing_label_fails_fast_naming_the_file(tmp_path):
    save(tmp_path / "leftImg8bit/train/bonn/bonn_000001_000019_leftImg8bit.png", rgb())
    with pytest.raises(DataError, match="bonn_000001_000019_gtFine_labelIds.png"):
        build_dataset("cityscapes", tmp_path, "train")


def test_ade20k_zero_is_ignore_and_the_rest_shift_down(tmp_path):
    name = "ade20k"
    root = tmp_path / "ADEChallengeData2016"
    raw = np.zeros((H, W), np.uint8)
    raw[0, :4] = [1, 2, 150, 75]
    raw[1:, :] = 13  # person -> 12
    save(root / "images/validation/ADE_val_00000001.jpg", rgb())
    save(root / "annotations/validation/ADE_val_00000001.png", raw)
    ds = build_dataset(name, tmp_path, "val")  # the parent folder is accepted too
    assert ds.info.num_classes == 150 and ds.info.class_names[12] == "person"
    expected = np.full((H, W), 255)
    expected[0, :4] = [0, 1, 149, 74]
    expected[1:, :] = 12
    np.testing.assert_array_equal(label_of(ds), expected)
    # a value above 150 is reported, not silently mapped to a class or to ignore
    raw[0, 0] = 151
    save(root / "annotations/validation/ADE_val_00000001.png", raw)
    with pytest.raises(DataError, match=r"label value 150 at pixel \(x=0, y=0\)"):
        build_dataset(name, root, "validation")[0]


def _voc_tree(root: Path, ids_train, ids_val, labels: dict[str, np.ndarray]):
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in ids_train))
    (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in ids_val))
    from pspnet.labels import default_palette
    for i, lbl in labels.items():
        save(voc / "JPEGImages" / f"{i}.jpg", rgb(len(i)))
        save_palette_png(voc / "SegmentationClass" / f"{i}.png", lbl, list(default_palette(256)))
    return voc


def voc_label(cls: int) -> np.ndarray:
    lbl = np.zeros((H, W), np.uint8)
    lbl[1:5, 2:6] = 255  # border
    lbl[2:4, 3:5] = cls
    return lbl


def test_voc_palette_png_indices_with_255_border(tmp_path):
    name = "voc"
    _voc_tree(tmp_path, ["2007_000032"], ["2007_000033"], {"2007_000032": voc_label(15), "2007_000033": voc_label(20)})
    # the palette PNG shows colours, but its indices are the classes
    assert Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png").mode == "P"
    ds = build_dataset(name, tmp_path, "train")
    np.testing.assert_array_equal(label_of(ds), voc_label(15))
    np.testing.assert_array_equal(label_of(build_dataset(name, tmp_path / "VOCdevkit/VOC2012", "val")), voc_label(20))
    assert ds.info.palette[15] == (192, 128, 128)  # person in the VOC palette


def test_voc_aug_reads_sbd_mat_and_builds_train_aug(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    name = "voc_aug"
    # VOC: train {a}, val {v}; SBD: train {b, v}, val {c}; train_aug = {a, b, c} (v is VOC val)
    _voc_tree(tmp_path, ["a"], ["v"], {"a": voc_label(1), "v": voc_label(2)})
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("b\nv\n")
    (sbd / "val.txt").write_text("c\n")
    seg_b = np.arange(H * W, dtype=np.uint8).reshape(H, W) % 21
    seg_c = np.full((H, W), 7, np.uint8)
    for i, seg in (("b", seg_b), ("c", seg_c), ("v", seg_c)):
        scipy_io.savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1),
                                                             "CategoriesPresent": np.unique(seg)}})
        save(sbd / "img" / f"{i}.jpg", rgb(3))
    ds = build_dataset(name, tmp_path, "train_aug")
    assert [p[0].stem for p in ds.pairs] == ["a", "b", "c"]
    assert ds.pairs[0][1].suffix == ".png" and ds.pairs[1][1].suffix == ".mat"
    assert ds.pairs[1][0] == sbd / "img" / "b.jpg"  # no VOC JPEG for b: SBD's image
    np.testing.assert_array_equal(label_of(ds, 0), voc_label(1))
    np.testing.assert_array_equal(label_of(ds, 1), seg_b)
    np.testing.assert_array_equal(label_of(ds, 2), seg_c)
    assert len(build_dataset(name, tmp_path, "val")) == 1
    # an explicit train_aug.txt wins
    (tmp_path / "train_aug.txt").write_text("/JPEGImages/c.jpg /SegmentationClassAug/c.png\n")
    assert [p[0].stem for p in build_dataset(name, tmp_path, "train_aug").pairs] == ["c"]


def test_sbd_mat_without_gtcls_is_a_clear_error(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "x.mat", {"GTinst": {"Segmentation": np.zeros((2, 2))}})
    with pytest.raises(DataError, match=r"x.mat: expected an SBD class label with variable GTcls.Segmentation"):
        read_label(tmp_path / "x.mat")
    (tmp_path / "y.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="y.mat: cannot read MATLAB label file"):
        read_label(tmp_path / "y.mat")


def test_camvid_segnet_layout_void_is_ignore(tmp_path):
    name = "camvid"
    raw = (np.arange(H * W).reshape(H, W) % 12).astype(np.uint8)  # 0..10 classes, 11 void
    save(tmp_path / "train/0001TP_006690.png", rgb())
    save(tmp_path / "trainannot/0001TP_006690.png", raw)
    (tmp_path / "train.txt").write_text("train/0001TP_006690.png trainannot/0001TP_006690.png\n")
    ds = build_dataset(name, tmp_path, "train")
    np.testing.assert_array_equal(label_of(ds), np.where(raw == 11, 255, raw))
    img, _ = ds[0]
    np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), rgb())


def test_splits_joined_with_plus_are_read_in_order(tmp_path):
    """``data.train_split=train+val``: the final model of a recipe chosen on val trains on both."""
    for split, stem in (("train", "0001TP_006690"), ("val", "0016E5_07959")):
        save(tmp_path / f"{split}/{stem}.png", rgb())
        save(tmp_path / f"{split}annot/{stem}.png", np.zeros((H, W), np.uint8))
        (tmp_path / f"{split}.txt").write_text(f"{split}/{stem}.png {split}annot/{stem}.png\n")
    joined = build_dataset("camvid", tmp_path, "train+val")
    assert [p[0].name for p in joined.pairs] == ["0001TP_006690.png", "0016E5_07959.png"]
    with pytest.raises(DataError, match="empty split name"):
        build_dataset("camvid", tmp_path, "train+")
    with pytest.raises(DataError, match="test.txt"):
        build_dataset("camvid", tmp_path, "train+test")


def _camvid32_label() -> tuple[np.ndarray, np.ndarray]:
    colours = list(COLOR_32_TO_11)
    idx = np.arange(H * W).reshape(H, W) % len(colours)
    col = np.array(colours, np.uint8)[idx]
    expected = np.array([COLOR_32_TO_11[c] for c in colours])[idx]
    return col, expected


def test_camvid32_colour_labels_map_to_11_classes(tmp_path):
    name = "camvid32"
    assert len(COLOR_32_TO_11) == 32
    col, expected = _camvid32_label()
    for stem in ("0001TP_006690", "Seq05VD_f00000"):
        save(tmp_path / "701_StillsRaw_full" / f"{stem}.png", rgb())
        save(tmp_path / "LabeledApproved_full" / f"{stem}_L.png", col)
    ds = build_dataset(name, tmp_path, "all")
    assert len(ds) == 2
    np.testing.assert_array_equal(label_of(ds), expected)
    assert expected.min() == 0 and 255 in expected and 10 in expected
    # a SegNet list file selects frames by name
    (tmp_path / "val.txt").write_text("val/Seq05VD_f00000.png valannot/Seq05VD_f00000.png\n")
    assert [p[0].stem for p in build_dataset(name, tmp_path, "val").pairs] == ["Seq05VD_f00000"]


def test_colour_label_saved_as_palette_png_is_decoded_through_its_palette(tmp_path):
    col, expected = _camvid32_label()
    colours = sorted({tuple(c) for c in col.reshape(-1, 3).tolist()})
    idx = np.array([[colours.index(tuple(c)) for c in row] for row in col.tolist()])
    save(tmp_path / "701_StillsRaw_full/a.png", rgb())
    save_palette_png(tmp_path / "LabeledApproved_full/a_L.png", idx, colours)
    np.testing.assert_array_equal(label_of(build_dataset("camvid32", tmp_path, "all")), expected)


def test_unknown_colour_names_file_colour_and_pixel(tmp_path):
    col, _ = _camvid32_label()
    col[4, 5] = (1, 2, 3)
    save(tmp_path / "701_StillsRaw_full/a.png", rgb())
    save(tmp_path / "LabeledApproved_full/a_L.png", col)
    ds = build_dataset("camvid32", tmp_path, "all")
    with pytest.raises(DataError, match=r"a_L\.png: unknown label colour RGB\(1, 2, 3\) at pixel \(x=5, y=4\)"):
        ds[0]


def test_kitti_road_gt_colours(tmp_path):
    name = "kitti_road"
    gt = np.zeros((H, W, 3), np.uint8)  # black: unlabelled
    gt[:, :3] = (255, 0, 0)  # not road
    gt[3:, 3:] = (255, 0, 255)  # road
    for stem in ("um_000000", "umm_000007", "uu_000003"):
        save(tmp_path / "training/image_2" / f"{stem}.png", rgb())
        cat, num = stem.split("_")
        save(tmp_path / "training/gt_image_2" / f"{cat}_road_{num}.png", gt)
    save(tmp_path / "training/gt_image_2/um_lane_000000.png", gt)  # lane task: not used
    ds = build_dataset(name, tmp_path, "train")
    assert [p[0].name for p in ds.pairs] == ["um_000000.png", "umm_000007.png", "uu_000003.png"]
    assert [p[1].name for p in ds.pairs] == ["um_road_000000.png", "umm_road_000007.png", "uu_road_000003.png"]
    expected = np.full((H, W), 255)
    expected[:, :3] = 0
    expected[3:, 3:] = 1
    np.testing.assert_array_equal(label_of(ds), expected)
    assert ds.info.class_names == ("not_road", "road")
    gt[0, 7] = (0, 255, 0)
    save(tmp_path / "training/gt_image_2/uu_road_000003.png", gt)
    with pytest.raises(DataError,
                       match=r"uu_road_000003.png: unknown label colour RGB\(0, 255, 0\) at pixel \(x=7, y=0\)"):
        ds[2]
    (tmp_path / "testing/image_2").mkdir(parents=True)
    save(tmp_path / "testing/image_2/um_000001.png", rgb())
    test = build_dataset(name, tmp_path, "test")
    assert test.pairs[0][1] is None and (label_of(test) == 255).all()


# ---------------------------------------------------------------- generic formats
def test_list_file_relative_to_root(tmp_path):
    raw = np.array([[0, 1, 2, 255]] * 3, np.uint8)
    save(tmp_path / "img/a.jpg", rgb(0, 3, 4))
    save(tmp_path / "lbl/a.png", raw)
    save(tmp_path / "img/b.png", rgb(1, 3, 4))
    (tmp_path / "train.txt").write_text("# comment\nimg/a.jpg lbl/a.png\n\nimg/b.png\n")
    ds = build_dataset("list", tmp_path, "train", num_classes=3)
    assert len(ds) == 2
    np.testing.assert_array_equal(label_of(ds, 0), raw)
    assert (label_of(ds, 1) == 255).all()  # no label: all ignore
    (tmp_path / "bad.txt").write_text("a b c\n")
    with pytest.raises(DataError, match=r"bad.txt:1: expected 'image_path \[label_path\]', got 3 fields"):
        build_dataset("list", tmp_path, "train", num_classes=3, list_file="bad.txt")
    with pytest.raises(DataError, match="needs model.num_classes"):
        build_dataset("list", tmp_path, "train")
    assert dataset_info("list", class_names=["a", "b"]).num_classes == 2


def test_folder_pairs_by_stem(tmp_path):
    raw = np.array([[0, 1], [1, 0]], np.uint8)
    save(tmp_path / "val/images/x.jpg", rgb(0, 2, 2))
    save(tmp_path / "val/labels/x.png", raw)
    save(tmp_path / "val/images/y.png", rgb(1, 2, 2))
    save(tmp_path / "val/labels/y.png", 1 - raw)
    (tmp_path / "val/images/notes.txt").write_text("not an image")
    ds = build_dataset("folder", tmp_path, "val", num_classes=2)
    assert [p[0].name for p in ds.pairs] == ["x.jpg", "y.png"]
    np.testing.assert_array_equal(label_of(ds, 1), 1 - raw)
    save(tmp_path / "val/images/z.png", rgb(2, 2, 2))
    with pytest.raises(DataError, match=r"no label for 1 image\(s\).*'z.png'"):
        build_dataset("folder", tmp_path, "val", num_classes=2)
    lenient = build_dataset("folder", tmp_path, "val", num_classes=2, check_files=False)
    assert lenient.pairs[-1][1] == tmp_path / "val/labels/z.png"


def test_out_of_range_label_value_is_an_error_naming_file_value_pixel(tmp_path):
    raw = np.zeros((H, W), np.uint8)
    raw[2, 5] = 3
    save(tmp_path / "val/images/x.png", rgb())
    save(tmp_path / "val/labels/x.png", raw)
    ds = build_dataset("folder", tmp_path, "val", num_classes=3)
    with pytest.raises(DataError, match=r"x.png: label value 3 at pixel \(x=5, y=2\) is not a class"):
        ds[0]


def test_rgb_label_for_an_index_dataset_is_refused(tmp_path):
    save(tmp_path / "val/images/x.png", rgb())
    save(tmp_path / "val/labels/x.png", rgb(1))
    with pytest.raises(DataError, match="label is a colour \\(RGB\\) image but folder expects single-channel"):
        build_dataset("folder", tmp_path, "val", num_classes=3)[0]


# ---------------------------------------------------------------- image modes, EXIF
def test_image_modes_become_uint8_rgb(tmp_path):
    base = rgb(5)
    grey = base[..., 0]
    cases = {
        "rgb.png": (Image.fromarray(base), base),
        "rgba.png": (Image.fromarray(np.dstack([base, np.zeros((H, W), np.uint8)])), base),  # alpha dropped
        "l.png": (Image.fromarray(grey), np.repeat(grey[..., None], 3, 2)),
        "la.png": (Image.fromarray(np.dstack([grey, np.full((H, W), 7, np.uint8)]), mode="LA"),
                   np.repeat(grey[..., None], 3, 2)),
        "one.png": (Image.fromarray(grey > 127), np.repeat(np.where(grey > 127, 255, 0)[..., None], 3, 2)),
    }
    pal_idx = (grey % 4).astype(np.uint8)
    palette = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200)]
    for fname, (im, expected) in cases.items():
        im.save(tmp_path / fname)
        out = read_image(tmp_path / fname)
        assert out.dtype == np.uint8 and out.shape == (H, W, 3), fname
        np.testing.assert_array_equal(out, expected, err_msg=fname)
    save_palette_png(tmp_path / "p.png", pal_idx, palette)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.array(palette, np.uint8)[pal_idx])


def test_16_bit_images_scale_to_8_bit(tmp_path):
    cv2 = pytest.importorskip("cv2")
    g16 = (np.arange(H * W).reshape(H, W) * 1300).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    out = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 0], np.round(g16 / 65535 * 255).astype(np.uint8))
    c16 = np.dstack([g16, 65535 - g16, np.full_like(g16, 0x8000)])  # BGR for OpenCV
    cv2.imwrite(str(tmp_path / "c16.png"), c16)
    out = read_image(tmp_path / "c16.png")
    np.testing.assert_array_equal(out, (c16[..., ::-1] >> 8).astype(np.uint8))  # high byte, RGB order
    f = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    Image.fromarray(f).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 1], np.round(f * 255).astype(np.uint8))


def _save_with_orientation(path: Path, arr: np.ndarray, orientation: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif)


@pytest.mark.parametrize("orientation, upright", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                                  (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                                  (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied_to_images_and_labels(tmp_path, orientation, upright):
    img = rgb(9)
    _save_with_orientation(tmp_path / "img.png", img, orientation)
    np.testing.assert_array_equal(read_image(tmp_path / "img.png"), upright(img))
    lbl = (np.arange(H * W).reshape(H, W) % 5).astype(np.uint8)
    _save_with_orientation(tmp_path / "lbl.png", lbl, orientation)
    np.testing.assert_array_equal(read_label(tmp_path / "lbl.png"), upright(lbl))


def test_size_mismatch_explains_exif_rotation(tmp_path):
    _save_with_orientation(tmp_path / "val/images/x.png", rgb(), 6)  # shown 6 wide, 8 high
    save(tmp_path / "val/labels/x.png", np.zeros((H, W), np.uint8))  # drawn on the raw 8x6 pixels
    ds = build_dataset("folder", tmp_path, "val", num_classes=2)
    with pytest.raises(DataError, match=r"label is 8x6 but its image .* is 6x8 .* EXIF orientation 6"):
        ds[0]


def test_label_modes_are_read_without_conversion(tmp_path):
    idx = (np.arange(H * W).reshape(H, W) % 3).astype(np.uint8)
    Image.fromarray(idx.astype(bool)).save(tmp_path / "one.png")
    np.testing.assert_array_equal(read_label(tmp_path / "one.png"), idx.astype(bool).astype(np.uint8))
    Image.fromarray(idx.astype(np.uint16) * 300).save(tmp_path / "i16.png")
    out = read_label(tmp_path / "i16.png")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, idx.astype(np.int32) * 300)
    Image.fromarray(np.dstack([idx, np.full_like(idx, 255)]), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_label(tmp_path / "la.png"), idx)
    save_palette_png(tmp_path / "p.png", idx, [(9, 9, 9), (1, 2, 3), (4, 5, 6)])
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), idx)  # indices, not colours
    np.testing.assert_array_equal(read_label(tmp_path / "p.png", palette_to_rgb=True)[0, 1], (1, 2, 3))


def test_broken_and_missing_files_are_data_errors(tmp_path):
    good = tmp_path / "good.png"
    save(good, rgb())
    (tmp_path / "broken.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="broken.png: cannot decode image"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(DataError, match="broken.png: cannot decode label"):
        read_label(tmp_path / "broken.png")
    with pytest.raises(DataError, match="nope.png: label file not found"):
        read_label(tmp_path / "nope.png")
