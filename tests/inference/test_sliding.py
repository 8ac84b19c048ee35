"""Sliding-window, multi-scale and flip inference with models whose outputs are known functions."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pspnet.inference.sliding import sliding_window, window_starts
from pspnet.inference.testtime import base_resize_shape, predict_logits


class Pointwise(nn.Module):
    """A 1x1 convolution: translation-equivariant, so stitched windows must equal the whole image."""

    def __init__(self, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, classes, 1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.conv(x)


class LocalCoords(nn.Module):
    """Conv-free: channel 0 = window row index, 1 = window column index, 2 = mean of the window's
    first input channel. Not equivariant, so the stitched result is checked against brute force."""

    def forward(self, x):
        n, _, h, w = x.shape
        ys = torch.arange(h, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
        mean = x[:, :1].mean((2, 3), keepdim=True).expand(n, 1, h, w)
        return torch.cat([ys, xs, mean], 1)


def brute_force(model, x, crop, stride_rate):
    """Reference stitching: pad (centred, zeros), loop over every window, average per pixel."""
    ch, cw = crop
    n, _, h, w = x.shape
    ph, pw = max(ch, h), max(cw, w)
    top, left = (ph - h) // 2, (pw - w) // 2
    padded = torch.zeros(n, x.shape[1], ph, pw, dtype=x.dtype)
    padded[:, :, top:top + h, left:left + w] = x
    sh, sw = math.ceil(ch * stride_rate), math.ceil(cw * stride_rate)
    gh = max(math.ceil((ph - ch) / sh), 0) + 1
    gw = max(math.ceil((pw - cw) / sw), 0) + 1
    acc, cnt = None, torch.zeros(ph, pw, dtype=x.dtype)
    for i in range(gh):
        for j in range(gw):
            y0 = min(i * sh, ph - ch)
            x0 = min(j * sw, pw - cw)
            out = model(padded[:, :, y0:y0 + ch, x0:x0 + cw])
            if acc is None:
                acc = torch.zeros(n, out.shape[1], ph, pw, dtype=x.dtype)
            acc[:, :, y0:y0 + ch, x0:x0 + cw] += out
            cnt[y0:y0 + ch, x0:x0 + cw] += 1
    return (acc / cnt)[:, :, top:top + h, left:left + w]


@given(length=st.integers(1, 400), crop=st.integers(1, 120), rate=st.sampled_from([1 / 3, 0.5, 2 / 3, 1.0]))
@settings(max_examples=200, deadline=None)
def test_window_starts_cover_every_pixel(length, crop, rate):
    length = max(length, crop)  # sliding_window pads up to the crop first
    stride = math.ceil(crop * rate)
    starts = window_starts(length, crop, stride)
    assert starts[0] == 0 and starts[-1] + crop == length
    assert all(0 <= b - a <= stride for a, b in zip(starts, starts[1:]))
    assert len(starts) == math.ceil((length - crop) / stride) + 1


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (20, 90), (10, 12), (100, 41)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_equivariant_model_stitched_equals_whole(hw, batch_size):
    model = Pointwise().eval()
    x = torch.randn(2, 3, *hw)
    whole = model(x)
    model.calls.clear()
    stitched = sliding_window(model, x, (24, 32), 2 / 3, batch_size=batch_size)
    assert stitched.shape == whole.shape
    torch.testing.assert_close(stitched, whole, rtol=0, atol=1e-5)
    # memory bound: never more than batch_size window positions (x 2 images) per forward pass
    assert all(c[0] <= 2 * batch_size and c[-2:] == (24, 32) for c in model.calls)


@pytest.mark.parametrize("hw,crop", [((37, 53), (16, 20)), ((9, 70), (16, 16)), ((50, 50), (50, 50)),
                                     ((61, 29), (24, 24))])
@pytest.mark.parametrize("rate", [2 / 3, 0.5])
def test_position_dependent_model_matches_brute_force(hw, crop, rate):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, *hw, generator=g, dtype=torch.float64)
    model = LocalCoords()
    got = sliding_window(model, x, crop, rate, batch_size=2)
    ref = brute_force(model, x, crop, rate)
    torch.testing.assert_close(got, ref.float(), rtol=0, atol=1e-5)


def test_padding_is_centred_zeros():
    seen = []
    model = lambda t: (seen.append(t.clone()), t)[1]  # noqa: E731  identity that records its input
    x = torch.ones(1, 3, 10, 7)
    out = sliding_window(model, x, (16, 12))
    assert len(seen) == 1 and seen[0].shape == (1, 3, 16, 12)
    ref = torch.zeros(1, 3, 16, 12)
    ref[:, :, 3:13, 2:9] = 1  # (16 - 10) // 2 = 3 rows above, (12 - 7) // 2 = 2 columns left
    assert torch.equal(seen[0], ref)
    assert torch.equal(out, x)


def test_predict_logits_sliding_equals_whole_for_equivariant_model():
    model = Pointwise(classes=5).eval()
    images = torch.randint(0, 256, (1, 3, 45, 70), dtype=torch.uint8)
    kw = dict(scales=(0.75, 1.0), flip=True)
    whole = predict_logits(model, images, mode="whole", **kw)
    sliding = predict_logits(model, images, mode="sliding", crop_size=(24, 24), **kw)
    torch.testing.assert_close(sliding, whole, rtol=0, atol=1e-5)
    assert whole.shape == (1, 5, 45, 70)
    torch.testing.assert_close(whole.sum(1), torch.ones(1, 45, 70))  # averaged probabilities


def test_flip_is_undone_before_averaging():
    # LocalCoords' column channel is x (unflipped pass) and x again on the flipped input, which must be
    # flipped back to (w - 1 - x): the average is (w - 1) / 2 everywhere.
    images = torch.zeros(1, 3, 8, 11, dtype=torch.uint8)
    out = predict_logits(LocalCoords(), images, flip=True, softmax=False, protocol="logit-average")
    torch.testing.assert_close(out[0, 1], torch.full((8, 11), 5.0))
    torch.testing.assert_close(out[0, 0], torch.arange(8.0).view(8, 1).expand(8, 11))
    no_flip = predict_logits(LocalCoords(), images, flip=False, softmax=False, protocol="logit-average")
    torch.testing.assert_close(no_flip[0, 1], torch.arange(11.0).expand(8, 11))


def test_scales_and_base_size_resize_the_input():
    model = Pointwise().eval()
    images = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    out = predict_logits(model, images, base_size=64, scales=(0.5, 1.0))
    assert [c[-2:] for c in model.calls] == [(21, 32), (43, 64)]
    assert out.shape == (1, 4, 32, 48)
    assert base_resize_shape(32, 48, None, 1.5) == (48, 72)
    with pytest.raises(ValueError, match="mode"):
        predict_logits(model, images, mode="tiles")
