"""DDP on CPU (gloo): 2 real processes x batch 2 train to the same weights as 1 process x batch 4.

The two ranks are launched as separate ``python -m pspnet.cli train`` processes with the
environment ``torchrun`` would give them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT).
BatchNorm becomes :class:`CPUSyncBatchNorm2d` under DDP; dropout is 0 (per-rank RNG) and the
precision fp32, so the only differences left are float summation orders.
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
import yaml

from pspnet import cpu
from pspnet import distributed as dist_utils
from pspnet.config import load_config
from pspnet.models.weights import read_state_dict
from pspnet.training.trainer import agreed_precision, train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_with_the_global_batch(tmp_path: Path, folder_dataset) -> None:
    data = folder_dataset(tmp_path / "data", n=8, seed=1, channel=1, ignore="random_cols")
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"num_classes": 3, "depth": 18, "head_channels": 32, "aux_channels": 16, "dropout": 0.0,
                  "norm": "bn"},
        "data": {"dataset": "folder", "root": str(data), "crop_size": [32, 32], "workers": 0},
        # 8 images, global batch 4: 2 iterations per epoch, so 3 iterations cross an epoch boundary
        # lr 0.001, not 0.01: at 0.01 this tiny model is chaotic by the third iteration (a 1e-6 change of
        # the stem's weights moved the next gradients by 2%: a max-pool or ReLU decision flips), so float
        # summation orders alone decided whether the buffers met the tolerances below (one failure in 18
        # runs, then every run once the pyramid pooling's backward rounded differently). At 0.001
        # DDP and one process meet them with a 4x margin; a 2x update or a batch of 2 misses by 400-7000x.
        "train": {"iters": 3, "batch_size": 2, "precision": "fp32", "log_every": 1, "lr": 0.001,
                  "class_weights": [1.0, 2.0, 0.5], "output_dir": str(tmp_path / "ddp")},
    }))

    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pspnet.cli", "train", "-c", str(cfg_path), "--device", "cpu", "--no-progress"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=1200)  # generous: on a loaded 2-core machine startup alone takes minutes
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out)
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"

    single = train(load_config(cfg_path, ["train.batch_size=4", f"train.output_dir={tmp_path / 'single'}"]),
                   progress=False, device="cpu")
    assert single.iterations == 3

    a, _ = read_state_dict(tmp_path / "ddp" / "final.safetensors")
    b, _ = read_state_dict(tmp_path / "single" / "final.safetensors")
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
            worst = max(worst, float((a[k] - b[k]).abs().max()))
        else:
            assert torch.equal(a[k], b[k]), k  # BN num_batches_tracked
    assert int(a["layer1.0.bn1.num_batches_tracked"]) == 3
    print(f"largest |DDP - single| over all tensors: {worst:.2e}")

    # rank 0 alone wrote the log; its loss is the global batch's loss
    recs = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    ddp_losses = [r["loss"] for r in recs if r["kind"] == "train"]
    single_losses = [r["loss"] for r in single.history if r["kind"] == "train"]
    assert len(ddp_losses) == 3
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=1e-5)


@pytest.mark.parametrize("rank", [0, 1])
def test_every_rank_trains_in_the_precision_rank_0_resolved(monkeypatch, rank):
    """``train.precision=auto`` may time bf16 against fp32 on the CPU: rank 0 decides, the other ranks
    neither probe nor resolve, they take rank 0's answer (a world of two, the collective faked)."""
    rank0_answer = torch.bfloat16
    sent: list = []

    def gather(obj):
        sent.append(obj)
        return [obj, None] if rank == 0 else [rank0_answer, obj]
    monkeypatch.setattr(dist_utils, "gather_objects", gather)
    monkeypatch.setattr(cpu, "resolve_precision", lambda precision, device: rank0_answer if rank == 0 else
                        pytest.fail("a rank other than 0 resolved the precision"))
    assert agreed_precision("auto", torch.device("cpu"), dist_utils.DistInfo(rank=rank, world_size=2)) == rank0_answer
    assert sent == [rank0_answer if rank == 0 else None]
    # one process: it resolves, no collective
    monkeypatch.setattr(cpu, "resolve_precision", lambda precision, device: rank0_answer)
    sent.clear()
    assert agreed_precision("auto", torch.device("cpu"), dist_utils.DistInfo()) == rank0_answer and sent == []
