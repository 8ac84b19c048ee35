"""The training data order: which sample each rank draws, with which augmentation seed, in which batch.

The sample order of each epoch and the augmentation of each sample are functions of (seed, epoch,
position), so a run resumed from a checkpoint at iteration k continues exactly as the uninterrupted
run would, and N DDP ranks see together the same global batches as one process with N times the
batch. Unreadable files (``data.skip_bad``) are replaced deterministically and reported with the batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.datasets import SegmentationDataset
from ..data.transforms import TrainTransform, to_tensors
from ..errors import DataError

BAD_SEP = "\x1e"  # separates skipped-file messages inside one sample (messages may contain newlines)


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for this rank: a permutation seeded by (seed, epoch), split
    across ranks as ``perm[rank::world]``, starting at ``start`` samples into the rank's share.

    Only full global batches (``batch_size`` x ``world_size`` samples) are drawn, so global batch
    ``s`` is the set of permutation positions ``[s*B*W, (s+1)*B*W)`` whatever the number of ranks:
    N ranks together see exactly the batches one process with N times the batch sees.
    """

    def __init__(self, length: int, *, seed: int, rank: int = 0, world_size: int = 1, batch_size: int = 1) -> None:
        self.length, self.seed, self.rank, self.world, self.batch_size = length, seed, rank, world_size, batch_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return (self.length // (self.world * self.batch_size)) * self.batch_size

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.length, generator=g)
        positions = range(self.rank, self.per_rank() * self.world, self.world)
        for j, pos in enumerate(positions):
            if j < self.start:
                continue
            # the seed depends on the global position, so DDP and single-process runs agree
            yield int(perm[pos]), (self.seed * 7_919 + self.epoch * 1_000_003 + pos) % (2 ** 31)


class SeededAugment(Dataset):
    """Applies the training augmentation with a per-sample seed from :class:`EpochSampler`.

    With ``skip_bad`` an unreadable sample is replaced by the next readable one (deterministically)
    and items are ``(image, label, skipped)``, ``skipped`` being the DataError messages joined by
    :data:`BAD_SEP`: the report travels with the batch, so files skipped inside DataLoader worker
    processes reach the main process, which counts and lists them.
    """

    def __init__(self, base: SegmentationDataset, transform: TrainTransform, skip_bad: bool = False) -> None:
        self.base, self.transform, self.skip_bad = base, transform, skip_bad

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        skipped: list[str] = []
        for attempt in range(len(self.base)):
            try:
                image, label = self._augmented((index + attempt) % len(self.base), seed)
                break
            except DataError as e:
                if not self.skip_bad:
                    raise
                skipped.append(str(e))
        else:
            raise DataError(f"every one of the {len(self.base)} training samples failed to load, e.g. {skipped[0]}")
        image, label = to_tensors(image, label)
        return (image, label, BAD_SEP.join(skipped)) if self.skip_bad else (image, label)

    def _augmented(self, index: int, seed: int):
        image, label = self.base.load(index)
        self.transform.seed(seed)
        try:
            return self.transform(image, label)
        except (cv2.error, ValueError) as e:  # e.g. a 1-pixel-wide image scaled by 0.5 has no pixel left
            name = self.base.pairs[index][0]
            raise DataError(f"{name}: the training augmentation failed on this {image.shape[1]}x{image.shape[0]} "
                            f"image ({type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}); is it too small?"
                            ) from None


def epoch_loader(dataset: SeededAugment, sampler: EpochSampler, *, epoch: int, start: int, batch_size: int,
                 seed: int, workers: int, pin_memory: bool) -> DataLoader:
    """The batches of ``epoch`` from its ``start``-th batch on (a resumed run starts mid-epoch)."""
    sampler.set_epoch(epoch, start * batch_size)
    # its own generator: creating an iterator must not draw from the global RNG (dropout), or a
    # run resumed mid-epoch would see other dropout masks than the uninterrupted run
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, persistent_workers=False, prefetch_factor=4 if workers else None,
                      generator=gen, worker_init_fn=_single_threaded_opencv if workers else None)


def _single_threaded_opencv(worker_id: int) -> None:
    """DataLoader workers provide the parallelism: OpenCV's own threads in each worker would only
    oversubscribe the cores (set in the worker, so the user's process keeps its setting)."""
    cv2.setNumThreads(0)


def worker_error(e: DataError) -> DataError:
    """A DataError re-raised by a DataLoader worker carries the worker's whole traceback as its
    message; keep only our own message (which names the file and the problem)."""
    text = str(e)
    if "Original Traceback" not in text or "DataError: " not in text:
        return e
    return DataError(text.rsplit("DataError: ", 1)[1].strip())
