"""Segment videos (files, or a camera / stream index) frame by frame: an overlay video, and on
request a colour-label video and per-frame label PNGs.

Street-scene data is video (CamVid and KITTI are frames of drives), and PSPNet segments each frame
on its own (Zhao et al. 2017 has no temporal model), so a video is its frames predicted in order
with the test-time settings of :func:`pspnet.inference.testtime.predict_logits`, exactly as images
are. Frames are decoded with OpenCV's ``VideoCapture`` (FFmpeg inside) and predicted ``batch_size``
at a time; only one batch is ever held, so memory does not grow with the video's length. For a
video ``clip.mp4`` the outputs in ``out_dir`` are

- ``clip_overlay.mp4``: every frame with the prediction's colours blended in (50 %, like the
  images' overlays), at the input's size and frame rate;
- ``clip_color.mp4`` (``color=True``): the classes in the palette's colours;
- ``clip_labels/NNNNNN.png`` (``frame_labels=True``): class indices of every ``every``-th frame
  (frames 0, N, 2N, ...), named by the frame's index in the video; 8-bit, 16-bit above 256 classes.

Videos are encoded as MPEG-4 Part 2 (``mp4v``), the codec OpenCV's pip wheels can write everywhere
(they carry no H.264 encoder). It is lossy: read class indices from the label PNGs, never from the
colour video.

No output that looks finished is left by a failed or interrupted run: each is written under a
hidden temporary name beside its target (``.clip_overlay.mp4.<random>.partial.mp4``) and renamed
only once the whole video has been decoded and checked. A file that cannot be opened, decodes no
frame, or decodes fewer frames than its header announces (a truncated copy) raises
:class:`~pspnet.errors.DataError` naming the file and what is wrong. A camera has no end: Ctrl-C
stops it and keeps what was recorded. Under ``torchrun`` each rank segments its share of the videos
(:func:`pspnet.distributed.shard`).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import torch

from ..distributed import gather_objects, rank_and_world, shard
from ..errors import ConfigError, DataError, MemoryBudgetError, PSPNetError
from .auto import Int8Agreement
from .budget import default_budget, model_bytes, plan_image
from .predict import PredictOutputs, draw_legend, label_image, overlay, palette_array, unique_stems
from .prepare import prepare_model
from .testtime import network_calls, predict_logits

log = logging.getLogger("pspnet.video")

__all__ = ["VIDEO_EXTS", "VideoSource", "predict_videos", "split_video_inputs"]

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
FOURCC = "mp4v"
DEFAULT_FPS = 30.0  # for cameras and streams that report none


def split_video_inputs(inputs: Sequence[str | Path]) -> tuple[list[str | int], list[str | Path]]:
    """``(videos, others)``: files with a video extension, and integers naming a camera (``"0"``,
    unless a file of that name exists), apart from everything else (images, folders, globs)."""
    videos: list[str | int] = []
    others: list[str | Path] = []
    for item in inputs:
        s = str(item)
        if s.isdigit() and not Path(s).exists():
            videos.append(int(s))
        elif Path(s).suffix.lower() in VIDEO_EXTS:
            videos.append(s)
        else:
            others.append(item)
    return videos, others


class VideoSource:
    """An opened video file or camera: ``fps``, ``frame_count`` (from the file's header; ``None``
    for a camera) and :meth:`batches` of RGB frames; :meth:`close` it (``contextlib.closing``).
    Raises :class:`DataError` when it cannot be read."""

    def __init__(self, source: str | Path | int) -> None:
        self.is_camera = isinstance(source, int)
        self.name = f"camera {source}" if self.is_camera else str(source)
        if not self.is_camera and not Path(source).is_file():
            raise DataError(f"{source}: file not found")
        self._cap = cv2.VideoCapture(source if self.is_camera else str(source))
        if not self._cap.isOpened():
            self.close()
            if self.is_camera:
                raise DataError(f"camera {source}: could not be opened (no such device, or it is in use)")
            raise DataError(f"{source}: cannot be opened as a video (truncated before its index, damaged, "
                            f"or a format OpenCV's FFmpeg cannot read)")
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count: int | None = count if count > 0 and not self.is_camera else None
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(index of the first frame, frames N x H x W x 3 uint8 RGB)``, ``batch_size`` frames at a
        time. At the end of a file, fewer decoded frames than the header announces is a DataError."""
        decoded, size, batch = 0, None, []
        while True:
            ok, frame = self._cap.read()
            if not ok:
                break
            if size is None:
                size = frame.shape
            elif frame.shape != size:
                raise DataError(f"{self.name}: frame {decoded} is {frame.shape[1]}x{frame.shape[0]}, the video "
                                f"started at {size[1]}x{size[0]}; a video's frames must all have one size")
            batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            decoded += 1
            if len(batch) == batch_size:
                yield decoded - len(batch), np.stack(batch)
                batch = []
        if batch:
            yield decoded - len(batch), np.stack(batch)
        if decoded == 0:
            raise DataError(f"{self.name}: no frame could be decoded (empty, truncated or damaged video)")
        if self.frame_count is not None and decoded < self.frame_count:
            raise DataError(f"{self.name}: decoded {decoded} of the {self.frame_count} frames its header "
                            f"announces; the file is truncated or damaged")

    def close(self) -> None:
        self._cap.release()


