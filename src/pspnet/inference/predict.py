"""Predict label maps for image files: class-index PNG, colour PNG, overlay and a legend.

Each input image is predicted at its own size (mixed sizes and any PIL mode: L, RGBA, P,
16-bit, ...; see :func:`pspnet.data.io.read_image`) with the test-time modes of
:mod:`pspnet.inference.testtime`, and written as

- ``<stem>_label.png``: class indices (8-bit, mode ``L``; 16-bit when there are more than 256 classes);
- ``<stem>_color.png``: the classes in the palette's colours;
- ``<stem>_overlay.png``: the colours blended with the image (50 %);

plus one ``legend.png`` (a swatch and name per class). With ``save_probs`` each image also gets

- ``<stem>_probs.npz``: the class probabilities, ``probs`` (float16, ``C x H x W``; their arg-max is
  the label, except where two classes round to the same float16 value) and ``class_names``,
  compressed (``np.load(path)["probs"]``);
- ``<stem>_confidence.png``: the top class's probability, 8-bit: ``round(255 * max_c p_c)``;
- ``<stem>_entropy.png``: the entropy of the probabilities relative to its maximum, 8-bit:
  ``round(255 * H / ln C)`` with ``H = -sum_c p_c ln p_c`` (0: certain, 255: all classes equally likely).

An input that cannot be read is reported and skipped; the rest are still written. Videos are
:mod:`pspnet.inference.video`'s. Under ``torchrun`` each rank predicts its share of the images
(:func:`pspnet.distributed.shard`): every image is written once, by one rank.
"""

from __future__ import annotations

import glob
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.datasets.base import IMAGE_EXTS
from ..data.io import image_size, read_image
from ..distributed import gather_objects, rank_and_world, shard
from ..errors import PSPNetError
from ..files import write_output
from .auto import Int8Agreement
from .budget import plan_image
from .prepare import prepare_model
from .testtime import network_calls, predict_logits

log = logging.getLogger("pspnet.predict")

__all__ = ["OVERLAY_ALPHA", "PredictOutputs", "draw_legend", "expand_inputs", "label_image", "overlay",
           "palette_array", "predict_image", "predict_paths", "unique_stems"]

OVERLAY_ALPHA = 0.5
_GLOB_CHARS = set("*?[")


class PredictOutputs(list):
    """The written files (``list[Path]``), with ``failed``: ``(input, reason)`` for every skipped input,
    and ``images_per_rank``: the images each process wrote (one count without torchrun)."""

    def __init__(self, paths: Iterable[Path] = (), failed: Iterable[tuple[str, str]] = (),
                 images_per_rank: Iterable[int] = ()) -> None:
        super().__init__(paths)
        self.failed: list[tuple[str, str]] = list(failed)
        self.images_per_rank: list[int] = list(images_per_rank)


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (their image files, not recursive) and glob patterns -> (files, problems).

    Order is kept and duplicates are dropped. A folder with no images, a pattern matching nothing
    or a missing path is a problem ``(input, reason)``, not an exception.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)

    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
            if not found:
                problems.append((s, f"folder has no image files ({', '.join(IMAGE_EXTS)})"))
            for q in found:
                add(q)
        elif p.is_file():
            add(p)
        elif _GLOB_CHARS & set(s):
            found = sorted(Path(q) for q in glob.glob(s, recursive=True) if Path(q).is_file())
            if not found:
                problems.append((s, "pattern matches no files"))
            for q in found:
                add(q)
        else:
            problems.append((s, "file not found"))
    return files, problems


def unique_stems(files: Sequence[Path]) -> list[str]:
    """File stems, with ``-2``, ``-3``... appended when two inputs share one (a/x.png, b/x.jpg)."""
    used: dict[str, int] = {}
    out = []
    for f in files:
        stem = f.stem
        if stem in used:
            used[stem] += 1
            k = used[stem]
            while f"{stem}-{k}" in used:
                k += 1
            stem = f"{stem}-{k}"
        used.setdefault(stem, 1)
        out.append(stem)
    return out


def palette_array(palette, num_classes: int) -> np.ndarray:
    """``palette`` as a ``K x 3`` uint8 array, extended with the default colours to ``num_classes`` rows."""
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) < num_classes:
        from ..labels import default_palette
        pal = np.concatenate([pal, np.asarray(default_palette(num_classes)[len(pal):], dtype=np.uint8)])
    return pal


