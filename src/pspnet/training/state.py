"""What exact resume needs besides the weights: seeding, every RNG's state, and the checkpoint file.

A checkpoint (``last.pt``) holds the model, optimiser and scaler states, the iteration, the log
history and each rank's RNG states; it is written atomically (a killed writer leaves the previous
file) and read with ``torch.load(weights_only=True)``, so a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError
from ..files import atomic_write
from ..models.weights import _load_pickle

CHECKPOINT_NAME = "last.pt"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic  # fixed crop sizes: let cuDNN pick the fastest kernels
    if deterministic:
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def seed_rank(seed: int, rank: int, iteration: int = 0) -> None:
    """Per-rank torch seed: DDP copies rank 0's initial weights to every rank, but dropout masks
    should differ per rank (``iteration``: a resumed run that cannot restore each rank's state)."""
    torch.manual_seed(seed + 1_000_003 * rank + iteration)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA when in use, Python, NumPy) for exact resume."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (as read back by ``weights_only`` loading)."""
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def restore_rng(ckpt: dict[str, Any], *, rank: int, world_size: int, seed: int) -> bool:
    """Set this process's RNG states from a checkpoint; False when it was written by another number
    of processes (the data order is still the same, but dropout masks are then re-seeded per rank)."""
    ranks = ckpt.get("rng_ranks")
    if ranks is not None and len(ranks) == world_size:
        set_rng_state(ranks[rank])
        return True
    set_rng_state(ckpt["rng"])
    if world_size > 1:
        seed_rank(seed, rank, int(ckpt["iteration"]))
    return world_size == int(ckpt.get("world_size", 1))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: on any failure the previous file at ``path`` is left as it was."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        raise TrainingError(f"{path}: could not write the checkpoint ({e}); the previous {path.name}, if any, is "
                            f"unchanged. Free disk space and resume with --resume {path}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: checkpoint not found (--resume expects the last.pt of a run's output_dir)")
    ckpt = _load_pickle(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
        raise TrainingError(f"{path}: not a pspnet training checkpoint (expected keys 'model', 'iteration'); "
                            f"to start from weights only, set train.pretrained={path}")
    return ckpt
