"""PSPNet's training loss: cross-entropy on the main output plus 0.4 x the auxiliary loss (Sec. 3.4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..labels import IGNORE_INDEX

__all__ = ["PSPNetLoss"]


class PSPNetLoss(nn.Module):
    """Args:
        aux_weight: weight of the auxiliary loss (0.4 in the paper).
        ignore_index: label value that contributes no loss (255).
        class_weights: optional per-class weights for the cross-entropy.
        ohem_thresh: if set, online hard example mining: keep the pixels whose loss exceeds
            ``-log(ohem_thresh)`` (at least the ``ohem_min_kept`` hardest). The loss is the class-weighted
            one, so with ``class_weights`` a rare class counts as hard at higher confidence (a pixel of
            weight 2 stays hard up to p(true) = sqrt(thresh)); without weights it is p(true) < thresh.
    """

    def __init__(self, aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX,
                 class_weights: Sequence[float] | torch.Tensor | None = None,
                 ohem_thresh: float | None = None, ohem_min_kept: int = 100_000) -> None:
        super().__init__()
        self.aux_weight, self.ignore_index = aux_weight, ignore_index
        self.ohem_thresh, self.ohem_min_kept = ohem_thresh, ohem_min_kept
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.ohem_thresh is None:
            return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        pixel_loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
                                     reduction="none").flatten()
        valid = target.flatten() != self.ignore_index
        if not valid.any():
            return pixel_loss.sum() * 0.0
        losses = pixel_loss[valid]
        # Hard: loss > -log(thresh); p(true class) < thresh for unweighted CE (weights move it, docstring).
        hard = losses > -torch.log(torch.tensor(self.ohem_thresh))
        min_kept = min(self.ohem_min_kept, losses.numel())
        if hard.sum() < min_kept:
            return losses.topk(min_kept).values.mean()
        return losses[hard].mean()

    def forward(self, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the total loss and its parts (``main``, ``aux``) as floats for logging."""
        if isinstance(outputs, (tuple, list)):
            main, aux = outputs
        else:
            main, aux = outputs, None
        main_loss = self._ce(main, target)
        parts = {"main": main_loss.detach()}
        total = main_loss
        if aux is not None and self.aux_weight:
            aux_loss = self._ce(aux, target)
            parts["aux"] = aux_loss.detach()
            total = total + self.aux_weight * aux_loss
        return total, parts
