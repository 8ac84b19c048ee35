"""One optimisation step of a training run: the poly learning rate, micro-batches (``train.accumulate``)
under autocast, the loss scaled so that N ranks and k micro-batches train like one batch of N x k
(:meth:`Stepper._loss_scales`), the gradient scaler, and the logged loss averaged over ranks.

:class:`Stepper` is the part of :class:`~pspnet.training.trainer.Trainer` that does it
(``bench/train_step.py`` times exactly this).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext

import torch

from .. import distributed as dist_utils
from ..config import Config
from ..data.transforms import normalize
from ..errors import TrainingError
from .ema import WeightAverage
from .schedule import poly_lr
from .state import CHECKPOINT_NAME

log = logging.getLogger("pspnet.train")

__all__ = ["Stepper"]


class Stepper:
    """Runs one step of a :class:`~pspnet.training.trainer.Trainer` (its model, optimiser, scaler,
    criterion and process group are built by :class:`~pspnet.training.build.RunBuilder`)."""

    cfg: Config
    iteration: int
    ema: WeightAverage | None

    def _label_weight(self, labels: torch.Tensor) -> torch.Tensor:
        """What the cross-entropy mean divides by: the valid pixels, or the sum of their class weights."""
        valid = labels != self.cfg.data.ignore_index
        cw = self.criterion.class_weights
        if cw is None:
            return valid.sum().double()
        return torch.where(valid, cw.double()[torch.where(valid, labels, 0)], 0.0).sum()

    def _loss_scales(self, label_chunks: list[torch.Tensor]) -> list[float]:
        """Per-micro-batch factors that turn each micro-batch's mean loss into its share of the loss
        averaged over the whole global batch (all micro-batches of all ranks).

        Each micro-batch's cross-entropy is a mean over its own valid pixels; ignored pixels (padding,
        rotation borders, void) make their counts differ, so a plain average of the means would weight
        pixels unequally and N ranks would not train like one process with N times the batch (nor
        accumulation like one big batch). The factor ``w_i * world / W`` (``W``: global weight, summed
        over ranks) fixes this; DDP's gradient averaging divides the ``world`` back out. With one
        process and no accumulation the factor is exactly 1. OHEM keeps per-micro-batch means
        (its hard-pixel selection is per micro-batch).
        """
        n = len(label_chunks)
        if self.cfg.train.loss == "ohem":
            return [1.0 / n] * n
        weights = torch.stack([self._label_weight(y) for y in label_chunks])
        total = float(dist_utils.all_reduce_sum(weights.sum()).item())
        local = weights.tolist()
        if total <= 0:  # every pixel of the global batch is ignored: nothing to learn from this step
            return [0.0] * n
        return [w * self.dist.world_size / total for w in local]

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        t = self.cfg.train
        lr = poly_lr(t.lr, self.iteration, self.max_iters, t.power, t.warmup_iters)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        x = normalize(images)
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        chunks = list(zip(x.chunk(t.accumulate), labels.chunk(t.accumulate)))
        scales = self._loss_scales([yc for _, yc in chunks])
        self.optimizer.zero_grad(set_to_none=True)
        total, parts_sum = 0.0, {}
        for i, ((xc, yc), scale) in enumerate(zip(chunks, scales)):
            sync = nullcontext() if (i == len(chunks) - 1 or not self.dist.enabled) else self.ddp.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self.ddp(xc, upsample=False)  # the loss upsamples (PSPNetLoss, a CPU kernel)
                if scale == 0.0:  # no valid pixel here: zero gradients, but keep DDP's reducer in step
                    outs = out if isinstance(out, (tuple, list)) else (out,)
                    loss, parts = sum(o.float().sum() for o in outs) * 0.0, {}
                else:
                    loss, parts = self.criterion(out, yc)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"loss is {loss.item()} at iteration {self.iteration}: training stopped. The last good "
                            f"checkpoint is {self.out / CHECKPOINT_NAME}; lower train.lr, use "
                            f"train.precision=fp32, or check the data for NaN/inf values")
                self.scaler.scale(loss * scale if scale != 1.0 else loss).backward()
            share = scale / self.dist.world_size  # this micro-batch's share of the global mean
            total += loss.item() * share
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * share
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        if self.iteration % t.log_every == 0 or self.iteration + 1 == self.stop_at:
            keys = sorted(parts_sum)
            vals = dist_utils.all_reduce_sum(torch.tensor([total] + [parts_sum[k] for k in keys],
                                                          dtype=torch.float64, device=self.device)).tolist()
            self._last_loss = vals[0]
            self._log({"kind": "train", "iter": self.iteration + 1, "epoch": self.iteration // self.iters_per_epoch,
                       "loss": vals[0], **{f"loss_{k}": v for k, v in zip(keys, vals[1:])}, "lr": lr,
                       "time": time.time()})
            if self.dist.is_main and not self.progress:  # no bar to show it: the loss goes to the log (stderr)
                log.info("iter %d/%d: loss %.4f, lr %.2e", self.iteration + 1, self.stop_at, vals[0], lr)
