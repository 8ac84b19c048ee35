"""One training run: the loop that ties the data order, the schedule, the checkpoints and the logs
together, single process or one rank of a ``torchrun`` job (Sec. 4.1 recipe, auxiliary loss weight 0.4).

Launch with ``torchrun --nproc_per_node N -m pspnet.cli train ...`` for DDP. A run resumed from
``last.pt`` at iteration k continues exactly as the uninterrupted run would (:mod:`.sampler`,
:mod:`.state`), and N ranks train like one process with N times the batch (:meth:`Trainer._loss_scales`).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import cpu
from .. import distributed as dist_utils
from ..config import TEST_SETTING_KEYS, Config, dump_config
from ..data.check import check_dataset, median_frequency_weights
from ..data.datasets import SegmentationDataset, build_dataset, dataset_info
from ..data.transforms import TrainTransform, normalize
from ..errors import ConfigError, DataError, TrainingError
from ..files import remove_stale_temp_files, write_text_output
from ..inference.testtime import predict_logits
from ..metrics import ConfusionMatrix
from ..models import PSPNet, PSPNetConfig, PSPNetLoss
from ..models.norm import convert_sync_batchnorm
from ..models.pretrained import PACKAGED, default_weights_path
from ..models.weights import load_into, read_state_dict, save_weights, unwrap
from .runlog import RunLogger
from .sampler import BAD_SEP, EpochSampler, SeededAugment, epoch_loader, worker_error
from .schedule import build_optimizer, freeze, poly_lr, set_train_mode
from .state import CHECKPOINT_NAME, load_checkpoint, restore_rng, rng_state, save_checkpoint, seed_everything, seed_rank

log = logging.getLogger("pspnet.train")


@dataclass
class TrainResult:
    """Where a run's outputs went, its last validation metrics and its log records."""

    output_dir: Path
    iterations: int
    best_miou: float | None
    final_metrics: dict[str, Any] | None
    weights: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)  # data.skip_bad: "path: problem" of each skipped file
    interrupted: bool = False  # stopped by SIGINT/SIGTERM after saving last.pt


def agreed_precision(precision: str, device: torch.device, dist: dist_utils.DistInfo) -> torch.dtype | None:
    """The autocast dtype every rank trains in: rank 0 resolves ``precision`` and the others take its
    answer. ``auto`` may time bf16 against fp32 (:func:`pspnet.cpu.bf16_decision`); ranks probing side by
    side, or on different CPUs, must not end up training in different precisions."""
    mine = cpu.resolve_precision(precision, device) if dist.is_main else None
    return dist_utils.gather_objects(mine)[0] if dist.enabled else mine


