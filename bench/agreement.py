"""Does the fast inference mode predict the same labels as fp32? Argmax agreement and mIoU on CamVid val.

    python bench/agreement.py --weights runs/camvid_r18_cpu/best.safetensors --data-root ../shared/data/camvid \
        [--precision auto] [--backend torch] [--base-size N] [--flip | --no-flip]
    python bench/agreement.py --weights W --data-root R --precision int8 --backend onnxruntime \
        --calibration-images 0 --record      # measure int8 as `auto` runs it; record it in W
    python bench/agreement.py ... --backend torch --calibration-images 0 --record   # torch's int8 (torchao)
    python bench/agreement.py ... --backend openvino --calibration-images 0 --record  # OpenVINO's int8
    python bench/agreement.py --weights TRAIN_ONLY --data-root R --precision int8 --backend B \
        --calibration-images 0 --record-into src/pspnet/weights/camvid_pspnet18.safetensors   # see below

``--calibration-images 0`` calibrates int8 on the first image it predicts, as ``pspnet predict``
does; ``--record`` writes the measured agreement into the weight file's metadata
(``int8_agreement`` for ONNX Runtime, ``int8_agreement_torch`` for torch, ``int8_agreement_openvino``
for OpenVINO), which ``precision="auto"``
reads to consider int8 on that backend (pspnet/inference/auto.py).

``--record-into FILE`` records the agreement measured on ``--weights`` into another file, with the
measured file's name and SHA-256 in the record. It is for a model that trained on every image there
is (the packaged CamVid model trained on train+val): its agreement on its own training images says
little about unseen ones, so the record comes from its recipe's train-only model on val, images that
model never trained on. Both files must record the same architecture and test settings.

For every validation image both the plain fp32 model and ``prepare_for_inference(model, precision,
backend)`` predict through ``pspnet.inference.testtime.predict_logits`` at the base size and flip the
weights record (what ``pspnet predict`` runs; the flipped image is batched with the original); the script
prints the fraction of pixels with the same arg-max class, each mode's mIoU against the labels, and
the mIoU difference. Pass: agreement >= 99.5% and mIoU drop <= 0.3 points.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from pspnet import bench
from pspnet.config import recorded_test_settings
from pspnet.data.datasets import build_dataset, dataset_info
from pspnet.hub.download import sha256_of
from pspnet.inference.auto import AGREEMENT_KEYS, agreement_key, recorded_int8_agreements
from pspnet.inference.prepare import prepare_for_inference
from pspnet.inference.testtime import predict_logits
from pspnet.metrics import ConfusionMatrix
from pspnet.models.weights import load_weights, update_metadata

MIN_AGREEMENT, MAX_MIOU_DROP = 0.995, 0.3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--data-root", "--root", dest="root", required=True, help="CamVid root (train/val/test folders)")
    p.add_argument("--dataset", default="camvid")
    p.add_argument("--split", default="val")
    p.add_argument("--precision", default="auto")
    p.add_argument("--backend", default="torch")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--base-size", type=int,
                   help="long side the images are resized to (default: the base size the weights record, as "
                        "pspnet predict uses; 0: none)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction,
                   help="average in the mirrored image (default: what the weights record, as pspnet predict does)")
    p.add_argument("--calibration-images", type=int, default=16,
                   help="training images to calibrate int8 (0: the first image predicted, as pspnet predict does)")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="int8 in 7 bits, as CPUs without VNNI run it (default: as this CPU runs it); --record "
                        "then writes the 7-bit record (key ..._7bit)")
    p.add_argument("--record", action="store_true",
                   help="write the measured int8 agreement into the weight file (int8 on onnxruntime, torch or "
                        "openvino, --calibration-images 0 only)")
    p.add_argument("--record-into", metavar="FILE",
                   help="record the agreement measured on --weights into FILE instead (the same architecture and "
                        "test settings): a train-only model's agreement on unseen images, for a model trained on all")
    p.add_argument("--max-images", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", help="JSON results")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(bench.format_machine())
    model, meta = load_weights(a.weights)
    model.eval()
    recorded = recorded_test_settings(meta, a.weights)
    if a.record_into:
        a.record = True
        _check_same_model(p, a.record_into, model, recorded)
    recorded_base, recorded_flip = recorded.get("base_size"), bool(recorded.get("flip", False))
    if a.base_size is None:
        a.base_size = recorded_base or 0
    if a.flip is None:
        a.flip = recorded_flip
    if a.record and (a.base_size or None) != recorded_base:
        p.error(f"--record measures the agreement at the base size the weights record ({recorded_base}); "
                f"drop --base-size {a.base_size}")
    if a.record and a.flip != recorded_flip:
        p.error(f"--record measures the agreement with the flip the weights record ({recorded_flip}); drop --"
                f"{'' if a.flip else 'no-'}flip")
    info = dataset_info(a.dataset, model.config.num_classes)
    ds = build_dataset(a.dataset, a.root, a.split, info=info)
    calibration = None
    if a.record and (a.precision, a.calibration_images, a.backend in AGREEMENT_KEYS) != ("int8", 0, True):
        p.error("--record measures int8 as auto runs it: --precision int8 --backend onnxruntime (or torch, openvino) "
                "--calibration-images 0")
    if a.precision == "int8" and a.calibration_images > 0:
        train = build_dataset(a.dataset, a.root, "train", info=info)
        step = max(1, len(train) // a.calibration_images)
        calibration = []
        for i in range(0, step * a.calibration_images, step):
            img = train[i][0][None]
            calibration.append(predict_input(img, a.base_size))
    fast = prepare_for_inference(model, a.precision, backend=a.backend, compile=a.compile, calibration=calibration,
                                 int8_agreement=recorded_int8_agreements(meta), reduce_range=a.reduce_range)
    reduced = bool(getattr(fast, "reduce_range", False))
    print(f"int8 quantisation: {'7-bit (reduce_range)' if reduced else '8-bit'}" if a.precision == "int8" else "")
    n = len(ds) if a.max_images is None else min(len(ds), a.max_images)
    k = model.config.num_classes
    cm_ref, cm_fast = ConfusionMatrix(k, info.ignore_index), ConfusionMatrix(k, info.ignore_index)
    same = total = 0
    t_ref = t_fast = 0.0
    base = a.base_size or None
    for i in range(n):
        image, label = ds[i]
        t = time.perf_counter()
        ref = predict_logits(model, image[None], base_size=base, flip=a.flip, softmax=False).argmax(1)
        t_ref += time.perf_counter() - t
        t = time.perf_counter()
        out = predict_logits(fast, image[None], base_size=base, flip=a.flip, softmax=False).argmax(1)
        t_fast += time.perf_counter() - t
        same += int((ref == out).sum())
        total += ref.numel()
        cm_ref.update(ref, label[None])
        cm_fast.update(out, label[None])
    used = getattr(fast, "precision", a.precision)
    if getattr(fast, "choice", None) is not None:
        print(f"  {fast.choice.describe()}")
    m_ref, m_fast = cm_ref.compute(), cm_fast.compute()
    agree = same / total
    drop = (m_ref.miou - m_fast.miou) * 100
    res = {"weights": a.weights, "split": a.split, "images": n, "precision": a.precision, "resolved_precision": used,
           "backend": getattr(fast, "backend", a.backend), "compile": a.compile, "base_size": base, "flip": a.flip,
           "argmax_agreement": agree,
           "miou_fp32": m_ref.miou, "miou_fast": m_fast.miou, "miou_drop_points": drop,
           "seconds_fp32": t_ref, "seconds_fast": t_fast, "command": " ".join(["python"] + sys.argv)}
    print(f"{a.dataset} {a.split}: {n} images, base size {base}, flip {a.flip}, weights {a.weights}")
    print(f"  mode: precision {a.precision} -> {used}, backend {a.backend} -> {res['backend']}, compile {a.compile}")
    print(f"  argmax agreement with fp32: {agree * 100:.3f}% of {total} pixels")
    print(f"  mIoU fp32 {m_ref.miou * 100:.2f}   mIoU fast {m_fast.miou * 100:.2f}   drop {drop:+.3f} points")
    print(f"  time fp32 {t_ref:.1f} s   fast {t_fast:.1f} s  (whole loop, {n} images)")
    ok = agree >= MIN_AGREEMENT and drop <= MAX_MIOU_DROP
    print(f"  {'PASS' if ok else 'FAIL'} (agreement >= {MIN_AGREEMENT * 100:.1f}%, "
          f"mIoU drop <= {MAX_MIOU_DROP} points)")
    if a.record and ok:
        record = {"agreement": round(agree, 6), "miou_drop_points": round(drop, 4), "data": f"{a.dataset} {a.split}",
                  "images": n, "base_size": base, "flip": a.flip, "calibration": "the first image predicted",
                  "command": res["command"]}
        target = a.record_into or a.weights
        if a.record_into:
            record["measured_on"] = {"weights": Path(a.weights).name, "sha256": sha256_of(a.weights)}
        update_metadata(target, {agreement_key(a.backend, reduced): record})
        print(f"  recorded {agreement_key(a.backend, reduced)} in {target}")
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0 if ok else 1


def _check_same_model(p: argparse.ArgumentParser, target: str, model: torch.nn.Module, recorded: dict) -> None:
    """--record-into: the target must be the measured model's architecture with its test settings
    (``recorded``: those of the measured file)."""
    other, other_meta = load_weights(target)
    # the auxiliary head is training-only (a shipped file drops it with 'pspnet convert --no-aux')
    ours, theirs = (dataclasses.replace(m.config, aux=False, aux_channels=1) for m in (model, other))
    if ours != theirs:
        p.error(f"--record-into {target}: its architecture differs from --weights' ({theirs} against {ours}); "
                "record into a model of the same recipe")
    settings = recorded_test_settings(other_meta, target)
    if recorded != settings:
        p.error(f"--record-into {target}: it records test settings {settings}, --weights records {recorded}; "
                "the agreement is measured at the settings the target runs")


def predict_input(image: torch.Tensor, base_size: int | None) -> torch.Tensor:
    """The normalised, resized network input ``predict_logits`` would feed for this image."""
    from pspnet.data.transforms import normalize
    from pspnet.inference.testtime import base_resize_shape
    x = normalize(image)
    if base_size:
        size = base_resize_shape(*x.shape[-2:], base_size)
        x = torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=True)
    return x


if __name__ == "__main__":
    sys.exit(main())
