"""Training PSPNet the paper's way (Sec. 4.1), from one CPU to many GPUs/machines with DDP.

Recipe: SGD (momentum 0.9, weight decay 1e-4), base LR 0.01 with the new layers (PPM, classifier,
aux head) at 10x, "poly" decay ``(1 - it/max_it)^0.9`` per iteration, auxiliary loss weight 0.4,
ignore label 255. Launch with ``torchrun --nproc_per_node N -m pspnet.cli train ...`` for DDP.

Determinism and exact resume: the sample order of each epoch and the augmentation of each
sample are functions of (seed, epoch, position), so a run resumed from a checkpoint at iteration
k continues exactly as the uninterrupted run would, and N DDP ranks see together the same global
batches as one process with N times the batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Config, dump_config
from ..data.datasets import build_dataset, dataset_info
from ..data.transforms import TrainTransform, normalize, to_tensors
from ..errors import DataError, TrainingError
from ..metrics import ConfusionMatrix
from ..models import PSPNet, PSPNetConfig, PSPNetLoss
from ..models.norm import convert_sync_batchnorm
from ..models.weights import atomic_write, load_into, read_state_dict, save_weights, unwrap
from . import distributed as dist_utils
from .inference import predict_logits

log = logging.getLogger("pspnet.train")

CHECKPOINT_NAME = "last.pt"


# --------------------------------------------------------------------------- data order & seeding
class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for this rank: a permutation seeded by (seed, epoch), split
    across ranks as ``perm[rank::world]``, starting at ``start`` samples into the rank's share."""

    def __init__(self, length: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.length, self.seed, self.rank, self.world, self.shuffle = length, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return math.ceil(self.length / self.world)

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        total = self.per_rank() * self.world
        perm = torch.cat([perm, perm[: total - self.length]]) if total > self.length else perm
        positions = range(self.rank, total, self.world)
        for j, pos in enumerate(positions):
            if j < self.start:
                continue
            # the seed depends on the global position, so DDP and single-process runs agree
            yield int(perm[pos]), (self.seed * 7_919 + self.epoch * 1_000_003 + pos) % (2 ** 31)


class SeededAugment(Dataset):
    """Applies the training augmentation with a per-sample seed from :class:`EpochSampler`."""

    def __init__(self, base, transform: TrainTransform, skip_bad: bool = False) -> None:
        self.base, self.transform, self.skip_bad = base, transform, skip_bad

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        for attempt in range(len(self.base)):
            try:
                image, label = self.base.load((index + attempt) % len(self.base))
                break
            except DataError as e:
                if not self.skip_bad:
                    raise
                log.warning("skipping bad sample: %s", e)
        else:
            raise DataError("every sample of the dataset failed to load")
        self.transform.seed(seed)
        return to_tensors(*self.transform(image, label))


# --------------------------------------------------------------------------- optimisation
def poly_lr(base_lr: float, it: int, max_it: int, power: float, warmup: int = 0) -> float:
    """Poly schedule with optional linear warm-up."""
    if warmup and it < warmup:
        return base_lr * (it + 1) / warmup
    return base_lr * (1 - min(it, max_it - 1) / max_it) ** power


def build_optimizer(model: PSPNet, cfg: Config) -> torch.optim.SGD:
    t = cfg.train
    groups = []
    backbone = [p for p in model.backbone_parameters() if p.requires_grad]
    head = [p for p in model.head_parameters() if p.requires_grad]
    if backbone:
        groups.append({"params": backbone, "lr": t.lr, "lr_mult": 1.0, "name": "backbone"})
    groups.append({"params": head, "lr": t.lr * t.head_lr_mult, "lr_mult": t.head_lr_mult, "name": "head"})
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def freeze(model: PSPNet, backbone: bool, bn: bool) -> None:
    """Transfer learning: freeze the backbone's weights and/or every BatchNorm's statistics."""
    if backbone:
        for p in model.backbone_parameters():
            p.requires_grad_(False)
    if bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)


