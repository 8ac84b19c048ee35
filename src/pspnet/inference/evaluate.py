"""Evaluate a model on a labelled dataset: the paper's mean IoU and pixel accuracy (Zhao et al.
2017, Sec. 4-5), with the test-time modes of :mod:`pspnet.inference.testtime`.

Predictions are made at each image's full resolution (the label's), so the numbers are those of
the original labels, never of resized ones. The result is a JSON-ready dict; classes absent from
the evaluated ground truth follow the convention chosen with ``absent`` (``pspnet.metrics``).

Under ``torchrun`` (a process group is initialised) each rank evaluates its share of the images
(:func:`pspnet.distributed.shard`) and the confusion matrices are summed: integer counts, so every
rank returns exactly the matrix and metrics one process would.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..distributed import gather_objects, rank_and_world, shard
from ..errors import ConfigError, DataError, MemoryBudgetError
from ..metrics import Absent, ConfusionMatrix
from .auto import Int8Agreement
from .budget import plan_image
from .per_image import PerImageScores, worst_first
from .prepare import prepare_model
from .testtime import model_device, network_calls, predict_logits

log = logging.getLogger("pspnet.evaluate")

__all__ = ["evaluate", "format_table"]


def _item_path(dataset, index: int) -> str | None:
    pairs = getattr(dataset, "pairs", None)
    try:
        return str(pairs[index][0]) if pairs is not None else None
    except (IndexError, TypeError):
        return None


@torch.no_grad()
def evaluate(model, dataset, *, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None,
             base_size: int | None = None, scales: Sequence[float] = (1.0,), flip: bool = False, mode: str = "whole",
             crop_size: Sequence[int] | None = None, stride_rate: float = 2 / 3, precision: str = "fp32",
             progress: bool = True, skip_bad: bool = False, absent: Absent = "nan",
             max_images: int | None = None, backend: str = "torch", protocol: str = "release",
             per_image: bool = False, int8_agreement: Int8Agreement = None,
             max_memory: int | None = None) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` (items: uint8 ``3 x H x W`` image, int ``H x W`` label) and score it.

    Returns ``{"mIoU", "mAcc", "allAcc"`` (fractions in [0, 1]), ``"per_class": [{name, iou, acc}]``
    (``None`` where undefined), ``"confusion_matrix"`` (rows: ground truth, columns: prediction),
    ``"settings"`` (with ``world_size`` and ``images_per_rank``: images each rank scored), ``"num_images"``,
    ``"seconds"`` (the slowest rank's), ``"bad_files": [{index, path, error}]}``.
    ``max_memory``: the memory budget in bytes (default: :func:`~pspnet.inference.budget.default_budget`): an
    image too large to run whole within it runs in sliding windows (listed in ``settings["memory_fallback"]``),
    one too large even so is a :class:`~pspnet.errors.MemoryBudgetError` (with ``skip_bad``: recorded and
    skipped, as an unreadable item is).
    With ``skip_bad`` an unreadable item (:class:`DataError`) is recorded and skipped; otherwise it
    is raised. ``protocol``: test-time averaging (:data:`pspnet.inference.testtime.PROTOCOLS`; the
    original release's by default). ``precision`` other than ``fp32`` (or ``backend="onnxruntime"``) goes through
    :func:`pspnet.inference.prepare.prepare_for_inference`. ``per_image`` adds ``"per_image"``: each image's
    mIoU, pixel accuracy and worst classes, worst image first (:mod:`pspnet.inference.per_image`).
    """
    if mode == "sliding" and crop_size is None:
        raise ConfigError("sliding-window evaluation needs a crop size, e.g. crop_size=(713, 713)")
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes")
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    calls = network_calls(n, scales, flip, mode, protocol)
    runner, used_precision = prepare_model(model, precision, backend, int8_agreement=int8_agreement,
                                           expected_calls=calls)
    device = model_device(runner)
    cm = ConfusionMatrix(num_classes, ignore_index, device)
    scores = PerImageScores(names, ignore_index) if per_image else None
    rank, world = rank_and_world()
    mine = shard(range(n), rank, world)
    bad: list[dict[str, Any]] = []
    bar = None
    if progress and rank == 0:  # rank 0's share stands for the others'
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), desc="eval" if world == 1 else f"eval (rank 0 of {world})", unit="img",
                   dynamic_ncols=True)
    def skip(i: int, error: Exception) -> None:
        """An item that cannot be scored: recorded and skipped with ``skip_bad``, else the error ends the run."""
        if not skip_bad:
            raise error
        bad.append({"index": i, "path": _item_path(dataset, i), "error": str(error)})
        log.warning("skipped item %d: %s", i, error)
        if bar is not None:
            bar.update(1)

    t0 = time.perf_counter()
    calibrated_on = None
    config = getattr(model, "config", None)  # a PSPNet's: what the memory estimate is made from
    fallback: list[str] = []
    try:
        for k, i in enumerate(mine):
            try:
                image, label = dataset[i]
            except DataError as e:
                skip(i, e)
                continue
            label = torch.as_tensor(label)
            if tuple(label.shape[-2:]) != tuple(image.shape[-2:]):
                raise DataError(f"item {i} ({_item_path(dataset, i)}): label {tuple(label.shape)} and image "
                                f"{tuple(image.shape)} sizes differ")
            image_mode, image_crop = mode, crop_size
            if config is not None:  # within the memory budget: sliding windows, or a named refusal
                try:
                    plan = plan_image(config, *image.shape[-2:], max_memory, base_size=base_size, scales=scales,
                                      mode=mode, crop_size=crop_size, precision=used_precision,
                                      name=f"item {i} ({_item_path(dataset, i)})")
                except MemoryBudgetError as e:
                    skip(i, e)
                    continue
                image_mode, image_crop = plan.mode, plan.crop_size
                if plan.note:
                    log.warning("%s", plan.note)
                    fallback.append(_item_path(dataset, i))
            probs = predict_logits(runner, image[None], base_size=base_size, scales=scales, flip=flip,
                                   mode=image_mode, crop_size=image_crop, stride_rate=stride_rate, softmax=True,
                                   protocol=protocol)
            if calibrated_on is None and getattr(runner, "calibrated_on", None):  # auto's int8: said, and recorded
                calibrated_on = f"{runner.calibrated_on}: item {i} ({_item_path(dataset, i)})"
                log.info("int8 calibrated on %s", calibrated_on)
            pred, target = probs.argmax(1), label.reshape(1, *label.shape[-2:]).to(device)
            cm.update(pred, target)
            if scores is not None:
                scores.add(i, _item_path(dataset, i), pred, target)
            if bar is not None:
                bar.update(1)
                if (k + 1) % 10 == 0 or k + 1 == len(mine):
                    bar.set_postfix(mIoU=f"{cm.compute(absent).miou:.4f}")
    finally:
        if bar is not None:
            bar.close()
    cm.all_reduce()
    ranks = gather_objects({"scored": len(mine) - len(bad), "bad": bad, "seconds": time.perf_counter() - t0,
                            "per_image": scores.records if scores is not None else [], "fallback": fallback})
    fallback = [p for r in ranks for p in r["fallback"]]
    bad = sorted((b for r in ranks for b in r["bad"]), key=lambda b: b["index"])
    metrics = cm.compute(absent)
    result = metrics.as_dict(names, json_safe=True)
    result["confusion_matrix"] = cm.matrix.cpu().tolist()
    result["settings"] = {"base_size": base_size, "scales": [float(s) for s in scales], "flip": bool(flip),
                          "mode": mode, "protocol": protocol,
                          "crop_size": list(crop_size) if crop_size is not None else None,
                          "stride_rate": float(stride_rate) if mode == "sliding" else None,
                          "precision": getattr(runner, "precision", used_precision),
                          "backend": getattr(runner, "backend", backend), "ignore_index": ignore_index,
                          "absent": absent,
                          "device": str(device), "world_size": world,
                          "images_per_rank": [r["scored"] for r in ranks]}
    if calibrated_on is not None:
        result["settings"]["int8_calibration"] = calibrated_on
    if fallback:  # run in sliding windows to stay within the memory budget: the protocol differs for these
        result["settings"]["memory_fallback"] = fallback
    result["num_images"] = n - len(bad)
    result["seconds"] = round(max(r["seconds"] for r in ranks), 3)
    result["bad_files"] = bad
    if scores is not None:  # pspnet.inference.per_image: each image's scores (of every rank), worst first
        result["per_image"] = worst_first([rec for r in ranks for rec in r["per_image"]])
    return result


def _fmt(v: float | None) -> str:
    return "     -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def format_table(results: dict[str, Any]) -> str:
    """The per-class table (name, IoU, Acc) and the three summary numbers, as printed by ``pspnet eval``."""
    rows = results["per_class"]
    width = max([len("class")] + [len(r["name"]) for r in rows])
    lines = [f"{'class':<{width}}     IoU     Acc", "-" * (width + 16)]
    lines += [f"{r['name']:<{width}}  {_fmt(r['iou'])}  {_fmt(r['acc'])}" for r in rows]
    lines.append("-" * (width + 16))
    s = results.get("settings", {})
    conv = {"nan": "classes absent from the ground truth left out of the means",
            "zero": "absent classes count as 0 (original release)"}.get(s.get("absent", "nan"), "")
    lines.append(f"mIoU {_fmt(results['mIoU'])}   mAcc {_fmt(results['mAcc'])}   allAcc {_fmt(results['allAcc'])}")
    if "num_images" in results:
        lines.append(f"({results['num_images']} images; {conv})")
    return "\n".join(lines)
