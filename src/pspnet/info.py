"""``pspnet info``: what a user pastes into a bug report. Versions, the CPU, and for each precision whether it
runs here and why not (:mod:`pspnet.capability`), and which mode ``auto`` runs the packaged model in. No timing
probe runs: where only a probe can decide, it says so, and what a cached probe found."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from . import capability, cpu
from .errors import PSPNetError
from .version import __version__

__all__ = ["PREDICT_SHAPE", "collect", "format_info"]

PREDICT_SHAPE = (2, 3, 360, 480)
"""The input ``pspnet predict`` gives the packaged model for a CamVid frame (960x720 at its recorded base size
480, the mirrored image batched with it): the shape ``auto``'s probe is cached at for that job."""


def _auto_for_packaged() -> dict[str, Any]:
    """Which mode ``auto`` runs the packaged model in, and where that came from: the CPU's capabilities,
    a cached probe, or a probe still to run on the first image (nothing is timed here)."""
    from .inference.auto import (
        FEW_CALLS,
        auto_cache_path,
        cached_choice,
        candidates,
        choose_from_features,
        recorded_int8_agreements,
    )
    from .models import PSPNetConfig
    from .models.pretrained import default_weights_path
    from .models.weights import read_metadata
    device = torch.device("cpu")
    try:
        meta = read_metadata(default_weights_path())
        config = PSPNetConfig.from_dict(meta["config"])
    except (PSPNetError, KeyError, TypeError, ValueError) as e:
        return {"mode": None, "source": f"the packaged model could not be read: {e}"}
    agreements = recorded_int8_agreements(meta)
    decided = choose_from_features(device, agreements)
    if decided is not None:
        return {"mode": decided.mode, "source": "capabilities", "why": decided.reason}
    modes, _ = candidates(device, agreements)
    found = cached_choice(config, PREDICT_SHAPE, modes)
    names = ", ".join(f"{p}/{b}" for p, b in modes)
    first = f"{modes[0][0]}/{modes[0][1]}"
    if found is not None:
        return {"mode": found.mode, "source": f"cached probe ({auto_cache_path()})", "why": found.describe()}
    return {"mode": first, "source": "not probed yet",
            "why": f"more than {FEW_CALLS} images: a probe times {names} on the first one (then cached); up to "
                   f"{FEW_CALLS} images: {first}, as here"}


def collect() -> dict[str, Any]:
    """Everything ``pspnet info`` prints, as a JSON-ready dict."""
    caps = capability.capabilities()
    facts = caps.facts
    table = caps.table()
    precisions = {}
    for p, row in table.items():
        best = caps.best(p)
        entry: dict[str, Any] = {"runs": best.runs, "native": best.native}
        if not best.native:
            entry["why"] = best.why
        entry["backends"] = {b: c.to_dict() for b, c in row.items()}
        precisions[p] = entry
    auto = _auto_for_packaged()
    return {"pspnet": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "onnxruntime": facts.onnxruntime, "openvino": facts.openvino,
            "torchao": facts.torchao,
            "cpu": {"model": cpu.cpu_model(), "machine": facts.machine, "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch_cpu_capability": facts.isa,
                    "avx2": facts.avx2, "avx512": facts.avx512, "avx512_bf16": facts.avx512_bf16,
                    "amx": facts.amx, "vnni": facts.vnni, "flags_in_proc_cpuinfo": cpu.reported_flags(),
                    "onednn_max_isa": cpu.onednn_isa_cap(), "simulated": facts.simulated},
            "cuda": torch.cuda.is_available(),
            "precisions": precisions, "auto": auto["mode"], "auto_source": auto["source"],
            "auto_why": auto.get("why")}


def format_info(info: dict[str, Any]) -> str:
    c = info["cpu"]
    lines = [f"pspnet {info['pspnet']}, Python {info['python']} ({info['platform']})",
             f"torch {info['torch']}, onnxruntime {info['onnxruntime'] or 'not installed'}, "
             f"openvino {info['openvino'] or 'not installed'}, torchao {info['torchao'] or 'not installed'}",
             f"CPU: {c['model']} ({c['machine']}), {c['cores']} cores, torch threads {c['torch_threads']}, "
             f"PyTorch CPU capability {c['torch_cpu_capability']}"
             + (f"; simulated: {capability.SIMULATE_ENV}={c['simulated']}" if c["simulated"] else "")
             + (f"; oneDNN capped at {c['onednn_max_isa']}" if c["onednn_max_isa"] else ""),
             "  the runtime reports: " + ", ".join(f"{k} {'yes' if c[k] else 'no'}"
                                                  for k in ("avx2", "avx512", "avx512_bf16", "amx", "vnni")),
             f"CUDA: {'available' if info['cuda'] else 'not available'}", "precisions (backend: runs here?):"]
    for p, entry in info["precisions"].items():
        state = "native" if entry["native"] else ("runs, not natively" if entry["runs"] else "does not run")
        lines.append(f"  {p:<5s} {state}")
        for b, cap in entry["backends"].items():
            mark = "native" if cap["native"] else ("runs" if cap["runs"] else "no")
            lines.append(f"        {b:<12s} {mark}" + (f": {cap['why']}" if cap.get("why") else ""))
    lines.append(f"auto for the packaged model: {info['auto']} ({info['auto_source']})")
    if info.get("auto_why"):
        lines.append(f"  {info['auto_why']}")
    return "\n".join(lines)
