"""`pspnet eval --grid`: a PNG of image | ground truth | prediction rows for the evaluated data."""

import numpy as np
from PIL import Image

from pspnet.cli import main
from pspnet.data.palettes import colorize
from pspnet.models import pspnet_resnet18
from pspnet.models.weights import save_weights

NAMES = ["road", "car", "sky"]
PALETTE = [(128, 64, 128), (0, 0, 142), (70, 130, 180)]


def test_eval_grid_shows_image_truth_and_prediction(tmp_path, capsys):
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
    save_weights(pspnet_resnet18(num_classes=3, head_channels=16, aux=False).eval(), weights, NAMES, PALETTE)
    grid = tmp_path / "grid.png"
    rc = main(["eval", "--weights", str(weights), "--dataset", "list", "--data-root", str(tmp_path),
               "--grid", str(grid), "--grid-images", "2", "--no-progress"])
    assert rc == 0 and f"prediction grid: {grid}" in capsys.readouterr().out
    pixels = np.asarray(Image.open(grid).convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(pixels, axis=0)}
    # the ground-truth panels are drawn in the dataset palette
    first_truth = colorize(np.asarray(Image.open(tmp_path / "lbl/0.png")), PALETTE)
    assert {tuple(c) for c in np.unique(first_truth.reshape(-1, 3), axis=0)} <= colours
    assert Image.open(grid).height > Image.open(grid).width / 3  # two rows of three panels
