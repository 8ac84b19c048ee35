"""Process groups from the environment ``torchrun`` provides (one machine or many): set-up and
teardown, the rank's device, the few collectives training and inference use, and how inference
splits a list of items across ranks (:func:`shard`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | None = None) -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1); this rank's device.

    Backend: NCCL on CUDA, gloo on CPU. ``device``: "cpu", "cuda" or None (CUDA when available);
    CUDA ranks take GPU ``LOCAL_RANK``. A bad device or launch is a :class:`ConfigError`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None and device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU "
                            f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
    if want_cuda and local >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s); "
                            f"launch at most that many processes per node (torchrun --nproc_per_node)")
    dev = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world} but MASTER_ADDR is not set: launch several processes "
                              f"with torchrun (docs/training.md, docs/evaluation.md)")
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return DistInfo(rank, world, dev)


def cleanup() -> None:
    """Leave the process group (if any), so a later run in this process can start its own."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left alone). Identity when not distributed."""
    if is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request)."""
    if not is_initialized():
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device)).item() > 0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable, small), in rank order, on every rank."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """This rank's items: every ``world_size``-th from ``rank`` (rank r of W takes r, r + W, ...), so each
    item goes to exactly one rank and the counts differ by at most one."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return items[rank::world_size]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group; ``(0, 1)`` when there is none."""
    if not is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()