def draw_legend(class_names: Sequence[str], palette, path: str | Path) -> Path:
    """A PNG with one row per class: a colour swatch and the class index and name."""
    pal = palette_array(palette, len(class_names))
    font = ImageFont.load_default()
    rows = [f"{i:>3}  {name}" for i, name in enumerate(class_names)]
    row_h, sw = 22, 28
    text_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(r, font=font)) for r in rows) if rows else 0
    img = Image.new("RGB", (sw + 16 + text_w + 10, row_h * len(rows) + 8), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for i, r in enumerate(rows):
        y = 4 + i * row_h
        d.rectangle([6, y + 2, 6 + sw, y + row_h - 4], fill=tuple(int(c) for c in pal[i]), outline=(0, 0, 0))
        d.text((sw + 14, y + 5), r, fill=(0, 0, 0), font=font)
    return _save_png(img, Path(path))


def _save_png(img: Image.Image, path: Path) -> Path:
    """A PNG written atomically: a full disk leaves no truncated file (an ``OutputError`` instead)."""
    return write_output(path, lambda tmp: img.save(tmp, format="PNG"))


def label_image(label: np.ndarray, num_classes: int) -> Image.Image:
    """Class indices as a greyscale image: 8-bit (mode ``L``), 16-bit above 256 classes."""
    if num_classes <= 256:
        return Image.fromarray(label.astype(np.uint8))  # 2-D uint8 -> mode L
    return Image.fromarray(label.astype(np.uint16))  # mode I;16 -> 16-bit greyscale PNG


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The class colours blended with the ``H x W x 3`` uint8 image (``alpha`` of colour, default 50 %)."""
    blend = image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def _write_outputs(image: np.ndarray, label: np.ndarray, pal: np.ndarray, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}_label.png", out_dir / f"{stem}_color.png", out_dir / f"{stem}_overlay.png"]
    _save_png(label_image(label, len(pal)), paths[0])
    color = pal[label]
    _save_png(Image.fromarray(color), paths[1])
    _save_png(Image.fromarray(overlay(image, color)), paths[2])
    return paths


def _write_probs(probs: torch.Tensor, class_names: Sequence[str], out_dir: Path, stem: str) -> list[Path]:
    """``probs`` (``C x H x W``, float32) -> the ``_probs.npz``, ``_confidence.png`` and ``_entropy.png``
    of the module docstring."""
    paths = [out_dir / f"{stem}_probs.npz", out_dir / f"{stem}_confidence.png", out_dir / f"{stem}_entropy.png"]
    probs = probs.float().cpu()
    half = probs.numpy().astype(np.float16)

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would append .npz to the temporary name
            np.savez_compressed(f, probs=half, class_names=np.array(class_names))
    write_output(paths[0], write_npz)
    confidence = probs.amax(0)
    _save_png(Image.fromarray(torch.round(confidence * 255).clamp(0, 255).to(torch.uint8).numpy()), paths[1])
    entropy = -torch.special.xlogy(probs, probs).sum(0)  # xlogy: 0 * log 0 = 0
    num_classes = probs.shape[0]
    scaled = entropy / math.log(num_classes) if num_classes > 1 else torch.zeros_like(entropy)
    _save_png(Image.fromarray(torch.round(scaled * 255).clamp(0, 255).to(torch.uint8).numpy()), paths[2])
    return paths


def _say_calibration(runner, first: str | Path) -> None:
    """``auto``'s int8 calibrated on the first image it saw: name that image, once (it is the only
    calibration data; :class:`~pspnet.inference.prepare.AutoPSPNet`)."""
    on = getattr(runner, "calibrated_on", None)
    if on and not getattr(runner, "_calibration_said", False):
        runner._calibration_said = True
        log.info("int8 calibrated on %s: %s", on, first)


def _plan(config, size, max_memory, f, bar, **kw) -> tuple[str, tuple[int, int] | None]:
    """The mode and crop to run image ``f`` of ``size`` with inside the budget (a note when it changed)."""
    plan = plan_image(config, *size, max_memory, name=str(f), **kw)
    if plan.note:
        if bar is not None:
            bar.write(plan.note, file=sys.stderr)
        else:
            log.warning(plan.note)
    return plan.mode, plan.crop_size


@torch.no_grad()
def predict_image(runner, image: np.ndarray, num_classes: int, *, base_size: int | None = None,
                  scales: Sequence[float] = (1.0,), flip: bool = False, mode: str = "whole",
                  crop_size: Sequence[int] | None = None, stride_rate: float = 2 / 3,
                  protocol: str = "release") -> torch.Tensor:
    """The class probabilities (``C x H x W`` float32, softmax) of one ``H x W x 3`` uint8 RGB image under the
    test-time settings, in the mode and crop already planned for it (:func:`~pspnet.inference.budget.plan_image`).

    The one per-image step behind ``pspnet predict`` (:func:`predict_paths`) and :func:`pspnet.load`'s
    ``Model.predict``: both get the same labels from it."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    probs = predict_logits(runner, x, base_size=base_size, scales=scales, flip=flip, mode=mode,
                           crop_size=crop_size, stride_rate=stride_rate, softmax=True, protocol=protocol)
    if probs.shape[1] != num_classes:
        raise PSPNetError(f"the model predicts {probs.shape[1]} classes but {num_classes} class "
                          f"names were given")
    return probs[0]