class Trainer:
    """One training run of a :class:`Config`, single process or one rank of a ``torchrun`` job.

    Building it sets up the process (device, DDP, seeds, output folder), then the data, the model,
    the optimisation and, with ``resume``, the checkpoint's state, in this order: the model's random
    initialisation draws from the seeded RNG, and a resumed run overwrites what was drawn.
    """

    def __init__(self, cfg: Config, *, resume: str | Path | None = None, device: str | None = None,
                 progress: bool = True, max_iters: int | None = None, max_minutes: float | None = None) -> None:
        self.cfg, self.progress = cfg, progress
        if max_minutes is not None and not max_minutes > 0:
            raise ConfigError(f"--max-minutes {max_minutes}: give a positive number of minutes "
                              f"(or leave it out for no limit)")
        self.max_minutes = max_minutes
        t = cfg.train
        if t.accumulate > t.batch_size:
            raise ConfigError(f"train.accumulate={t.accumulate} splits a batch into micro-batches but "
                              f"train.batch_size={t.batch_size} is smaller; use accumulate <= batch_size")
        self._setup_process(device)
        self._build_data()
        self._plan_iterations(max_iters)
        self._build_model()
        self._build_optimisation()
        self.iteration, self.best_miou, self.history = 0, None, []
        self._last_loss: float | None = None
        self._stop_requested = False
        if resume:
            self._restore(resume)
        self.sampler = EpochSampler(len(self.train_set), seed=t.seed, rank=self.dist.rank,
                                    world_size=self.dist.world_size, batch_size=t.batch_size)

    # ---------------------------------------------------------------- building
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
            for stale in remove_stale_temp_files(self.out, (CHECKPOINT_NAME, "final.safetensors", "best.safetensors")):
                log.warning("removed %s, left by a writer that was killed mid-write", stale)
        self.bad_files: dict[str, str] = {}  # data.skip_bad: first message per skipped file
        self.logger = RunLogger(self.out, enabled=self.dist.is_main, tensorboard=t.tensorboard)

    def _build_data(self) -> None:
        """The augmented training set and the optional validation set, labels in ``data.ignore_index``."""
        d = self.cfg.data
        self.info = dataset_info(d.dataset, self.cfg.model.num_classes, d.class_names, ignore_index=d.ignore_index,
                                 label_map=d.label_map)
        base = build_dataset(d.dataset, d.root, d.train_split, list_file=d.train_list, info=self.info,
                             check_files=not d.skip_bad)  # skip_bad: a missing file is skipped like a bad one
        if self.cfg.train.class_weights == "auto":
            self._auto_class_weights(base)
        self.train_set = SeededAugment(base, TrainTransform(d.crop_size, (d.scale_min, d.scale_max), d.rotate, d.blur,
                                                           d.flip, d.ignore_index, d.color_jitter),
                                     skip_bad=d.skip_bad)
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
                              f"{num_classes} classes")
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
        """Precision, SGD groups, the DDP wrapper, the fp16 gradient scaler and the loss."""
        t = self.cfg.train
        self.amp_dtype = agreed_precision(t.precision, self.device, self.dist)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=False) if self.dist.enabled else self.model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = PSPNetLoss(t.aux_weight, self.cfg.data.ignore_index, t.class_weights,
                                    ohem_thresh=t.ohem_thresh if t.loss == "ohem" else None,
                                    align_corners=self.model.config.align_corners).to(self.device)

    # ---------------------------------------------------------------- checkpoints
    def _state(self, rng_ranks: list[Any]) -> dict[str, Any]:
        """Everything a resumed run needs, and the class names and palette its weights will carry."""
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "iteration": self.iteration, "best_miou": self.best_miou,
                 "rng": rng_ranks[0], "config": unwrap(self.model).config.to_dict(),
                 "run_config": self.cfg.model_dump(mode="json"), "class_names": list(self.info.class_names),
                 "palette": [list(c) for c in self.info.palette], "history": self.history,
                 "world_size": self.dist.world_size, "bad_files": dict(self.bad_files)}
        if len(rng_ranks) > 1:
            state["rng_ranks"] = rng_ranks
        return state

    def save_checkpoint(self, name: str = CHECKPOINT_NAME) -> Path | None:
        """Atomically write ``last.pt``. Every rank must call this (their RNG states are gathered)."""
        rng_ranks = dist_utils.gather_objects(rng_state())
        if not self.dist.is_main:
            return None
        save_checkpoint(self.out / name, self._state(rng_ranks))
        return self.out / name

    def _restore(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        try:
            unwrap(self.model).load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(f"{path}: the checkpoint does not fit this config's model/optimiser (was it "
                                f"written with another model.* or freeze setting?): {str(e).splitlines()[0]}"
                                ) from None
        self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.best_miou = ckpt.get("best_miou")
        self.history = list(ckpt.get("history", []))
        self.bad_files.update(ckpt.get("bad_files") or {})
        train_recs = [r for r in self.history if r.get("kind") == "train"]
        self._last_loss = train_recs[-1]["loss"] if train_recs else None
        same_world = restore_rng(ckpt, rank=self.dist.rank, world_size=self.dist.world_size, seed=self.cfg.train.seed)
        if not same_world and self.dist.is_main:
            log.warning("%s was written by %s process(es), this run has %d: the data order is the same "
                        "but dropout masks will differ from an uninterrupted run", path,
                        ckpt.get("world_size", 1), self.dist.world_size)
        self.logger.rewrite(self.history)
        if self.dist.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)

    def export_weights(self, name: str) -> Path:
        path = self.out / name
        if self.dist.is_main:
            try:
                # the eval section travels with the weights: predict/eval use it unless overridden
                tested = {k: getattr(self.cfg.eval, k) for k in TEST_SETTING_KEYS}
                d = self.cfg.data
                trained_on = {"dataset": d.dataset, "split": d.train_list or d.train_split,
                              "images": len(self.train_set), "iterations": self.iteration}
                save_weights(self.model, path, self.info.class_names, self.info.palette,
                             extra={"test_settings": json.loads(json.dumps(tested)), "trained_on": trained_on})
            except OSError as e:
                raise TrainingError(f"{path}: could not write the weights ({e}); the previous file, if any, is "
                                    f"unchanged, and {self.out / CHECKPOINT_NAME} holds the run") from None
        return path

    def _note_bad(self, messages: Any) -> None:
        """Record skipped files (``data.skip_bad``): messages from a batch or a validation sample."""
        for joined in [messages] if isinstance(messages, str) else messages:
            for msg in joined.split(BAD_SEP):
                if msg:
                    key = msg.split(": ", 1)[0]
                    if key not in self.bad_files:
                        self.bad_files[key] = msg
                        log.warning("skipped bad file (data.skip_bad=true): %s", msg)

    def _bad_file_summary(self) -> list[str]:
        """Skipped files of every rank, listed once each; also written to ``bad_files.txt``."""
        merged: dict[str, str] = {}
        for part in dist_utils.gather_objects(self.bad_files):
            merged.update(part)
        lines = [merged[k] for k in sorted(merged)]
        if lines and self.dist.is_main:
            write_text_output(self.out / "bad_files.txt", "\n".join(lines) + "\n")
            log.warning("skipped %d bad file(s) (data.skip_bad=true), listed in %s:\n  %s", len(lines),
                        self.out / "bad_files.txt", "\n  ".join(lines))
        return lines

    # ---------------------------------------------------------------- loop
    def _loader(self, epoch: int, start: int) -> DataLoader:
        d, t = self.cfg.data, self.cfg.train
        return epoch_loader(self.train_set, self.sampler, epoch=epoch, start=start, batch_size=t.batch_size,
                            seed=t.seed, workers=d.workers, pin_memory=self.device.type == "cuda")

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.logger.write(record)

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
            try:
                image, label = self.val_set[i]
            except DataError as e:
                if not self.cfg.data.skip_bad:
                    raise
                self._note_bad(str(e))
                continue
            logits = predict_logits(model, image[None], base_size=ev.base_size, scales=ev.scales, flip=ev.flip,
                                    mode=ev.mode, crop_size=ev.crop_size, stride_rate=ev.stride_rate,
                                    autocast_dtype=self.amp_dtype, softmax=False, protocol=ev.protocol)
            cm.update(logits.argmax(1), label[None].to(self.device))
        cm.all_reduce()
        set_train_mode(self.ddp, self.cfg)
        m = cm.compute()
        return m.as_dict(self.info.class_names)

    def _request_stop(self, signum, frame) -> None:  # SIGINT/SIGTERM: finish the step, save, exit
        if self._stop_requested:  # a second Ctrl-C: stop now (last.pt is always complete: atomic writes)
            raise KeyboardInterrupt
        self._stop_requested = True
        log.warning("signal %d received: saving a checkpoint after this iteration", signum)

    def _out_of_time(self, started: float) -> bool:
        """``max_minutes`` have passed since this call of fit began (every rank agrees, or the others would hang)."""
        if self.max_minutes is None:
            return False
        late = time.perf_counter() - started >= self.max_minutes * 60
        return dist_utils.any_rank(late, self.device) if self.dist.enabled else late

    def _should_stop(self) -> bool:
        if self.dist.enabled:  # every rank stops after the same iteration, or the others would hang
            self._stop_requested = dist_utils.any_rank(self._stop_requested, self.device)
        return self._stop_requested

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        except Exception as e:
            mark_failed(self.out, e, self)
            raise
        finally:
            self.logger.close()

    def _fit(self) -> TrainResult:
        t = self.cfg.train
        if self.dist.is_main:
            (self.out / FAILED_MARKER).unlink(missing_ok=True)  # this folder's run is going again
            write_text_output(self.out / "config.yaml", dump_config(self.cfg))
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
                for images, labels, *skipped in self._loader(epoch, start):
                    if skipped:
                        self._note_bad(skipped[0])
                    self._step(images, labels)
                    self.iteration += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss="" if self._last_loss is None else f"{self._last_loss:.3f}",
                                        lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                    if t.val_every and self.iteration % t.val_every == 0 and self.iteration < self.stop_at:
                        last_val = self._validate_and_log()
                    if t.ckpt_every and self.iteration % t.ckpt_every == 0:
                        self.save_checkpoint()
                    if self._should_stop() or self.iteration >= self.stop_at:
                        break
                    if self._out_of_time(t0):  # a planned stop, like --max-iters at this iteration
                        self.stop_at = self.iteration
                        if self.dist.is_main:
                            log.warning("%g minutes reached at iteration %d of %d; continue with --resume %s",
                                        self.max_minutes, self.iteration, self.max_iters, self.out / CHECKPOINT_NAME)
                        break
        except DataError as e:
            raise worker_error(e) from None
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
                               self.history, bad_files=self._bad_file_summary(), interrupted=True)
        if self.iteration >= self.max_iters and (not self.history or self.history[-1].get("kind") != "val"):
            last_val = self._validate_and_log()
        weights = self.export_weights("final.safetensors")
        if self.dist.is_main:
            elapsed = time.perf_counter() - t0
            log.info("trained %d iterations in %.1f s", self.iteration - it0, elapsed)
            self._plot()
        bad = self._bad_file_summary()
        dist_utils.barrier()
        return TrainResult(self.out, self.iteration, self.best_miou, last_val, weights, self.history, bad_files=bad)

    def _plot(self) -> None:
        try:
            from ..plots import plot_training_curves
            plot_training_curves(self.history, self.out / "curves.png")
        except Exception as e:  # a plot must never fail a run
            log.warning("could not draw training curves: %s", e)

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
        if self.dist.is_main and self.iteration < self.max_iters:
            self._plot()  # an up-to-date curves.png while the run goes on
        return metrics

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


