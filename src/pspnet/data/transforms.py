"""Training augmentation of the paper (Sec. 4.1) and the original release, and normalisation.

Train: random scale in [0.5, 2.0], random rotation in [-10, 10] degrees (image filled with the
mean, label with ignore), random Gaussian blur, horizontal flip, random crop to the crop size
(image padded with the mean, label with ignore). Validation: no augmentation.
Optional, not in the paper: colour jitter (``color_jitter``), off by default.

Built on albumentations (OpenCV kernels, fast; why: docs/data.md); labels are only ever resampled
with nearest neighbour, so no new label value can appear, and image and label stay aligned
(tests/data/test_transforms.py checks both with hypothesis).
Images stay uint8 HWC through augmentation; :func:`normalize` turns a uint8 NCHW batch into
ImageNet-normalised floats on the training device, which keeps worker-to-main traffic 4x smaller.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_255 = tuple(round(m * 255) for m in IMAGENET_MEAN)

Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _albumentations():
    """albumentations, imported on first use; it checks PyPI for updates on import unless told not
    to, and a training run must never phone home (set here, where it is needed, not at import)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations
    return albumentations


class TrainTransform:
    """The paper's training augmentation; ``crop_size`` is (height, width).

    ``seed(n)`` fixes the random draws of the next call, so an augmented sample is a function of
    (sample, seed): resumed and distributed runs reproduce the exact same batches.
    """

    def __init__(self, crop_size: Sequence[int], scale: Sequence[float] = (0.5, 2.0), rotate: float = 10.0,
                 blur: bool = True, flip: bool = True, ignore_index: int = IGNORE_INDEX,
                 color_jitter: float = 0.0) -> None:
        ch, cw = int(crop_size[0]), int(crop_size[1])
        smin, smax = float(scale[0]), float(scale[1])
        if not 0 < smin <= smax:
            raise ValueError(f"scale range must satisfy 0 < min <= max, got {scale!r}")
        import cv2
        A = _albumentations()
        ops: list = []
        if (smin, smax) != (1.0, 1.0):
            # INTER_NEAREST_EXACT, not INTER_NEAREST: OpenCV's plain nearest resize samples pixel
            # corners and shifts the label by up to one pixel (about +0.46 px on average) against
            # the bilinear image; the exact variant samples pixel centres like INTER_LINEAR does.
            ops.append(A.RandomScale(scale_limit=(smin - 1.0, smax - 1.0), interpolation=cv2.INTER_LINEAR,
                                     mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0))
        if rotate:
            ops.append(A.Rotate(limit=(-rotate, rotate), interpolation=cv2.INTER_LINEAR,
                                mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                                fill=MEAN_255, fill_mask=ignore_index, p=0.5))
        if blur:
            ops.append(A.GaussianBlur(blur_limit=(5, 5), sigma_limit=(0.1, 2.0), p=0.5))
        if flip:
            ops.append(A.HorizontalFlip(p=0.5))
        if color_jitter:
            # before the padding, so padded pixels stay the mean; the label is never touched
            ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                     hue=min(0.5, color_jitter / 6), p=0.8))
        ops += [A.PadIfNeeded(min_height=ch, min_width=cw, position="center", border_mode=cv2.BORDER_CONSTANT,
                              fill=MEAN_255, fill_mask=ignore_index),
                A.RandomCrop(ch, cw)]
        self.pipeline = A.Compose(ops)

    def seed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.pipeline(image=image, mask=label)
        return out["image"], out["mask"]



def identity_transform(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validation / test: no augmentation."""
    return image, label


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HxWx3 image and HxW label -> uint8 3xHxW tensor and int64 HxW tensor."""
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return img, torch.from_numpy(np.ascontiguousarray(label)).long()


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (or 0-255 float) N x 3 x H x W -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (images.to(dtype) - mean) / std
