"""``train.ema``: the moving average of the weights, its warm-up, its file and its exact resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from pspnet.models.weights import read_state_dict
from pspnet.training.ema import EMA_WEIGHTS, WeightAverage
from pspnet.training.state import load_checkpoint
from pspnet.training.trainer import train

from .test_resume import RESUMED, assert_same_state


def test_average_follows_the_warmed_up_decay_and_copies_counters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(model, decay=0.5)
    w0 = model[0].weight.detach().clone()
    expected = w0
    for n in range(3):  # d = min(0.5, (1 + n) / (10 + n)): 0.1, 0.18.., 0.25
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        avg.update(model)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * model[0].weight.detach()
    torch.testing.assert_close(avg.state["0.weight"], expected, rtol=0, atol=1e-6)
    assert int(avg.state["1.num_batches_tracked"]) == 3
    assert avg.updates == 3
    copy = avg.copy_into(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))
    torch.testing.assert_close(copy[0].weight, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory, folder_dataset) -> Path:
    return folder_dataset(tmp_path_factory.mktemp("ema_data"), n=6, ignore="top_band")


def test_a_run_writes_its_average_and_resumes_it_exactly(data: Path, tmp_path: Path, tiny_run_config) -> None:
    cfg = [*RESUMED, "train.ema=0.9"]
    full = train(tiny_run_config(data, tmp_path / "full", *cfg), progress=False)
    first = train(tiny_run_config(data, tmp_path / "split", *cfg), progress=False, max_iters=2)
    assert first.iterations == 2 and (tmp_path / "split" / EMA_WEIGHTS).is_file()  # a stage writes both files
    train(tiny_run_config(data, tmp_path / "split", *cfg), progress=False, resume=tmp_path / "split" / "last.pt")
    a, meta = read_state_dict(full.output_dir / EMA_WEIGHTS)
    b, _ = read_state_dict(tmp_path / "split" / EMA_WEIGHTS)
    assert_same_state(a, b)
    saved = load_checkpoint(full.output_dir / "last.pt")["ema"]
    assert saved["updates"] == 4
    assert all(torch.equal(a[k], saved["state"][k].to(a[k].dtype)) for k in a)  # the file is the average
    final, final_meta = read_state_dict(full.weights)
    assert any(not torch.allclose(a[k], final[k]) for k in a if a[k].is_floating_point())
    assert meta["test_settings"] == final_meta["test_settings"]  # eval --weights reads it like final


def test_setting_ema_on_resume_starts_the_average_there(data: Path, tmp_path: Path, tiny_run_config,
                                                          caplog) -> None:
    train(tiny_run_config(data, tmp_path, *RESUMED), progress=False, max_iters=2)
    with caplog.at_level(logging.WARNING, logger="pspnet.train"):
        train(tiny_run_config(data, tmp_path, *RESUMED, "train.ema=0.9"), progress=False,
              resume=tmp_path / "last.pt")
    assert "holds no weight average" in caplog.text
    assert load_checkpoint(tmp_path / "last.pt")["ema"]["updates"] == 2