def train(cfg: Config, *, resume: str | Path | None = None, device: str | None = None, progress: bool = True,
          max_iters: int | None = None, max_minutes: float | None = None) -> TrainResult:
    """Train with a validated :class:`Config`; returns where the weights and logs went. ``max_iters``
    and ``max_minutes`` end this call early (a stage): ``last.pt`` then resumes it exactly."""
    trainer = None
    try:
        trainer = Trainer(cfg, resume=resume, device=device, progress=progress, max_iters=max_iters,
                          max_minutes=max_minutes)
        return trainer.fit()
    except Exception as e:
        if trainer is None:  # fit() marks its own failures
            mark_failed(Path(cfg.train.output_dir), e, None)
        raise
    finally:
        dist_utils.cleanup()


FAILED_MARKER = "FAILED.txt"
"""Written into a run's folder when the run stops with an error (what happened and what to do), and
removed when a run in that folder starts again: a folder with this file holds no finished run."""


def mark_failed(out: Path, error: BaseException, trainer: Trainer | None) -> None:
    """Write :data:`FAILED_MARKER` into ``out`` (rank 0, and only into a folder the run created)."""
    if dist_utils.rank_and_world()[0] != 0 or not out.is_dir():
        return
    ckpt = out / CHECKPOINT_NAME
    lines = [f"this run failed: {type(error).__name__}: {error}",
             f"at: {time.strftime('%Y-%m-%d %H:%M:%S')}"
             + (f", iteration {trainer.iteration}" if trainer is not None else ", while setting up (no iteration ran)")]
    if ckpt.is_file():
        lines.append(f"the last checkpoint is {ckpt}: fix the cause, then continue with --resume {ckpt}")
    else:
        lines.append("no checkpoint was written: fix the cause and start the run again")
    lines.append("this file is removed when a run in this folder starts again")
    try:
        write_text_output(out / FAILED_MARKER, "\n".join(lines) + "\n")
    except OSError as e:  # the marker must never hide the run's own error
        log.warning("could not write %s: %s", out / FAILED_MARKER, e)
