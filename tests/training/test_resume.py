"""Exact resume: N iterations, stop, ``--resume`` to 2N equals an uninterrupted 2N run.

The run crosses an epoch boundary after the resume point and keeps dropout on, so it checks the
sample order, the per-sample augmentation seeds, the optimiser momentum, the poly LR position and
the restored torch RNG (dropout masks) together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pspnet.errors import ConfigError
from pspnet.models.weights import read_state_dict
from pspnet.training.state import load_checkpoint
from pspnet.training.trainer import train

# on top of the tiny run (conftest): dropout on, so the restored RNG state matters; 4 iterations
RESUMED = ["model.dropout=0.1", "train.iters=4", "train.lr=0.01", "train.warmup_iters=1"]


def assert_same_state(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def data(tmp_path_factory, folder_dataset) -> Path:
    return folder_dataset(tmp_path_factory.mktemp("resume_data"), n=6, ignore="top_band")


@pytest.fixture(scope="module")
def full(data: Path, tmp_path_factory, tiny_run_config):
    """The uninterrupted 4-iteration run that every split run must end equal to."""
    run = train(tiny_run_config(data, tmp_path_factory.mktemp("resume_full"), *RESUMED), progress=False)
    assert run.iterations == 4
    return run


def test_resume_equals_uninterrupted_run(data: Path, tmp_path: Path, tiny_run_config, full) -> None:
    # 6 images, batch 2: 3 iterations per epoch; stop at 2 (mid-epoch 0), resume to 4 (epoch 1)

    first = train(tiny_run_config(data, tmp_path / "split", *RESUMED), progress=False, max_iters=2)
    assert first.iterations == 2
    halfway, _ = read_state_dict(first.weights)
    ckpt = load_checkpoint(tmp_path / "split" / "last.pt")
    assert ckpt["iteration"] == 2
    second = train(tiny_run_config(data, tmp_path / "split", *RESUMED), progress=False,
                   resume=tmp_path / "split" / "last.pt")
    assert second.iterations == 4

    a, _ = read_state_dict(full.weights)
    b, _ = read_state_dict(tmp_path / "split" / "final.safetensors")
    assert_same_state(a, b)
    # the optimiser state (momentum buffers) too
    oa = load_checkpoint(full.output_dir / "last.pt")["optimizer"]["state"]
    ob = load_checkpoint(tmp_path / "split" / "last.pt")["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        torch.testing.assert_close(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"], rtol=0, atol=1e-6)
    # the iterations after the resume changed the weights (the comparison is not vacuous)
    assert any(not torch.allclose(a[k], halfway[k]) for k in a if a[k].is_floating_point())
    # the log of the resumed run has each iteration exactly once, like the uninterrupted one
    its_full = [r["iter"] for r in full.history if r["kind"] == "train"]
    its_split = [r["iter"] for r in second.history if r["kind"] == "train"]
    assert its_split == its_full == [1, 2, 3, 4]
    losses_full = [r["loss"] for r in full.history if r["kind"] == "train"]
    losses_split = [r["loss"] for r in second.history if r["kind"] == "train"]
    np.testing.assert_allclose(losses_split, losses_full, rtol=1e-6)


def test_time_limited_stage_stops_with_a_checkpoint_and_resumes_exactly(data: Path, tmp_path: Path,
                                                                          tiny_run_config, full) -> None:
    """``--max-minutes``: a stage that fits a time slot. A limit shorter than one iteration stops after
    the first; resuming (no limit) ends where the uninterrupted run ends."""
    first = train(tiny_run_config(data, tmp_path / "split", *RESUMED), progress=False, max_minutes=1e-9)
    assert first.iterations == 1 and not first.interrupted  # a planned stop, not a signal
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 1
    second = train(tiny_run_config(data, tmp_path / "split", *RESUMED), progress=False,
                   resume=tmp_path / "split" / "last.pt")
    assert second.iterations == 4
    a, _ = read_state_dict(full.weights)
    b, _ = read_state_dict(second.weights)
    assert_same_state(a, b)
    with pytest.raises(ConfigError, match="--max-minutes 0"):
        train(tiny_run_config(data, tmp_path / "zero", *RESUMED), progress=False, max_minutes=0)
