"""Our CPU modes against OpenVINO running the ONNX file ``pspnet export`` writes, in one process, alternating.

OpenVINO is the engine a CPU user would pick instead of pspnet, so this is the comparison that
matters. It is *not* a dependency of pspnet or its tests: install it on purpose, in a separate
virtual environment (OpenVINO and NNCF pull in their own numpy/onnx/scikit-learn pins)::

    python3 -m venv .venv-openvino && . .venv-openvino/bin/activate
    pip install torch==2.13.0 && pip install -e ".[dev]" openvino nncf
    python bench/openvino_compare.py                         # PSPNet-50, 473x473, batch 1
    python bench/openvino_compare.py --ours auto,bf16 --openvino f32,bf16,int8 --reps 7

What runs:
- ``ours:<mode>``: ``pspnet.bench.make_runner`` for that mode (``auto`` is what ``pspnet predict`` runs
  by default; it prints what ``auto`` resolved to).
- ``ov-f32`` / ``ov-bf16``: the exported ONNX file (``pspnet.export.export_onnx``, dynamic batch and
  size, as ``pspnet export`` writes it) read by ``openvino.Core().read_model``, reshaped to the
  static input shape (OpenVINO's fastest form), compiled for ``CPU`` with ``INFERENCE_PRECISION_HINT``
  f32 / bf16 and ``PERFORMANCE_HINT=LATENCY``.
- ``ov-int8``: the same model after ``nncf.quantize`` (default preset, calibrated on the timed input
  plus ``--calib`` random images), compiled with the default precision.

Every engine gets the same input and the same warm-up; rounds alternate engine by engine. The
argmax agreement of each engine with fp32 eager PyTorch on the timed input is printed (random
weights: a rough check only; bench/agreement.py measures it on CamVid).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pspnet import bench
from pspnet.export import export_onnx


def openvino_engines(onnx_path: Path, shape: tuple[int, ...], precisions: list[str], calib: list[np.ndarray],
                     threads: int) -> dict[str, object]:
    import openvino as ov
    core = ov.Core()
    engines: dict[str, object] = {}
    base = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    for p in precisions:
        t = time.perf_counter()
        model = core.read_model(str(onnx_path))
        model.reshape({model.inputs[0].get_any_name(): list(shape)})
        try:
            if p == "int8":
                import nncf
                model = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
                compiled = core.compile_model(model, "CPU", base)
            else:
                compiled = core.compile_model(model, "CPU", {**base, "INFERENCE_PRECISION_HINT": p})
        except Exception as e:  # noqa: BLE001 - report and go on with the other engines
            print(f"ov-{p}: failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
            continue
        request = compiled.create_infer_request()
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        print(f"ov-{p}: compiled in {time.perf_counter() - t:.1f} s (INFERENCE_PRECISION_HINT -> {got})")

        def run(x: torch.Tensor, request=request) -> torch.Tensor:
            request.infer({0: x.numpy()})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        engines[f"ov-{p}"] = run
    return engines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--size", default="473x473", help="HxW")
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--ours", default="auto", help="comma-separated pspnet.bench.MODES")
    p.add_argument("--openvino", default="f32,bf16,int8", help="comma-separated f32, bf16, int8")
    p.add_argument("--reps", type=int, default=5, help="timed rounds (each runs every engine once)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--calib", type=int, default=3, help="extra random calibration images for int8")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    import openvino
    print(bench.format_machine())  # names OpenVINO's version
    size = bench.parse_size(a.size)
    model = bench.build_model(a.depth, a.classes)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *size, generator=g)
    engines: dict[str, object] = {}
    for mode in [m for m in a.ours.split(",") if m]:
        t = time.perf_counter()
        run = bench.make_runner(model, mode, x)
        run(x)
        engines[f"ours:{mode}"] = run
        print(f"ours:{mode}: ready in {time.perf_counter() - t:.1f} s (precision {getattr(run, 'precision', 'fp32')}, "
              f"backend {getattr(run, 'backend', 'torch')})")
        if getattr(run, "choice", None) is not None:
            print(f"  {run.choice.describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "pspnet.onnx")
        calib = [x.numpy()] + [torch.randn(1, 3, *size, generator=g).numpy() for _ in range(a.calib)]
        engines.update(openvino_engines(onnx_path, (1, 3, *size), [q for q in a.openvino.split(",") if q], calib,
                                        torch.get_num_threads()))
        with torch.no_grad():
            reference = model(x).argmax(1)
            for _ in range(a.warmup):
                for run in engines.values():
                    run(x)
            times: dict[str, list[float]] = {k: [] for k in engines}
            for _ in range(a.reps):
                for name, run in engines.items():
                    t = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - t)
            agreement = {k: float((run(x).argmax(1) == reference).float().mean()) for k, run in engines.items()}
    print(f"PSPNet-{a.depth} {size[0]}x{size[1]}, {a.classes} classes, batch 1, {a.reps} alternating rounds "
          f"after {a.warmup} warm-up")
    med = {k: statistics.median(v) for k, v in times.items()}
    ov_bf16 = med.get("ov-bf16")
    print(f"  {'engine':<22s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s} {'vs ov-bf16':>10s} "
          f"{'argmax vs fp32':>15s}")
    for k, v in times.items():
        ratio = f"{ov_bf16 / med[k]:9.2f}x" if ov_bf16 else f"{'-':>10s}"
        print(f"  {k:<22s} {med[k] * 1000:10.1f} {min(v) * 1000:8.1f} {max(v) * 1000:8.1f} {ratio} "
              f"{agreement[k] * 100:14.2f}%")
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": bench.machine_info(), "openvino": openvino.__version__,
                                           "times_s": times, "median_s": med, "agreement": agreement}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