class _Staged:
    """Outputs written under hidden temporary names beside their targets: :meth:`commit` renames them
    all, :meth:`discard` deletes them (a failed or interrupted video leaves nothing that looks done)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Path, Path]] = []

    def file(self, target: Path) -> Path:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial{target.suffix}")
        self.pairs.append((tmp, target))
        return tmp

    def folder(self, target: Path) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; give the usual permissions of a new folder
        self.pairs.append((tmp, target))
        return tmp

    def commit(self) -> list[Path]:
        for tmp, target in self.pairs:
            if target.is_dir() and tmp.is_dir():  # a previous run's frames: replaced, like the images' files
                shutil.rmtree(target)
            os.replace(tmp, target)
        return [target for _, target in self.pairs]

    def discard(self) -> None:
        for tmp, _ in self.pairs:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _remove_stale(out_dir: Path, stem: str) -> None:
    """Delete the temporary outputs a killed run (SIGKILL, power loss) left for ``stem``."""
    for p in glob.glob(os.path.join(glob.escape(str(out_dir)), f".{glob.escape(stem)}_*.partial*")):
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            Path(p).unlink(missing_ok=True)


def _open_writer(path: Path, fps: float, height: int, width: int) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (width, height))
    if not writer.isOpened():
        raise PSPNetError(f"{path}: OpenCV cannot write a {FOURCC} video here ({width}x{height} at {fps:g} fps)")
    return writer


def _predict_video(runner, source: str | Path | int, out_dir: Path, stem: str, *, pal: np.ndarray,
                   num_classes: int, color: bool, frame_labels: bool, every: int, batch_size: int,
                   settings: dict, progress: bool, config=None, max_memory: int | None = None,
                   precision: str = "fp32") -> list[Path]:
    """One video through ``runner`` (prepared) into ``out_dir``; returns the outputs' paths. With the model's
    ``config``, the first batch's frame size is planned within the memory budget (``max_memory``) as
    :func:`~pspnet.inference.predict.predict_paths` plans an image: sliding windows, or a named refusal."""
    _remove_stale(out_dir, stem)
    staged = _Staged()
    writers: list[cv2.VideoWriter] = []
    bar, done = None, 0
    try:
        with closing(VideoSource(source)) as video:
            overlay_tmp = staged.file(out_dir / f"{stem}_overlay.mp4")
            color_tmp = staged.file(out_dir / f"{stem}_color.mp4") if color else None
            labels_tmp = staged.folder(out_dir / f"{stem}_labels") if frame_labels else None
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=video.frame_count, desc=stem, unit="frame", dynamic_ncols=True, file=sys.stderr)
            try:
                for start, frames in video.batches(batch_size):
                    if not writers:
                        h, w = frames.shape[1:3]
                        if config is not None:
                            settings = _frame_plan(config, h, w, batch_size, max_memory, precision, settings,
                                                   video.name)
                        writers.append(_open_writer(overlay_tmp, video.fps, h, w))
                        if color_tmp is not None:
                            writers.append(_open_writer(color_tmp, video.fps, h, w))
                    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # N x 3 x H x W uint8
                    probs = predict_logits(runner, x, softmax=True, **settings)
                    if probs.shape[1] != num_classes:
                        raise PSPNetError(f"the model predicts {probs.shape[1]} classes but {num_classes} class "
                                          f"names were given")
                    labels = probs.argmax(1).cpu().numpy()
                    del probs
                    for k, (frame, label) in enumerate(zip(frames, labels)):
                        colours = pal[label]
                        writers[0].write(cv2.cvtColor(overlay(frame, colours), cv2.COLOR_RGB2BGR))
                        if color_tmp is not None:
                            writers[1].write(cv2.cvtColor(colours, cv2.COLOR_RGB2BGR))
                        if labels_tmp is not None and (start + k) % every == 0:
                            label_image(label, len(pal)).save(labels_tmp / f"{start + k:06d}.png")
                    done += len(frames)
                    if bar is not None:
                        bar.update(len(frames))
            except KeyboardInterrupt:
                if not video.is_camera or not writers:
                    raise
                log.info("%s: stopped after %d frames", video.name, done)
        for wr in writers:
            wr.release()
        return staged.commit()
    except BaseException:
        for wr in writers:
            wr.release()
        staged.discard()
        raise
    finally:
        if bar is not None:
            bar.close()


def _frame_plan(config, height: int, width: int, batch_size: int, max_memory: int | None, precision: str,
                settings: dict, name: str) -> dict:
    """The test-time settings for frames of ``height x width`` within the budget: a batch of ``batch_size``
    frames shares the model, so each frame gets an equal share of what the model leaves."""
    fixed = model_bytes(config)
    budget = max_memory or default_budget()
    per_frame = fixed + max(0, budget - fixed) // batch_size
    plan = plan_image(config, height, width, per_frame, precision=precision, name=f"{name} (frames, {batch_size} a "
                      f"batch)", **{k: settings[k] for k in ("base_size", "scales", "mode", "crop_size")})
    if plan.note:
        log.warning("%s", plan.note)
    return {**settings, "mode": plan.mode, "crop_size": plan.crop_size}


def _batches_in(sources: Sequence[str | Path | int], batch_size: int) -> int | None:
    """Forward passes the videos' headers announce, ``batch_size`` frames each; None when a source
    has no end (a camera) or its header no frame count. ``auto`` weighs its setup against this:
    a short clip should not pay an int8 calibration that only a long one earns back."""
    total = 0
    for source in sources:
        if isinstance(source, int):
            return None
        try:
            with closing(VideoSource(source)) as video:
                frames = video.frame_count
        except DataError:
            continue  # reported when its turn comes; it costs no forward pass
        if frames is None:
            return None
        total += math.ceil(frames / batch_size)
    return total


@torch.no_grad()
def predict_videos(model, sources: Sequence[str | Path | int], out_dir: str | Path, *, class_names: Sequence[str],
                   palette, color: bool = False, frame_labels: bool = False, every: int = 1, batch_size: int = 4,
                   base_size: int | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                   mode: str = "whole", crop_size: Sequence[int] | None = None, stride_rate: float = 2 / 3,
                   precision: str = "fp32", backend: str = "torch", protocol: str = "release",
                   progress: bool = True, int8_agreement: Int8Agreement = None,
                   max_memory: int | None = None) -> PredictOutputs:
    """Segment each video file (or camera index) of ``sources`` into ``out_dir`` (module docstring).

    ``color``: also the colour-label video; ``frame_labels``: also label PNGs of every ``every``-th
    frame; ``batch_size``: frames per forward pass. The test-time settings are those of
    :func:`pspnet.inference.predict.predict_paths`. Returns the written paths (then ``legend.png``)
    as a list whose ``.failed`` holds ``(source, reason)`` for each video that could not be
    segmented; its partial outputs are removed. ``max_memory``: the memory budget in bytes (default:
    :func:`~pspnet.inference.budget.default_budget`), planned from each video's frame size.
    """
    if every < 1 or batch_size < 1:
        raise ConfigError(f"every and batch_size must be >= 1, got every={every}, batch_size={batch_size}")
    if mode == "sliding" and crop_size is None:
        raise PSPNetError("sliding-window prediction needs a crop size, e.g. --crop-size 512 512")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pal = palette_array(palette, len(class_names))
    files = [Path(s) for s in sources if not isinstance(s, int)]
    file_stems = iter(unique_stems(files))
    stems = [f"camera{source}" if isinstance(source, int) else next(file_stems) for source in sources]
    rank, world = rank_and_world()
    mine = shard(list(zip(sources, stems)), rank, world)
    batches = _batches_in([source for source, _ in mine], batch_size)
    calls = None if batches is None else network_calls(batches, scales, flip, mode, protocol)
    runner, _ = prepare_model(model, precision, backend, int8_agreement=int8_agreement, expected_calls=calls)
    settings = {"base_size": base_size, "scales": scales, "flip": flip, "mode": mode, "crop_size": crop_size,
                "stride_rate": stride_rate, "protocol": protocol}
    written = PredictOutputs()
    for source, stem in mine:
        try:
            config = getattr(model, "config", None)  # what the memory plan is made from
            written.extend(_predict_video(runner, source, out_dir, stem, pal=pal, num_classes=len(class_names),
                                          color=color, frame_labels=frame_labels, every=every,
                                          batch_size=batch_size, settings=settings, progress=progress,
                                          config=config, max_memory=max_memory,
                                          precision=getattr(runner, "precision", precision)))
        except (DataError, OSError, MemoryBudgetError, cv2.error) as e:  # unreadable, truncated, too large: go on
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            name = f"camera {source}" if isinstance(source, int) else str(source)
            reason = reason.removeprefix(f"{name}: ")  # DataError messages start with the source already
            written.failed.append((name, reason))
            log.error("skipped %s: %s", name, reason)
    ranks = gather_objects((list(written), written.failed))  # every rank returns the whole job's outputs
    written = PredictOutputs([p for r in ranks for p in r[0]], [x for r in ranks for x in r[1]])
    legend = out_dir / "legend.png"
    written.append(draw_legend(class_names, pal, legend) if rank == 0 else legend)
    return written