@torch.no_grad()
def predict_paths(model, inputs: Sequence[str | Path], out_dir: str | Path, *, class_names: Sequence[str],
                  palette, base_size: int | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                  mode: str = "whole", crop_size: Sequence[int] | None = None, precision: str = "fp32",
                  progress: bool = True, stride_rate: float = 2 / 3, backend: str = "torch",
                  protocol: str = "release", save_probs: bool = False,
                  int8_agreement: Int8Agreement = None, max_memory: int | None = None,
                  runner=None) -> PredictOutputs:
    """Predict every image of ``inputs`` (files, folders, globs) into ``out_dir``.

    ``runner``: the network already prepared for ``precision``/``backend`` (a :class:`pspnet.api.Model`'s,
    reused); default: :func:`~pspnet.inference.prepare.prepare_model` prepares it for this job.

    ``max_memory``: the memory budget in bytes (default: :func:`~pspnet.inference.budget.default_budget`);
    an image estimated to need more runs in sliding windows (said so in the log), or fails with a
    :class:`~pspnet.errors.MemoryBudgetError` when even those do not fit. An image that fails for any
    reason is reported in ``.failed`` and the others are still predicted.

    Returns the written paths (three per image, six with ``save_probs``, then ``legend.png``) as a
    list whose ``.failed`` holds ``(input, reason)`` for each input that was skipped (missing,
    unreadable, too small). Under ``torchrun`` every rank returns the whole job's paths and failures.
    """
    if mode == "sliding" and crop_size is None:
        raise PSPNetError("sliding-window prediction needs a crop size, e.g. --crop-size 512 512")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = len(class_names)
    pal = palette_array(palette, num_classes)
    files, failed = expand_inputs(inputs)
    rank, world = rank_and_world()
    if rank == 0:  # every rank expands the same inputs and finds the same problems
        for item, reason in failed:
            log.error("%s: %s", item, reason)
    stems = unique_stems(files)
    if rank == 0:  # two inputs of one name: say which one got the suffix, not only write it
        for f, stem in zip(files, stems):
            if stem != f.stem:
                log.warning("%s: another input is also named %s; its outputs are %s_*", f, f.stem, stem)
    mine = shard(list(zip(files, stems)), rank, world)  # stems of the whole list: no clashes
    calls = network_calls(len(mine), scales, flip, mode, protocol)
    config = getattr(model, "config", None)  # a PSPNet's: what the memory estimate is made from
    plan_kw = dict(base_size=base_size, scales=scales, mode=mode, crop_size=crop_size, precision=precision)
    if runner is None:
        runner, _ = prepare_model(model, precision, backend, int8_agreement=int8_agreement, expected_calls=calls)
    written = PredictOutputs()
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), desc="predict" if world == 1 else f"predict (rank 0 of {world})", unit="img",
                   dynamic_ncols=True, file=sys.stderr)
    try:
        for f, stem in mine:
            try:
                image_mode, image_crop = mode, crop_size
                # the plan from the header, before decoding (a 19999 x 19999 PNG decodes to 1.2 GB); from the
                # decoded image where the header alone cannot be read
                size = image_size(f) if config is not None else None
                if size is not None:
                    image_mode, image_crop = _plan(config, size, max_memory, f, bar, **plan_kw)
                image = read_image(f)
                if config is not None and size is None:
                    image_mode, image_crop = _plan(config, image.shape[:2], max_memory, f, bar, **plan_kw)
                probs = predict_image(runner, image, num_classes, base_size=base_size, scales=scales, flip=flip,
                                      mode=image_mode, crop_size=image_crop, stride_rate=stride_rate,
                                      protocol=protocol)
                _say_calibration(runner, f)
                label = probs.argmax(0).cpu().numpy()
                written.extend(_write_outputs(image, label, pal, out_dir, stem))
                if save_probs:
                    written.extend(_write_probs(probs, class_names, out_dir, stem))
            except Exception as e:  # noqa: BLE001 - any one image's failure (unreadable, out of memory, a full
                # disk, a backend error) is reported and the others are still done; Ctrl-C still stops
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                if not isinstance(e, (PSPNetError, OSError)):
                    reason = f"{type(e).__name__}: {reason}"
                if reason.startswith(f"{f}: "):  # DataError messages start with the path already
                    reason = reason[len(f"{f}: "):]
                written.failed.append((str(f), reason))
                msg = f"skipped {f}: {reason}"
                if bar is not None:
                    bar.write(msg, file=sys.stderr)
                else:
                    log.error(msg)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    ranks = gather_objects((list(written), written.failed, len(mine) - len(written.failed)))
    written = PredictOutputs([p for r in ranks for p in r[0]], failed + [x for r in ranks for x in r[1]],
                             [r[2] for r in ranks])
    legend = out_dir / "legend.png"
    if rank == 0:
        try:
            written.append(draw_legend(class_names, pal, legend))
        except OSError as e:  # a full disk by now: reported with the images that failed, nothing half-written
            written.failed.append((str(legend), str(e).removeprefix(f"{legend}: ")))
    else:
        written.append(legend)
    return written
