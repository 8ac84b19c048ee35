"""An exponential moving average of a model's weights during training (``train.ema``).

Not in the paper. After every optimisation step each floating-point entry of the state dict (weights and
BatchNorm's running statistics) moves towards the model's: ``ema += (1 - d) * (model - ema)``, with
``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first steps' random weights fade fast
(TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``). Integer entries (BatchNorm's step
counter) are copied. The average lives on the model's device and in the checkpoint, so a resumed run
averages exactly like an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["EMA_WEIGHTS", "WeightAverage"]

EMA_WEIGHTS = "final_ema.safetensors"
"""The weight average's file, written beside ``final.safetensors`` when the run ends."""


class WeightAverage:
    """The moving average of ``model``'s state dict with ``decay`` (e.g. 0.999: about the last 1000 steps)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must be between 0 and 1, got {decay!r}")
        self.decay, self.updates = float(decay), 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[Any, Any]]]:
        """(averaged floats, the model's floats, (average, model) pairs of other entries), in state-dict order."""
        mine, theirs, copied = [], [], []
        for k, v in model.state_dict().items():
            avg = self.state[k]
            if avg.is_floating_point():
                mine.append(avg)
                theirs.append(v.detach())
            else:
                copied.append((avg, v))
        return mine, theirs, copied

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average, after an optimisation step of ``model``."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine, theirs, copied = self._pairs(model)
        torch._foreach_lerp_(mine, theirs, 1.0 - d)
        for avg, v in copied:
            avg.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if saved["state"].keys() != self.state.keys():
            raise ValueError("the saved weight average is of another model")
        self.decay, self.updates = float(saved["decay"]), int(saved["updates"])
        for k, v in saved["state"].items():
            self.state[k].copy_(v)

    def copy_into(self, model: nn.Module) -> nn.Module:
        """``model`` with the averaged state loaded (the caller's model: pass a copy to keep the original)."""
        model.load_state_dict(self.state)
        return model
