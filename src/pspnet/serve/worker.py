"""The service's inference queue: one worker thread runs the model, off the event loop, one request at a
time in arrival order; at most ``queue_size`` requests wait behind the running one, and more are refused
at once (HTTP 503 with ``Retry-After``), before their bodies are read, so memory stays bounded under load.

One thread is the fastest arrangement on a CPU: the network already uses every core for one image
(intra-op threads), so a second image at the same time only halves each one's share; the queue costs
the service next to nothing against ``pspnet predict`` (docs/benchmarks.md, "pspnet serve under load").
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Busy", "InferenceQueue"]

T = TypeVar("T")


class Busy(Exception):
    """The queue is full: retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(f"the server is busy ({waiting} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class InferenceQueue:
    """Admission (:meth:`admit`, on the event loop) and the worker thread (:meth:`run`)."""

    def __init__(self, queue_size: int = 32) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.queue_size = queue_size
        self.admitted = 0  # running + waiting; changed on the event loop only
        self.served = 0
        self.refused = 0
        self._seconds = 1.0  # a running mean of one request's time in the worker, for Retry-After
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pspnet-inference")
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return max(self.admitted - 1, 0)

    def admit(self) -> None:
        """Take a place in the queue, or raise :class:`Busy` (no await between the check and the count)."""
        if self.admitted >= self.queue_size + 1:
            self.refused += 1
            raise Busy(max(1, math.ceil(self.admitted * self._seconds)), self.waiting)
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker thread; the event loop stays free (``/healthz`` answers meanwhile)."""
        def timed() -> T:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - start)
                    self.served += 1
        return await asyncio.get_running_loop().run_in_executor(self._executor, timed)

    def stats(self) -> dict[str, int]:
        return {"running": min(self.admitted, 1), "waiting": self.waiting, "served": self.served,
                "refused": self.refused}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
