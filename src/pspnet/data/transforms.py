"""Training augmentation of the paper (Sec. 4.1) and the original release, and normalisation.

Train: random scale in [0.5, 2.0], random rotation in [-10, 10] degrees (image filled with the
mean, label with ignore), random Gaussian blur, horizontal flip, random crop to the crop size
(image padded with the mean, label with ignore). Validation: no augmentation.
Optional, not in the paper, both off by default: colour jitter (``color_jitter``), and crops that favour
rare classes (``focus_classes``, ``focus_prob``): the class-uniform sampling of Zhu et al., CVPR 2019
("Improving Semantic Segmentation via Video Propagation and Label Relaxation"), so that thin
classes such as pole and sign are in more of the crops a step sees.

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

    With ``focus_classes`` and ``focus_prob`` > 0, that share of crops is placed around one of those
    classes (one present in the augmented label, chosen uniformly, then one of its pixels, which lands
    anywhere inside the window); the other crops, and labels with none of the classes, are uniform.
    """

    def __init__(self, crop_size: Sequence[int], scale: Sequence[float] = (0.5, 2.0), rotate: float = 10.0,
                 blur: bool = True, flip: bool = True, ignore_index: int = IGNORE_INDEX,
                 color_jitter: float = 0.0, focus_classes: Sequence[int] = (), focus_prob: float = 0.0) -> None:
        ch, cw = int(crop_size[0]), int(crop_size[1])
        smin, smax = float(scale[0]), float(scale[1])
        if not 0 < smin <= smax:
            raise ValueError(f"scale range must satisfy 0 < min <= max, got {scale!r}")
        if not 0.0 <= focus_prob <= 1.0:
            raise ValueError(f"focus_prob must be in [0, 1], got {focus_prob!r}")
        self.crop_size = (ch, cw)
        self.focus_classes = tuple(int(c) for c in focus_classes)
        self.focus_prob = float(focus_prob) if self.focus_classes else 0.0
        self._rng = np.random.default_rng(0)
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
        ops.append(A.PadIfNeeded(min_height=ch, min_width=cw, position="center", border_mode=cv2.BORDER_CONSTANT,
                                 fill=MEAN_255, fill_mask=ignore_index))
        if not self.focus_prob:  # albumentations' crop: the draws of runs without focus stay as they were
            ops.append(A.RandomCrop(ch, cw))
        self.pipeline = A.Compose(ops)

    def seed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)
        self._rng = np.random.default_rng([seed, 1])  # the crop's own stream, apart from albumentations'

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.pipeline(image=image, mask=label)
        image, label = out["image"], out["mask"]
        if self.focus_prob:
            top, left = self._crop_origin(label)
            ch, cw = self.crop_size
            image, label = image[top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
        return image, label

    def _crop_origin(self, label: np.ndarray) -> tuple[int, int]:
        """Top-left corner of the crop in a label at least the crop's size (padded): around a focus class's
        pixel with probability ``focus_prob``, else uniform."""
        (ch, cw), (h, w) = self.crop_size, label.shape[:2]
        rng = self._rng
        if rng.random() < self.focus_prob:
            present = [c for c in self.focus_classes if (label == c).any()]
            if present:
                ys, xs = np.nonzero(label == present[rng.integers(len(present))])
                i = rng.integers(len(ys))
                # the pixel falls at a uniform place in the window, clipped to the label
                top = int(np.clip(ys[i] - rng.integers(ch), 0, h - ch))
                left = int(np.clip(xs[i] - rng.integers(cw), 0, w - cw))
                return top, left
        return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))



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
