"""Building a training run, in order: the process (device, DDP group, seeds, output folder, logs), the
data, the run's length, the model and the optimisation (precision, SGD groups, DDP wrapper, loss).

The order matters: the model's random initialisation draws from the RNG seeded first, and a resumed
run (:meth:`pspnet.training.trainer.Trainer._restore`) overwrites what was drawn. :class:`RunBuilder`
is the part of :class:`~pspnet.training.trainer.Trainer` that does it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .. import cpu
from .. import distributed as dist_utils
from ..config import Config
from ..data.check import check_dataset, median_frequency_weights
from ..data.datasets import SegmentationDataset, build_dataset, dataset_info
from ..data.transforms import TrainTransform
from ..errors import ConfigError, DataError, TrainingError
from ..files import remove_stale_temp_files
from ..models import PSPNet, PSPNetConfig, PSPNetLoss
from ..models.norm import convert_sync_batchnorm
from ..models.pretrained import PACKAGED, default_weights_path
from ..models.weights import load_into, read_state_dict
from .ema import EMA_WEIGHTS, WeightAverage
from .runlog import RunLogger
from .sampler import SeededAugment
from .schedule import build_optimizer, freeze
from .state import CHECKPOINT_NAME, seed_everything, seed_rank

__all__ = ["RunBuilder", "agreed_precision"]

log = logging.getLogger("pspnet.train")


def agreed_precision(precision: str, device: torch.device, dist: dist_utils.DistInfo) -> torch.dtype | None:
    """The autocast dtype every rank trains in: rank 0 resolves ``precision`` and the others take its
    answer. ``auto`` may time bf16 against fp32 (:func:`pspnet.cpu.bf16_decision`); ranks probing side by
    side, or on different CPUs, must not end up training in different precisions."""
    mine = cpu.resolve_precision(precision, device) if dist.is_main else None
    return dist_utils.gather_objects(mine)[0] if dist.enabled else mine


class RunBuilder:
    """Sets up a :class:`~pspnet.training.trainer.Trainer`'s process, data, model and optimisation from
    ``self.cfg`` (and ``self.progress``); each step reads what the steps before it set."""

    cfg: Config
    progress: bool

    def _setup_process(self, device: str | None) -> None:
        """Device and DDP group, threads, seeds, the output folder and the logs."""
        t = self.cfg.train
        self.dist = dist_utils.setup(device)
        self.device = self.dist.device
        if t.threads:
            torch.set_num_threads(t.threads)
        if self.device.type == "cpu":
            cpu.keep_freed_memory()
        seed_everything(t.seed, t.deterministic)
        self.out = Path(t.output_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            written = (CHECKPOINT_NAME, "final.safetensors", "best.safetensors", EMA_WEIGHTS)
            for stale in remove_stale_temp_files(self.out, written):
                log.warning("removed %s, left by a writer that was killed mid-write", stale)
        self.bad_files: dict[str, str] = {}  # data.skip_bad: first message per skipped file
        self.logger = RunLogger(self.out, enabled=self.dist.is_main, tensorboard=t.tensorboard)

    def _build_data(self) -> None:
        """The augmented training set and the optional validation set, labels in ``data.ignore_index``."""
        d = self.cfg.data
        self.info = dataset_info(d.dataset, self.cfg.model.num_classes, d.class_names, ignore_index=d.ignore_index,
                                 label_map=d.label_map, label_colors=d.label_colors)
        base = build_dataset(d.dataset, d.root, d.train_split, list_file=d.train_list, info=self.info,
                             check_files=not d.skip_bad)  # skip_bad: a missing file is skipped like a bad one
        if self.cfg.train.class_weights == "auto":
            self._auto_class_weights(base)
        transform = TrainTransform(d.crop_size, (d.scale_min, d.scale_max), d.rotate, d.blur, d.flip, d.ignore_index,
                                   d.color_jitter, focus_classes=self._focus_class_ids(), focus_prob=d.focus_prob)
        self.train_set = SeededAugment(base, transform, skip_bad=d.skip_bad)
        self.val_set = None
        if d.val_split or d.val_list:
            try:
                self.val_set = build_dataset(d.dataset, d.root, d.val_split, list_file=d.val_list, info=self.info,
                                             check_files=not d.skip_bad)
            except DataError as e:
                if self.cfg.train.val_every:
                    raise
                if self.dist.is_main:
                    log.warning("no validation set: %s", e)

    def _focus_class_ids(self) -> list[int]:
        """``data.focus_classes`` as class ids: names are the dataset's class names."""
        names = list(self.info.class_names)
        ids = []
        for c in self.cfg.data.focus_classes or []:
            c = int(c) if isinstance(c, str) and c.isdigit() else c  # "2" from a command-line list
            if isinstance(c, str) and c in names:
                ids.append(names.index(c))
            elif isinstance(c, int) and 0 <= c < len(names):
                ids.append(c)
            else:
                raise ConfigError(f"data.focus_classes: {c!r} is not a class of {self.cfg.data.dataset}; "
                                  f"give ids 0-{len(names) - 1} or names: {', '.join(names)}")
        return ids

    def _auto_class_weights(self, base: SegmentationDataset) -> None:
        """``train.class_weights: auto``: :func:`~pspnet.data.check.median_frequency_weights` of the training
        labels' class pixels (each rank counts its share of the files), which replace ``auto`` in this run's
        config: config.yaml and the checkpoints record the weights used."""
        mine = dist_utils.shard(base.pairs, self.dist.rank, self.dist.world_size)
        pixels = np.zeros(self.info.num_classes, np.int64)
        if mine:
            pixels = check_dataset(SegmentationDataset(mine, self.info), workers=self.cfg.data.workers,
                                   progress=self.progress and self.dist.is_main).class_pixels
        pixels = dist_utils.all_reduce_sum(torch.from_numpy(pixels).to(self.device)).cpu().numpy()
        weights = median_frequency_weights(pixels)
        self.cfg = self.cfg.model_copy(deep=True)  # the caller's config keeps its "auto"
        self.cfg.train.class_weights = weights
        if self.dist.is_main:
            log.info("train.class_weights=auto: sqrt(median frequency / frequency) of %d training labels: %s",
                     len(base), ", ".join(f"{n} {w:g}" for n, w in zip(self.info.class_names, weights)))

    def _plan_iterations(self, max_iters: int | None) -> None:
        """Iterations per epoch (full global batches only), the run's length and where this call stops."""
        d, t = self.cfg.data, self.cfg.train
        per_step = t.batch_size * self.dist.world_size
        n = len(self.train_set)
        if n < per_step:
            raise DataError(f"{d.root}: {n} training images but one step needs {per_step} "
                            f"(train.batch_size x processes); lower train.batch_size")
        self.iters_per_epoch = n // per_step  # drop_last: every step has a full batch
        if t.iters:
            self.max_iters = t.iters
        elif t.epochs:
            self.max_iters = t.epochs * self.iters_per_epoch
        else:
            raise ConfigError("the config sets neither train.iters nor train.epochs; set one, e.g. train.iters=1000")
        self.stop_at = min(self.max_iters, max_iters) if max_iters else self.max_iters

    def _build_model(self) -> None:
        """The PSPNet for the dataset's classes, from ``train.pretrained`` when set, frozen as configured."""
        cfg, t = self.cfg, self.cfg.train
        num_classes = cfg.model.num_classes or self.info.num_classes
        if num_classes != self.info.num_classes:
            raise TrainingError(f"model.num_classes={num_classes} but dataset {cfg.data.dataset} has "
                                f"{self.info.num_classes} classes")
        if t.class_weights is not None and len(t.class_weights) != num_classes:
            raise ConfigError(f"train.class_weights has {len(t.class_weights)} values but the model has "
                              f"{num_classes} classes (a base config's weights?): set train.class_weights: auto "
                              f"(computed from the training labels) or null (unweighted), or give {num_classes} values")
        model = PSPNet(PSPNetConfig(**cfg.model_kwargs(num_classes)))
        if t.pretrained:
            source = str(default_weights_path()) if t.pretrained == PACKAGED else t.pretrained
            state, _ = read_state_dict(source)
            # fine-tuning for this config's classes: a classifier of another class count starts anew
            report = load_into(model, state, source=source, strict=False, reinit_classifier=True)
            if self.dist.is_main:
                log.info("loaded %d tensors from %s; %d new", len(report["loaded"]), source, len(report["new"]))
        if self.dist.enabled and cfg.model.norm in ("bn", "syncbn"):
            model = convert_sync_batchnorm(model, self.device.type)
        freeze(model, backbone=t.freeze_backbone, bn=t.freeze_bn)  # after the conversion, which makes new parameters
        model.to(self.device)
        if self.dist.enabled:
            seed_rank(t.seed, self.dist.rank)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def _build_optimisation(self) -> None:
        """Precision, SGD groups, the DDP wrapper, the fp16 gradient scaler, the loss and the weight average."""
        t = self.cfg.train
        self.amp_dtype = agreed_precision(t.precision, self.device, self.dist)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.ema = WeightAverage(self.model, t.ema) if t.ema else None
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=False) if self.dist.enabled else self.model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = PSPNetLoss(t.aux_weight, self.cfg.data.ignore_index, t.class_weights,
                                    ohem_thresh=t.ohem_thresh if t.loss == "ohem" else None,
                                    align_corners=self.model.config.align_corners).to(self.device)
