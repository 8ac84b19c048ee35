"""``torch.compile`` of a prepared network with inductor's ``freezing``: weights become constants,
so inductor pre-packs them for oneDNN and folds layout conversions (PyTorch's
``torch._inductor.config.freezing``). The setting is patched in only while compiling and running,
never globally. Used by ``compile=True`` (:class:`CompiledPSPNet`) and by the torch int8 path.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

from ..models.pspnet import check_image_batch
from .fast import FastPSPNet

__all__ = ["CompiledPSPNet", "frozen_compile_context"]


def frozen_compile_context() -> AbstractContextManager:
    """inductor's ``freezing=True`` for the duration of a ``with`` block."""
    import torch._inductor.config as inductor_config  # importing inductor is slow; only where it is used
    return inductor_config.patch(freezing=True)


class CompiledPSPNet(nn.Module):
    """``torch.compile`` (inductor, frozen weights) of a :class:`~pspnet.inference.fast.FastPSPNet`;
    compiles on the first call for each input shape."""

    def __init__(self, inner: FastPSPNet) -> None:
        super().__init__()
        self.inner = inner
        self.compiled = torch.compile(inner, backend="inductor", dynamic=False)
        self.config, self.precision, self.backend = inner.config, inner.precision, "torch+compile"

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.inner.min_input_size)  # here: FastPSPNet skips it while compiling
        with torch.no_grad(), frozen_compile_context():
            return self.compiled(x)
