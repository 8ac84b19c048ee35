"""CPUSyncBatchNorm2d (DDP on CPU): the statistics of the global batch, as one process computes them."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pspnet.models.norm import CPUSyncBatchNorm2d


@pytest.fixture
def two_identical_ranks(monkeypatch):
    """A 2-process group whose other rank holds the same batch: every all-reduce doubles its input,
    so the global statistics are this batch's own and one process's BatchNorm is the reference."""
    import torch.distributed.nn.functional as dist_fn
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist_fn, "all_reduce", lambda t, *a, **k: t * 2)


@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_synced_statistics_match_one_process_where_the_mean_dwarfs_the_spread(two_identical_ranks, offset):
    """At mean 300 and spread 0.1 a one-pass E[x^2] - E[x]^2 in fp32 loses the variance to rounding
    (its error is about 300^2 x 1e-7 against a variance of 0.01); the two-pass statistics keep it."""
    torch.manual_seed(0)
    x = offset + 0.1 * torch.randn(4, 3, 8, 8)
    reference, synced = nn.BatchNorm2d(3), CPUSyncBatchNorm2d(3)
    y_ref, y = reference(x), synced(x)
    # x - mean itself rounds to about 300 x 6e-8 in fp32, 2e-4 of y at spread 0.1, in both
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(synced.running_mean, reference.running_mean)
    torch.testing.assert_close(synced.running_var, reference.running_var, rtol=1e-4, atol=1e-7)
    assert int(synced.num_batches_tracked) == 1


def test_synced_statistics_pass_gradients_like_one_process(two_identical_ranks):
    torch.manual_seed(1)
    x = 5 + torch.randn(2, 4, 6, 6)
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(2, 4, 6, 6)
    (CPUSyncBatchNorm2d(4)(xs) * w).sum().backward()
    (nn.BatchNorm2d(4)(xr) * w).sum().backward()
    # the other rank's losses reach this batch only through the statistics, which the all-reduce's
    # backward brings back: the gradient is one process's on the global batch [x, x], that of x alone
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=1e-5)
