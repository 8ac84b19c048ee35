"""Normalisation layer choice: BatchNorm (default), SyncBatchNorm (DDP) or GroupNorm (tiny batches)."""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal

from torch import nn

NormName = Literal["bn", "syncbn", "gn"]
NORM_NAMES = ("bn", "syncbn", "gn")


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def make_norm(name: str) -> Callable[[int], nn.Module]:
    """Return a factory ``channels -> layer`` for the named normalisation."""
    if name == "bn":
        return nn.BatchNorm2d
    if name == "syncbn":
        # Plain BatchNorm at build time; the trainer converts it for the device in use
        # (:func:`convert_sync_batchnorm`), so a model built on CPU still runs single-process.
        return nn.BatchNorm2d
    if name == "gn":
        return partial(_group_norm, groups=32)
    raise ValueError(f"norm must be one of {NORM_NAMES}, got {name!r}")


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose batch statistics are summed over all DDP ranks, for CPU (gloo) training.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this computes per-channel sum, sum of
    squares and count, all-reduces them with autograd support, and normalises with the global
    mean/variance, so N processes behave as one process with the global batch. State-dict keys are
    those of ``BatchNorm2d``.
    """

    def forward(self, x):  # type: ignore[override]
        import torch
        import torch.distributed as dist
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)),
                           xf.new_full((1,), x.numel() / c)])
        total = all_reduce(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
            self.num_batches_tracked.add_(1)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Swap every BatchNorm2d for a synchronised one: torch's on accelerators, ours on CPU."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm2d):
        out = CPUSyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device_type))
    return out
