"""`pspnet eval --grid`: a PNG of image | ground truth | prediction rows for the evaluated data."""

import numpy as np
from PIL import Image

from pspnet.cli import main
from pspnet.data.palettes import colorize
from pspnet.models.weights import save_weights

NAMES = ["road", "car", "sky"]
PALETTE = [(128, 64, 128), (0, 0, 142), (70, 130, 180)]


def test_eval_grid_shows_image_truth_and_prediction(tmp_path, capsys, tiny_pspnet):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    lines = []
    for i in range(3):
        label = np.kron(rng.integers(0, 3, (5, 6)), np.ones((8, 8), np.uint8)).astype(np.uint8)
        Image.fromarray(rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)).save(tmp_path / f"img/{i}.png")
        Image.fromarray(label).save(tmp_path / f"lbl/{i}.png")
        lines.append(f"img/{i}.png lbl/{i}.png")
    (tmp_path / "val.txt").write_text("\n".join(lines))
    weights = tmp_path / "w.safetensors"
    save_weights(tiny_pspnet(aux=False).eval(), weights, NAMES, PALETTE)
    grid = tmp_path / "grid.png"
    rc = main(["eval", "--weights", str(weights), "--dataset", "list", "--data-root", str(tmp_path),
               "--grid", str(grid), "--grid-images", "2", "--no-progress"])
    assert rc == 0 and f"prediction grid: {grid}" in capsys.readouterr().out
    rgb = np.asarray(Image.open(grid).convert("RGB"))
    panels = _panels(rgb, rows=2, shape=label.shape)  # every label has the same shape
    # --grid-images 2 of 3 items: the first and the last; each row's middle panel is its ground truth,
    # pixel for pixel the dataset palette's colouring of that label (not just palette colours somewhere)
    for row, item in enumerate((0, 2)):
        label = np.asarray(Image.open(tmp_path / f"lbl/{item}.png"))
        truth = _sample(rgb, panels[row][1], label.shape)
        np.testing.assert_array_equal(truth, colorize(label, PALETTE), err_msg=f"row {row}: ground truth panel")
        image = _sample(rgb, panels[row][0], label.shape)
        np.testing.assert_array_equal(image, np.asarray(Image.open(tmp_path / f"img/{item}.png").convert("RGB")))
        prediction = _sample(rgb, panels[row][2], label.shape)
        assert {tuple(c) for c in prediction.reshape(-1, 3)} <= set(PALETTE)


def _panels(rgb: np.ndarray, rows: int, shape: tuple[int, int]) -> list[list[tuple[int, int, int, int]]]:
    """Boxes (top, bottom, left, right; inclusive) of the panels, ``[row][column]``. The columns are
    the figure's three large non-white regions (titles and legend entries are far smaller); the
    panels of a column can touch, so each column is cut into ``rows`` equally spaced panels of the
    data's aspect ratio."""
    from scipy import ndimage
    regions, _ = ndimage.label((rgb != 255).any(-1))
    boxes = [(s[0].start, s[0].stop - 1, s[1].start, s[1].stop - 1) for s in ndimage.find_objects(regions)]
    columns = sorted((b for b in boxes if (b[1] - b[0]) * (b[3] - b[2]) > rgb.shape[0] * rgb.shape[1] / 50),
                     key=lambda b: b[2])
    assert len(columns) == 3, f"expected three columns of panels, found {columns}"
    out: list[list[tuple[int, int, int, int]]] = [[] for _ in range(rows)]
    for top, bottom, left, right in columns:
        height = round((right - left + 1) * shape[0] / shape[1])
        assert rows * height <= bottom - top + 1 + 2 * rows, (top, bottom, left, right)  # 1-2 px of rounding
        height = min(height, (bottom - top + 1) // rows)
        step = (bottom - top + 1 - height) / max(rows - 1, 1)
        for r in range(rows):
            start = top + round(r * step)
            out[r].append((start, start + height - 1, left, right))
    return out


def _sample(rgb: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """The panel read back at the centre of each of its ``shape`` cells (the figure draws with
    nearest-neighbour interpolation, several screen pixels per data pixel)."""
    top, bottom, left, right = box
    h, w = shape
    ys = (top + (np.arange(h) + 0.5) * (bottom - top + 1) / h).astype(int)
    xs = (left + (np.arange(w) + 0.5) * (right - left + 1) / w).astype(int)
    return rgb[ys[:, None], xs[None, :]]