def set_train_mode(model: nn.Module, cfg: Config) -> None:
    model.train()
    if cfg.train.freeze_bn or cfg.train.freeze_backbone:
        inner = unwrap(model)
        frozen_bn = [m for m in inner.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] \
            if cfg.train.freeze_bn else \
            [m for layer in (inner.layer0, inner.layer1, inner.layer2, inner.layer3, inner.layer4)
             for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in frozen_bn:
            m.eval()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: fp16 on CUDA, bf16 on CPUs with native bf16 support, else None (fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --------------------------------------------------------------------------- state
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``)."""
    from ..models.weights import _load_pickle
    ckpt = _load_pickle(Path(path))
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
        raise TrainingError(f"{path}: not a pspnet training checkpoint (expected keys 'model', 'iteration')")
    return ckpt


@dataclass
class TrainResult:
    output_dir: Path
    iterations: int
    best_miou: float | None
    final_metrics: dict[str, Any] | None
    weights: Path
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- main loop
class Trainer:
    def __init__(self, cfg: Config, *, resume: str | Path | None = None, device: str | None = None,
                 progress: bool = True, max_iters: int | None = None) -> None:
        self.cfg, self.progress = cfg, progress
        self.dist = dist_utils.setup(device)
        self.device = self.dist.device
        t, d = cfg.train, cfg.data
        if t.threads:
            torch.set_num_threads(t.threads)
        seed_everything(t.seed, t.deterministic)
        self.out = Path(t.output_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

        self.info = dataset_info(d.dataset, cfg.model.num_classes, d.class_names)
        if d.class_names:
            self.info.class_names = tuple(d.class_names)
        base = build_dataset(d.dataset, d.root, d.train_split, list_file=d.train_list, info=self.info)
        self.train_set = SeededAugment(base, TrainTransform(d.crop_size, (d.scale_min, d.scale_max), d.rotate, d.blur,
                                                           d.flip, d.ignore_index), skip_bad=d.skip_bad)
        self.val_set = None
        if d.val_split or d.val_list:
            try:
                self.val_set = build_dataset(d.dataset, d.root, d.val_split, list_file=d.val_list, info=self.info)
            except DataError as e:
                if t.val_every:
                    raise
                log.warning("no validation set: %s", e)

        per_step = t.batch_size * self.dist.world_size
        if len(base) < per_step:
            raise DataError(f"{d.root}: {len(base)} training images but one step needs {per_step} "
                            f"(train.batch_size x processes); lower train.batch_size")
        self.iters_per_epoch = len(base) // per_step  # drop_last: every step has a full batch
        if t.iters:
            self.max_iters = t.iters
        elif t.epochs:
            self.max_iters = t.epochs * self.iters_per_epoch
        else:
            raise TrainingError("set train.iters or train.epochs")
        self.stop_at = min(self.max_iters, max_iters) if max_iters else self.max_iters

        num_classes = cfg.model.num_classes or self.info.num_classes
        if num_classes != self.info.num_classes:
            raise TrainingError(f"model.num_classes={num_classes} but dataset {d.dataset} has "
                                f"{self.info.num_classes} classes")
        model = PSPNet(PSPNetConfig(**cfg.model_kwargs(num_classes)))
        if t.pretrained:
            state, _ = read_state_dict(t.pretrained)
            report = load_into(model, state, source=t.pretrained, strict=False)
            if self.dist.is_main:
                log.info("loaded %d tensors from %s; %d new", len(report["loaded"]), t.pretrained, len(report["new"]))
        freeze(model, t.freeze_backbone, t.freeze_bn)
        if self.dist.enabled and cfg.model.norm in ("bn", "syncbn"):
            model = convert_sync_batchnorm(model, self.device.type)
        model.to(self.device)
        self.amp_dtype = resolve_precision(t.precision, self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = build_optimizer(model, cfg)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=False) if self.dist.enabled else model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = PSPNetLoss(t.aux_weight, d.ignore_index, t.class_weights,
                                    ohem_thresh=t.ohem_thresh if t.loss == "ohem" else None).to(self.device)

        self.iteration, self.best_miou, self.history = 0, None, []
        if resume:
            self._restore(resume)
        self.sampler = EpochSampler(len(base), seed=t.seed, rank=self.dist.rank, world_size=self.dist.world_size)
        self._stop_requested = False

    # ---------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "iteration": self.iteration, "best_miou": self.best_miou,
                "rng": rng_state(), "config": unwrap(self.model).config.to_dict(),
                "run_config": self.cfg.model_dump(mode="json"), "class_names": list(self.info.class_names),
                "palette": [list(c) for c in self.info.palette], "history": self.history}

    def save_checkpoint(self, name: str = CHECKPOINT_NAME) -> Path | None:
        if not self.dist.is_main:
            return None
        path = self.out / name
        state = self._state()
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        return path

    def _restore(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.best_miou = ckpt.get("best_miou")
        self.history = list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"])
        if self.dist.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)

    def export_weights(self, name: str) -> Path:
        path = self.out / name
        if self.dist.is_main:
            save_weights(self.model, path, self.info.class_names, self.info.palette)
        return path

    # ---------------------------------------------------------------- loop
    def _loader(self, epoch: int, start: int) -> DataLoader:
        d = self.cfg.data
        self.sampler.set_epoch(epoch, start * self.cfg.train.batch_size)
        return DataLoader(self.train_set, batch_size=self.cfg.train.batch_size, sampler=self.sampler,
                          num_workers=d.workers, drop_last=True, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if d.workers else None)

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.dist.is_main:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def validate(self) -> dict[str, Any] | None:
        if self.val_set is None:
            return None
        model = unwrap(self.model)
        model.eval()
        cm = ConfusionMatrix(self.info.num_classes, self.cfg.data.ignore_index, self.device)
        n = len(self.val_set)
        if self.cfg.train.val_max_images:
            n = min(n, self.cfg.train.val_max_images)
        ev = self.cfg.eval
        for i in range(self.dist.rank, n, self.dist.world_size):
            image, label = self.val_set[i]
            logits = predict_logits(model, image[None], base_size=ev.base_size, scales=ev.scales, flip=ev.flip,
                                    autocast_dtype=self.amp_dtype, softmax=False)
            cm.update(logits.argmax(1), label[None].to(self.device))
        cm.all_reduce()
        set_train_mode(self.ddp, self.cfg)
        m = cm.compute()
        return m.as_dict(self.info.class_names)

    def _request_stop(self, signum, frame) -> None:  # SIGINT/SIGTERM: finish the step, save, exit
        self._stop_requested = True
        log.warning("signal %d received: saving a checkpoint after this iteration", signum)

    def fit(self) -> TrainResult:
        t = self.cfg.train
        if self.dist.is_main:
            (self.out / "config.yaml").write_text(dump_config(self.cfg), encoding="utf-8")
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not in the main thread
                pass
        bar = None
        if self.dist.is_main and self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.stop_at, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True)
        set_train_mode(self.ddp, self.cfg)
        last_val: dict[str, Any] | None = None
        t0, it0 = time.perf_counter(), self.iteration
        try:
            while self.iteration < self.stop_at and not self._stop_requested:
                epoch, start = divmod(self.iteration, self.iters_per_epoch)
                for images, labels in self._loader(epoch, start):
                    self._step(images, labels)
                    self.iteration += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{self.history[-1]['loss']:.3f}" if self.history else "",
                                        lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                    if t.val_every and self.iteration % t.val_every == 0 and self.iteration < self.stop_at:
                        last_val = self._validate_and_log()
                    if t.ckpt_every and self.iteration % t.ckpt_every == 0:
                        self.save_checkpoint()
                    if self.iteration >= self.stop_at or self._stop_requested:
                        break
        finally:
            if bar is not None:
                bar.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        self.save_checkpoint()
        if self._stop_requested:
            if self.dist.is_main:
                log.warning("stopped at iteration %d; resume with --resume %s", self.iteration,
                            self.out / CHECKPOINT_NAME)
            return TrainResult(self.out, self.iteration, self.best_miou, None, self.out / CHECKPOINT_NAME,
                               self.history)
        if self.iteration >= self.max_iters and (not self.history or self.history[-1].get("kind") != "val"):
            last_val = self._validate_and_log()
        weights = self.export_weights("final.safetensors")
        if self.dist.is_main:
            elapsed = time.perf_counter() - t0
            log.info("trained %d iterations in %.1f s", self.iteration - it0, elapsed)
            try:
                from .plots import plot_training_curves
                plot_training_curves(self.history, self.out / "curves.png")
            except Exception as e:  # a plot must never fail a finished run
                log.warning("could not draw training curves: %s", e)
        dist_utils.barrier()
        return TrainResult(self.out, self.iteration, self.best_miou, last_val, weights, self.history)

    def _validate_and_log(self) -> dict[str, Any] | None:
        metrics = self.validate()
        if metrics is None:
            return None
        rec = {"kind": "val", "iter": self.iteration, "mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"],
               "allAcc": metrics["allAcc"], "per_class_iou": [c["iou"] for c in metrics["per_class"]]}
        self._log(rec)
        if self.dist.is_main:
            log.info("iter %d: val mIoU %.4f mAcc %.4f allAcc %.4f", self.iteration, metrics["mIoU"],
                     metrics["mAcc"], metrics["allAcc"])
        if self.best_miou is None or metrics["mIoU"] > self.best_miou:
            self.best_miou = metrics["mIoU"]
            self.export_weights("best.safetensors")
        return metrics

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
        self.optimizer.zero_grad(set_to_none=True)
        total, parts_sum = 0.0, {}
        for i, (xc, yc) in enumerate(chunks):
            sync = nullcontext() if (i == len(chunks) - 1 or not self.dist.enabled) else self.ddp.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self.ddp(xc)
                loss, parts = self.criterion(out, yc)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss is {loss.item()} at iteration {self.iteration}: training stopped. The last good "
                        f"checkpoint is {self.out / CHECKPOINT_NAME}; lower train.lr, use train.precision=fp32, "
                        f"or check the data for NaN/inf values")
                self.scaler.scale(loss / len(chunks)).backward()
            total += loss.item() / len(chunks)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / len(chunks)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.iteration % t.log_every == 0 or self.iteration + 1 == self.stop_at:
            loss_t = dist_utils.all_reduce_mean(torch.tensor([total], device=self.device))
            self._log({"kind": "train", "iter": self.iteration + 1, "epoch": self.iteration // self.iters_per_epoch,
                       "loss": float(loss_t[0]), **{f"loss_{k}": v for k, v in parts_sum.items()}, "lr": lr,
                       "time": time.time()})


def train(cfg: Config, *, resume: str | Path | None = None, device: str | None = None, progress: bool = True,
          max_iters: int | None = None) -> TrainResult:
    """Train with a validated :class:`Config`; returns where the weights and logs went."""
    trainer = Trainer(cfg, resume=resume, device=device, progress=progress, max_iters=max_iters)
    try:
        return trainer.fit()
    finally:
        dist_utils.cleanup()
