"""The machine a benchmark ran on: CPU, cores, what the runtime runs natively, library versions."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from .. import capability, cpu


def machine_info() -> dict[str, Any]:
    """CPU model, core count, what the runtime runs natively (:mod:`pspnet.capability`), the flags
    ``/proc/cpuinfo`` lists (a hint), and library versions."""
    caps = capability.capabilities()
    bf16, why = cpu.bf16_decision()
    return {"cpu": cpu.cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "flags": cpu.reported_flags(), "simulated": caps.facts.simulated,
            "native": [f"{p}/{b}" for p, row in caps.table().items() for b, c in row.items() if c.native],
            "onednn_max_isa": cpu.onednn_isa_cap(),
            "auto_precision": "bf16" if bf16 else "fp32", "auto_precision_why": why,
            "torch": torch.__version__, "onednn": cpu.onednn_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onnxruntime": cpu.onnxruntime_version(), "openvino": cpu.openvino_version(),
            "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def format_machine(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    openvino = f"openvino {info['openvino']}, " if info.get("openvino") else ""
    simulated = f" (simulated: {capability.SIMULATE_ENV}={info['simulated']})" if info.get("simulated") else ""
    return (f"machine: {info['cpu']}, {info['cores']} cores, torch threads {info['threads']}; "
            f"flags in /proc/cpuinfo: {' '.join(info['flags']) or '(none of interest)'}; "
            f"native here{simulated}: {' '.join(info.get('native', [])) or 'fp32/torch'}"
            f"{'; oneDNN capped at ' + info['onednn_max_isa'] if info.get('onednn_max_isa') else ''}; "
            f"auto precision {info.get('auto_precision')} ({info.get('auto_precision_why')}); torch {info['torch']} "
            f"({info['cpu_capability']}), onnxruntime {info['onnxruntime']}, "
            f"{openvino}python {info['python']}; "
            f"load average (1 min) at start {info['load_average_1m']}")
