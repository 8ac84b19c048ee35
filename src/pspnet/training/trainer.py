"""One training run: the loop that ties the data order, the schedule, the checkpoints and the logs
together, single process or one rank of a ``torchrun`` job (Sec. 4.1 recipe, auxiliary loss weight 0.4).

Launch with ``torchrun --nproc_per_node N -m pspnet.cli train ...`` for DDP. A run resumed from
``last.pt`` at iteration k continues exactly as the uninterrupted run would (:mod:`.sampler`,
:mod:`.state`), and N ranks train like one process with N times the batch (:meth:`Trainer._loss_scales`).

Building the run is :class:`~pspnet.training.build.RunBuilder`'s part, one optimisation step
:class:`~pspnet.training.step.Stepper`'s; here are the checkpoints, the weights, validation and the loop.
"""

from __future__ import annotations

import copy
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from .. import distributed as dist_utils
from ..config import TEST_SETTING_KEYS, Config, dump_config
from ..errors import ConfigError, DataError, TrainingError
from ..files import write_text_output
from ..inference.testtime import predict_logits
from ..metrics import ConfusionMatrix
from ..models.weights import save_weights, unwrap
from .build import RunBuilder, agreed_precision
from .ema import EMA_WEIGHTS, WeightAverage
from .sampler import BAD_SEP, EpochSampler, epoch_loader, worker_error
from .schedule import set_train_mode
from .state import CHECKPOINT_NAME, load_checkpoint, restore_rng, rng_state, save_checkpoint
from .step import Stepper

__all__ = ["Trainer", "TrainResult", "train", "agreed_precision"]  # agreed_precision: re-exported from .build

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


class Trainer(RunBuilder, Stepper):
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
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
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
        if self.ema is not None:
            if "ema" in ckpt:
                self.ema.load_state_dict(ckpt["ema"])
            else:  # train.ema set on resuming a run that had none: the average starts from here
                self.ema = WeightAverage(self.model, self.ema.decay)
                if self.dist.is_main:
                    log.warning("%s holds no weight average (train.ema was not set): the average starts from "
                                "its weights at iteration %d", path, int(ckpt["iteration"]))
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

    def export_weights(self, name: str, model: nn.Module | None = None) -> Path:
        """Write ``model`` (default: the trained model) as ``name`` in the run's folder, with the run's test
        settings and data reading."""
        path = self.out / name
        if self.dist.is_main:
            try:
                # the eval section travels with the weights: predict/eval use it unless overridden
                tested = {k: getattr(self.cfg.eval, k) for k in TEST_SETTING_KEYS}
                d = self.cfg.data
                trained_on = {"dataset": d.dataset, "split": d.train_list or d.train_split,
                              "images": len(self.train_set), "iterations": self.iteration,
                              # what reading the data needs: eval --weights W --data-root DIR without a config
                              "ignore_index": d.ignore_index,
                              "label_map": None if d.label_map is None else [[k, v] for k, v in d.label_map.items()],
                              "label_colors": None if d.label_colors is None else [list(c) for c in d.label_colors]}
                save_weights(self.model if model is None else model, path, self.info.class_names, self.info.palette,
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
        if self.ema is not None and self.dist.is_main:
            self.export_weights(EMA_WEIGHTS, self.ema.copy_into(copy.deepcopy(unwrap(self.model))))
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


def train(cfg: Config, *, resume: str | Path | None = None, device: str | None = None, progress: bool = True,
          max_iters: int | None = None, max_minutes: float | None = None) -> TrainResult:
    """Train with a validated :class:`Config`; returns where the weights and logs went. ``max_iters``
    and ``max_minutes`` end this call early (a stage): ``last.pt`` then resumes it exactly."""
    trainer = None
    out = Path(cfg.train.output_dir)
    existed = out.exists()
    try:
        trainer = Trainer(cfg, resume=resume, device=device, progress=progress, max_iters=max_iters,
                          max_minutes=max_minutes)
        return trainer.fit()
    except Exception as e:
        if trainer is None:  # fit() marks its own failures
            if existed or not _discard_new_folder(out):
                mark_failed(out, e, None)
        raise
    finally:
        dist_utils.cleanup()


FAILED_MARKER = "FAILED.txt"
"""Written into a run's folder when the run stops with an error (what happened and what to do), and
removed when a run in that folder starts again: a folder with this file holds no finished run."""


SETUP_FILES = ("log.csv", "config.yaml", FAILED_MARKER)
"""What a run's setup may have written into its folder before it failed."""


def _discard_new_folder(out: Path) -> bool:
    """Remove the folder a run created when it failed while setting up (holding nothing but
    :data:`SETUP_FILES`): no half-made folder that looks like a run. False when it holds anything else."""
    if dist_utils.rank_and_world()[0] != 0 or not out.is_dir():
        return not out.exists()
    entries = list(out.iterdir())
    if any(not p.is_file() or p.name not in SETUP_FILES for p in entries):
        return False
    try:
        for p in entries:
            p.unlink()
        out.rmdir()
    except OSError:
        return False
    return True


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
