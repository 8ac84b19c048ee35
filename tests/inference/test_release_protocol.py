"""``protocol="release"`` reproduces the original release's test procedure (hszhao/semseg ``tool/test.py``).

The reference below is our own port of that procedure, written from its description and kept in
the release's terms: HxWx3 float RGB images in 0-255, OpenCV resizes (``INTER_LINEAR``: half-pixel
centres), ``copyMakeBorder`` padding with the mean, a softmax per window with the flipped window
averaged in inside the window, window probabilities averaged, padding cut, resized back with
OpenCV, the mean over scales. The model is a small PSPNet with sharpened logits, whose output
depends on where the window is (padding, pyramid pooling), so stitching or resizing mistakes show.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pspnet.inference.testtime import predict_logits, release_resize_shape
from pspnet.models import PSPNet

cv2 = pytest.importorskip("cv2")

# the release's tool/test.py constants, written out (not imported from pspnet)
MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def _net_process(model, image: np.ndarray, flip: bool) -> np.ndarray:
    x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()
    for t, m, s in zip(x, MEAN, STD):
        t.sub_(m).div_(s)
    x = x.unsqueeze(0)
    if flip:
        x = torch.cat([x, x.flip(3)], 0)
    with torch.no_grad():
        out = model(x)
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, x.shape[-2:], mode="bilinear", align_corners=True)
    out = F.softmax(out, dim=1)
    out = (out[0] + out[1].flip(2)) / 2 if flip else out[0]
    return out.numpy().transpose(1, 2, 0).astype(np.float64)


def _scale_process(model, image, classes, crop_h, crop_w, h, w, stride_rate, flip) -> np.ndarray:
    ori_h, ori_w, _ = image.shape
    pad_h, pad_w = max(crop_h - ori_h, 0), max(crop_w - ori_w, 0)
    pad_h_half, pad_w_half = int(pad_h / 2), int(pad_w / 2)
    if pad_h > 0 or pad_w > 0:
        image = cv2.copyMakeBorder(image, pad_h_half, pad_h - pad_h_half, pad_w_half, pad_w - pad_w_half,
                                   cv2.BORDER_CONSTANT, value=MEAN)
    new_h, new_w, _ = image.shape
    stride_h, stride_w = int(np.ceil(crop_h * stride_rate)), int(np.ceil(crop_w * stride_rate))
    grid_h = int(np.ceil(float(new_h - crop_h) / stride_h) + 1)
    grid_w = int(np.ceil(float(new_w - crop_w) / stride_w) + 1)
    prediction = np.zeros((new_h, new_w, classes), dtype=np.float64)
    count = np.zeros((new_h, new_w), dtype=np.float64)
    for ih in range(grid_h):
        for iw in range(grid_w):
            e_h = min(ih * stride_h + crop_h, new_h)
            e_w = min(iw * stride_w + crop_w, new_w)
            s_h, s_w = e_h - crop_h, e_w - crop_w
            count[s_h:e_h, s_w:e_w] += 1
            prediction[s_h:e_h, s_w:e_w, :] += _net_process(model, image[s_h:e_h, s_w:e_w].copy(), flip)
    prediction /= np.expand_dims(count, 2)
    prediction = prediction[pad_h_half:pad_h_half + ori_h, pad_w_half:pad_w_half + ori_w]
    return cv2.resize(prediction, (w, h), interpolation=cv2.INTER_LINEAR)


def release_test(model, image: np.ndarray, classes: int, base_size: int, scales, crop, stride_rate, flip):
    """Probabilities H x W x C of the release's procedure; ``crop=None`` means one window per scale."""
    h, w, _ = image.shape
    prediction = np.zeros((h, w, classes), dtype=np.float64)
    for scale in scales:
        long_size = round(scale * base_size)
        new_h, new_w = long_size, long_size
        if h > w:
            new_w = round(long_size / float(h) * w)
        else:
            new_h = round(long_size / float(w) * h)
        image_scale = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        crop_h, crop_w = crop if crop is not None else (new_h, new_w)
        prediction += _scale_process(model, image_scale, classes, crop_h, crop_w, h, w, stride_rate, flip)
    return prediction / len(scales)


@pytest.fixture(scope="module")
def model(tiny_pspnet) -> PSPNet:
    net = tiny_pspnet(5, aux=False)
    with torch.no_grad():
        net.cls[-1].weight.mul_(30)  # sharp, image-dependent probabilities instead of near-uniform ones
    return net.eval()


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
                   + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.float32)


CASES = [  # (h, w, base_size, scales, mode, crop, flip)
    (45, 61, 64, (1.0,), "whole", None, False),
    (45, 61, 64, (1.0,), "whole", None, True),
    (70, 50, 57, (0.5, 0.75, 1.25), "whole", None, True),
    (61, 83, 96, (1.0,), "sliding", (40, 48), False),
    (61, 83, 80, (0.75, 1.0, 1.5), "sliding", (48, 48), True),
    (37, 90, 41, (1.0, 1.75), "sliding", (32, 40), True),  # scaled images smaller than the crop: padded
]


@pytest.mark.parametrize("h, w, base, scales, mode, crop, flip", CASES)
def test_release_protocol_matches_port(model, h, w, base, scales, mode, crop, flip):
    image = _image(h, w, seed=h * w)
    ref = release_test(model, image, 5, base, scales, crop, 2 / 3, flip)
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    got = predict_logits(model, x, base_size=base, scales=scales, flip=flip, mode=mode, crop_size=crop,
                         protocol="release")[0].numpy().transpose(1, 2, 0)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3
    assert (got.argmax(2) == ref.argmax(2)).mean() > 0.999
    assert ref.max() > 0.9 and np.abs(ref - 1 / 5).max() > 0.5  # the probabilities are far from uniform


def test_other_averaging_is_not_the_release(model):
    """The port tells the procedures apart: pspnet 0.1's logit averaging with align_corners=True
    resizes is outside the bound on a multi-scale sliding case (so the test above can fail)."""
    h, w, base, scales, mode, crop, flip = CASES[4]
    image = _image(h, w, seed=h * w)
    ref = release_test(model, image, 5, base, scales, crop, 2 / 3, flip)
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    old = predict_logits(model, x, base_size=base, scales=scales, flip=flip, mode=mode, crop_size=crop,
                         protocol="logit-average")[0].numpy().transpose(1, 2, 0)
    assert np.abs(old - ref).max() > 1e-2


@pytest.mark.parametrize("h, w, base, scale", [(360, 480, 240, 1.0), (480, 360, 240, 0.75), (97, 131, 473, 1.25),
                                               (50, 50, 65, 0.5), (1024, 2048, 2048, 1.0)])
def test_release_resize_shape(h, w, base, scale):
    long_size = round(scale * base)
    expected = (long_size, round(long_size / h * w)) if h > w else (round(long_size / w * h), long_size)
    assert release_resize_shape(h, w, base, scale) == expected
    assert release_resize_shape(h, w, None, 1.0) == (h, w)


def test_tiny_image_refused_for_every_runner(model):
    """A 3x3 image is refused before any base-size resize, by the plain model and a prepared runner."""
    from pspnet.errors import DataError
    from pspnet.inference.prepare import prepare_for_inference
    x = torch.full((1, 3, 3, 3), 128.0)
    for runner in (model, prepare_for_inference(model, precision="fp32")):
        for protocol in ("release", "logit-average"):
            with pytest.raises(DataError, match="3x3 pixels is too small"):
                predict_logits(runner, x, base_size=240, protocol=protocol)
    assert math.isfinite(float(predict_logits(model, torch.full((1, 3, 8, 8), 128.0), base_size=16).sum()))
