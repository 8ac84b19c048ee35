"""``pspnet data check`` lists every problem of a dataset and the per-class pixel counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pspnet.cli import main

H, W = 6, 8


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def good_label() -> np.ndarray:
    lbl = np.zeros((H, W), np.uint8)
    lbl[:, 4:] = 1
    lbl[0, :] = 2
    lbl[5, :2] = 255
    return lbl


def broken_fixture(root: Path) -> dict[str, Path]:
    """Five pairs: a good one, a broken PNG, a size mismatch, an out-of-range label, another good one."""
    files = {}
    save(root / "img/good.png", rgb())
    save(root / "lbl/good.png", good_label())
    good_png = save(root / "img/broken.png", rgb(seed=1)).read_bytes()
    files["broken"] = root / "img/broken.png"
    files["broken"].write_bytes(good_png[: len(good_png) // 2])  # truncated PNG
    save(root / "lbl/broken.png", good_label())
    save(root / "img/small.png", rgb())
    files["small"] = save(root / "lbl/small.png", np.zeros((H - 1, W - 2), np.uint8))
    save(root / "img/range.png", rgb())
    bad = good_label()
    bad[1, 2] = 7
    bad[3, 3] = 7
    files["range"] = save(root / "lbl/range.png", bad)
    save(root / "img/good2.png", rgb(seed=2))
    save(root / "lbl/good2.png", good_label())
    (root / "train.txt").write_text("".join(f"img/{n}.png lbl/{n}.png\n"
                                            for n in ("good", "broken", "small", "range", "good2")))
    return files


def test_data_check_lists_all_problems_and_exits_nonzero(tmp_path, capsys):
    files = broken_fixture(tmp_path)
    rc = main(["data", "check", "--dataset", "list", "--root", str(tmp_path), "--split", "train",
               "--num-classes", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "3 problem(s) in 3 file(s) (unreadable: 1, size: 1, values: 1):" in out
    assert f"[unreadable] {files['broken']}: cannot decode image" in out
    assert f"[size] {files['small']}: label is 6x5 but its image" in out and "is 8x6 (width x height)" in out
    assert (f"[values] {files['range']}: label values outside the classes 0..2 of list and the ignore value 255: "
            f"7: 2 px, first at (x=2, y=1)") in out
    assert out.rstrip().endswith("result: 3 error(s)")
    # the per-class table counts every label that could be read (good, good2, broken's label, small, range)
    g = good_label()
    counts = {c: 3 * int((g == c).sum()) for c in (0, 1, 2, 255)}  # good, good2 and broken.png's label
    counts[0] += (H - 1) * (W - 2)  # small.png's label: all 0
    counts[0] += int((g == 0).sum()) - 2  # range.png: two class-0 pixels became 7
    counts[1] += int((g == 1).sum())
    counts[2] += int((g == 2).sum())
    counts[255] += int((g == 255).sum())
    for cid, name in ((0, "class_0"), (1, "class_1"), (2, "class_2"), (255, "(ignore)")):
        row = next(line for line in out.splitlines() if line.split()[:2] == [str(cid), name])
        assert int(row.split()[2].replace(",", "")) == counts[cid], row


def test_data_check_reports_missing_files_and_unknown_colours_and_goes_on(tmp_path, capsys):
    gt = np.zeros((H, W, 3), np.uint8)
    gt[:, :4] = (255, 0, 255)
    save(tmp_path / "training/image_2/um_000000.png", rgb())
    save(tmp_path / "training/gt_image_2/um_road_000000.png", gt)  # good
    bad = gt.copy()
    bad[2, 6] = (9, 9, 9)
    save(tmp_path / "training/image_2/um_000001.png", rgb())
    save(tmp_path / "training/gt_image_2/um_road_000001.png", bad)  # unknown colour
    save(tmp_path / "training/gt_image_2/uu_road_000002.png", gt)  # its image is missing
    json_path = tmp_path / "report.json"
    rc = main(["data", "check", "--dataset", "kitti_road", "--root", str(tmp_path), "--no-progress",
               "--json", str(json_path), "--workers", "1"])  # results come back from a reader process
    out = capsys.readouterr().out
    assert rc == 1
    assert f"[missing] {tmp_path / 'training/image_2/uu_000002.png'}: image file not found" in out
    assert "[unreadable]" in out and "unknown label colour RGB(9, 9, 9) at pixel (x=6, y=2)" in out
    report = json.loads(json_path.read_text())
    assert [p["kind"] for p in report[0]["problems"]] == ["unreadable", "missing"]
    pixels = {c["name"]: c["pixels"] for c in report[0]["class_pixels"]}
    # good + the missing image's (readable) label: 24 road each; unlabelled black -> ignore
    assert pixels == {"not_road": 0, "road": 2 * H * 4} and report[0]["ignore_pixels"] == 2 * H * 4


def test_data_check_from_config_checks_train_and_val_and_passes(tmp_path, capsys):
    for split, seed in (("train", 0), ("val", 1)):
        for i in range(2):
            save(tmp_path / split / "images" / f"{i}.png", rgb(seed=seed + i))
            save(tmp_path / split / "labels" / f"{i}.png", good_label())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  num_classes: 3\ndata:\n  dataset: folder\n  root: {tmp_path}\n"
                   f"  class_names: [ground, wall, sky]\n")
    rc = main(["data", "check", "--config", str(cfg)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out
    assert captured.out.count("problems: none") == 2 and captured.out.count("result: OK") == 2
    assert "dataset folder, split train" in captured.out and "dataset folder, split val" in captured.out
    g = good_label()
    row = next(line for line in captured.out.splitlines() if line.split()[:2] == ["2", "sky"])
    assert int(row.split()[2].replace(",", "")) == 2 * int((g == 2).sum())
    assert "checking folder train" in captured.err  # the tqdm progress bar


def test_data_check_usage_errors(tmp_path, capsys):
    assert main(["data", "check"]) == 2
    assert "needs --config, or --dataset and --data-root" in capsys.readouterr().err
    assert main(["data", "check", "--dataset", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["data", "check", "--dataset", "camvid", "--root", str(tmp_path)]) == 2
    assert "train.txt: list file not found" in capsys.readouterr().err
