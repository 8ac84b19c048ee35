"""``pspnet eval`` and ``pspnet predict`` under torchrun: each image is handled by exactly one rank,
and the result equals one process's.

The two ranks are separate ``python -m pspnet.cli`` processes with the environment ``torchrun``
gives them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT on 127.0.0.1), gloo on CPU. Seven
images of different sizes: the shares are uneven (rank 0 takes images 0, 2, 4, 6; rank 1 takes 1, 3, 5).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.cli import main
from pspnet.distributed import shard
from pspnet.models import pspnet_resnet18
from pspnet.models.weights import save_weights

NAMES = ["sky", "road", "car"]
SIZES = [(40, 56), (33, 47), (48, 48), (41, 30), (36, 52), (50, 44), (29, 61)]  # 7 images: 4 + 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], world: int = 2) -> list[str]:
    """Run ``pspnet ARGS`` as ``world`` ranks of one job; every rank must exit 0. Returns their outputs."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "pspnet.cli", *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=600)[0])  # generous: startup is slow on a loaded 2-core machine
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"
    return outputs


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = pspnet_resnet18(num_classes=3, head_channels=16, aux=False).eval()
    with torch.no_grad():
        model.cls[-1].weight.normal_(0, 1.0)  # predictions that use every class
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(model, path, NAMES)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A ``folder`` dataset: ``val/images`` and ``val/labels`` (random classes and an ignored corner)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / "val" / sub).mkdir(parents=True)
    for i, (h, w) in enumerate(SIZES):
        label = rng.integers(0, 3, (h, w)).astype(np.uint8)
        label[:3, :5] = 255
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "val" / "images" / f"{i}.png")
        Image.fromarray(label).save(root / "val" / "labels" / f"{i}.png")
    return root


def _no_torchrun(monkeypatch) -> None:
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def test_shard_gives_each_item_to_exactly_one_rank():
    for n in range(12):
        for world in (1, 2, 3, 5):
            parts = [list(shard(range(n), r, world)) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.slow
def test_two_rank_eval_equals_one_process_exactly(tmp_path, weights, data, monkeypatch, capsys):
    args = ["eval", "--weights", str(weights), "--dataset", "folder", "--data-root", str(data), "--split", "val",
            "--device", "cpu", "--no-progress"]
    _no_torchrun(monkeypatch)
    assert main([*args, "--out", str(tmp_path / "one.json"), "--per-image", str(tmp_path / "one.csv")]) == 0
    capsys.readouterr()
    outs = _launch([*args, "--out", str(tmp_path / "two.json"), "--per-image", str(tmp_path / "two.csv")])
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())

    assert two["confusion_matrix"] == one["confusion_matrix"]  # integer counts: exactly equal
    assert sum(map(sum, one["confusion_matrix"])) > 0
    for key in ("mIoU", "mAcc", "allAcc", "per_class", "num_images", "bad_files"):
        assert two[key] == one[key], key
    assert one["num_images"] == 7
    assert (one["settings"]["world_size"], one["settings"]["images_per_rank"]) == (1, [7])
    assert (two["settings"]["world_size"], two["settings"]["images_per_rank"]) == (2, [4, 3])
    assert (tmp_path / "two.csv").read_text() == (tmp_path / "one.csv").read_text()  # every rank's images, in order
    # rank 0 alone prints the table and writes the files
    assert "mIoU" in outs[0] and "metrics:" in outs[0]
    assert "mIoU" not in outs[1] and "metrics:" not in outs[1] and "test settings" not in outs[1]


@pytest.mark.slow
def test_two_rank_predict_writes_each_image_once(tmp_path, weights, data, monkeypatch, capsys):
    images = data / "val" / "images"
    args = ["predict", str(images), "--weights", str(weights), "--device", "cpu", "--precision", "fp32",
            "--no-progress"]
    _no_torchrun(monkeypatch)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert "wrote 7 prediction(s)" in capsys.readouterr().out
    outs = _launch([*args, "--out", str(tmp_path / "two")])

    # rank 0 wrote images 0, 2, 4, 6 and rank 1 images 1, 3, 5: the counts come from each rank's own writes
    assert "wrote 7 prediction(s)" in outs[0] and "(2 processes: 4 + 3 images)" in outs[0]
    assert "wrote" not in outs[1] and "test settings" not in outs[1]
    written = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(written) == 7 * 3 + 1  # label, colour and overlay per image, and the legend
    for i in range(7):
        one = np.asarray(Image.open(tmp_path / "one" / f"{i}_label.png"))
        two = np.asarray(Image.open(tmp_path / "two" / f"{i}_label.png"))
        assert np.array_equal(one, two), i
