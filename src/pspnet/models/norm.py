"""Normalisation layers: BatchNorm (default), BatchNorm synchronised under DDP, or GroupNorm (tiny batches).

A model is always built with the plain layers of :data:`NORM_LAYERS`; synchronising BatchNorm is a
property of a distributed run, not of the model, so the trainer swaps every BatchNorm for a
synchronised one when it runs under DDP (:func:`convert_sync_batchnorm`). The name ``syncbn``
says that intent in a config (the original release's ``sync_bn``); it builds what ``bn`` builds,
and the state-dict keys are the same.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (halved until they divide ``channels``)."""
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "syncbn": nn.BatchNorm2d,  # built plain; convert_sync_batchnorm synchronises it under DDP (as "bn")
    "gn": _group_norm,
}
NORM_NAMES = tuple(NORM_LAYERS)


def norm_layer(name: str) -> Callable[[int], nn.Module]:
    """The build-time layer ``channels -> module`` of a norm name (:data:`NORM_LAYERS`)."""
    if name not in NORM_LAYERS:
        raise ValueError(f"norm must be one of {list(NORM_NAMES)}, got {name!r}")
    return NORM_LAYERS[name]


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
        # Two passes, as one process's BatchNorm computes them: the global mean first, then the global
        # sum of squared deviations from it. E[x^2] - E[x]^2 in one pass loses digits where the mean is
        # large against the spread, and N ranks would then train to other weights than one process.
        total = all_reduce(torch.cat([xf.sum((0, 2, 3)), xf.new_full((1,), x.numel() / c)]))
        n = total[-1]
        mean = total[:c] / n
        centred = xf - mean.view(1, c, 1, 1)
        var = all_reduce((centred * centred).sum((0, 2, 3))) / n
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
            self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
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
