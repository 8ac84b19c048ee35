"""The paper's training augmentation (Sec. 4.1) keeps label maps exact and aligned with the image.

* hypothesis: no label value appears that was not in the input or the ignore value, and on a
  synthetic image whose colour encodes its label, every output pixel well inside a labelled
  region has its label's colour;
* the alignment check is shown to catch misalignment (flipping only the image, shifting the label);
* label edges land where the bilinear image edges land (sub-pixel), which the plain OpenCV
  nearest resize fails by ~0.5 px;
* scale range, rotation/crop fill values (mean image, ignore label), seeding;
* crops that favour rare classes (``focus_classes``) contain them, class-uniformly, and stay aligned.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pspnet.data.transforms import TrainTransform, normalize, to_tensors

# ImageNet statistics written out here, not imported: a wrong constant in the code must fail these tests
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MEAN_FILL = (124, 116, 104)  # round(255 * MEAN): the image fill of padding and rotation

IGNORE = 255
# 26 well-separated colours ({0, 120, 240}^3 without the one next to the fill mean (124, 116, 104))
COLOURS = np.array([(r, g, b) for r in (0, 120, 240) for g in (0, 120, 240) for b in (0, 120, 240)
                    if (r, g, b) != (120, 120, 120)], np.uint8)
IGNORE_COLOUR = np.array((240, 240, 240), np.uint8)  # ignore regions have a colour too; never checked


def encode(label: np.ndarray) -> np.ndarray:
    """A synthetic image whose colour is its label's (ignore: a fixed colour)."""
    img = COLOURS[np.minimum(label, len(COLOURS) - 1)]
    img[label == IGNORE] = IGNORE_COLOUR
    return img


def misaligned_pixels(image: np.ndarray, label: np.ndarray, radius: int = 4, tol: int = 3) -> tuple[int, int]:
    """(bad, checked): labelled output pixels whose (2r+1)^2 neighbourhood has one label, and how many
    of them do not have their label's colour.

    ``radius`` covers the 5x5 blur (2 px), bilinear resampling in scale and rotation (1 px each at
    2x) and nearest rounding (0.5 px); pixels closer than ``radius`` to the crop border are not judged.
    """
    lab = label.astype(np.float32)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    lo = cv2.erode(lab, k, borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(lab, k, borderType=cv2.BORDER_REPLICATE)
    interior = (lo == hi) & (label != IGNORE)
    # near the crop border the neighbourhood is unknown (it may hold rotation fill outside the crop)
    interior[:radius], interior[-radius:], interior[:, :radius], interior[:, -radius:] = False, False, False, False
    if not interior.any():
        return 0, 0
    expected = COLOURS[label[interior]]
    diff = np.abs(image[interior].astype(np.int32) - expected.astype(np.int32)).max(axis=1)
    return int((diff > tol).sum()), int(interior.sum())


@st.composite
def label_maps(draw, noise: bool):
    """Blocks of random classes (some ignore); with ``noise``, 5% single-pixel salt-and-pepper."""
    h = draw(st.integers(24, 96))
    w = draw(st.integers(24, 96))
    block = draw(st.integers(4, 24) if noise else st.integers(12, 32))
    classes = draw(st.lists(st.sampled_from(list(range(len(COLOURS))) + [IGNORE]), min_size=1, max_size=8))
    gh, gw = -(-h // block), -(-w // block)
    cells = draw(st.lists(st.sampled_from(classes), min_size=gh * gw, max_size=gh * gw))
    grid = np.array(cells, np.uint8).reshape(gh, gw)
    label = np.ascontiguousarray(np.repeat(np.repeat(grid, block, 0), block, 1)[:h, :w])
    if noise:
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
        salt = rng.random((h, w)) < 0.05
        label[salt] = rng.choice(np.array(classes, np.uint8), size=int(salt.sum()))
    return label


def _augment(label, seed, crop_h, crop_w):
    t = TrainTransform((crop_h, crop_w))
    t.seed(seed)
    image, out = t(encode(label), label)
    assert image.shape == (crop_h, crop_w, 3) and image.dtype == np.uint8
    assert out.shape == (crop_h, crop_w) and out.dtype == label.dtype
    new_values = set(np.unique(out).tolist()) - set(np.unique(label).tolist()) - {IGNORE}
    assert not new_values, f"augmentation created label values {sorted(new_values)}"
    return image, out


CASE = dict(seed=st.integers(0, 2 ** 31 - 1), crop_h=st.integers(8, 72), crop_w=st.integers(8, 72))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label=label_maps(noise=True), **CASE)
def test_augmentation_never_creates_label_values(label, seed, crop_h, crop_w):
    _augment(label, seed, crop_h, crop_w)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(label=label_maps(noise=False), **CASE)
def test_augmentation_keeps_image_and_label_aligned(label, seed, crop_h, crop_w):
    image, out = _augment(label, seed, crop_h, crop_w)
    bad, checked = misaligned_pixels(image, out)
    assume(checked > 0)  # an all-border or all-ignore crop says nothing about alignment
    assert bad == 0, f"{bad} of {checked} interior pixels do not have their label's colour"


def _blocks(seed: int = 0, h: int = 96, w: int = 128, block: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, len(COLOURS), (-(-h // block), -(-w // block)), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(grid, block, 0), block, 1)[:h, :w])


def test_alignment_check_catches_misalignment():
    """The checker above is not vacuous: the same pipeline with one side misaligned fails it."""
    label = _blocks()
    t = TrainTransform((64, 80), rotate=0, blur=False, flip=False)
    image, out = t(encode(label), label)
    assert misaligned_pixels(image, out)[0] == 0
    assert misaligned_pixels(image[:, ::-1], out)[0] > 50  # image flipped, label not
    assert misaligned_pixels(image, np.roll(out, 6, axis=1))[0] > 50  # label shifted by 6 px (> radius)

    class FlipImageOnly(TrainTransform):
        def __call__(self, image, label):
            img, lbl = super().__call__(image, label)
            return np.ascontiguousarray(img[:, ::-1]), lbl

    bad, good = FlipImageOnly((64, 80)), TrainTransform((64, 80))
    for seed in range(10):
        bad.seed(seed)
        assert misaligned_pixels(*bad(encode(label), label))[0] > 0, seed
        good.seed(seed)
        wrong, checked = misaligned_pixels(*good(encode(label), label))
        assert wrong == 0 and checked > 300, (seed, wrong, checked)


def _edge_offsets(scales, mask_interpolation=None) -> list[float]:
    """Label edge minus bilinear image edge (pixels) of a vertical step, over scales and edge positions.

    The crop is wider than any scaled row (centre padding), so both edges stay in view; padding
    and cropping move image and label together and cannot hide an offset between them.
    """
    offsets = []
    for e in (13, 21, 27):
        img = np.zeros((8, 64, 3), np.uint8)
        img[:, e:] = 255
        lbl = (img[..., 0] > 0).astype(np.uint8)
        for s in scales:
            t = TrainTransform((8, 140), scale=(s, s), rotate=0, blur=False, flip=False)
            if mask_interpolation is not None:  # a deliberately broken variant
                t.pipeline.transforms[0].mask_interpolation = mask_interpolation
            out_img, out_lbl = t(img, lbl)
            row, lrow = out_img[4, :, 0].astype(float), out_lbl[4]
            i = int(np.argmax(row >= 127.5))
            offsets.append(int(np.argmax(lrow == 1)) - (i - 1 + (127.5 - row[i - 1]) / (row[i] - row[i - 1]) + 0.5))
    return offsets


def test_label_edges_follow_image_edges_within_half_a_pixel():
    scales = [s for s in np.linspace(0.5, 2.0, 16) if s != 1.0]
    off = _edge_offsets(scales)
    assert abs(np.mean(off)) < 0.15 and np.max(np.abs(off)) <= 0.55, off
    # the check has teeth: OpenCV's plain nearest resize is biased by about half a pixel
    assert np.mean(_edge_offsets(scales, cv2.INTER_NEAREST)) > 0.3


def test_scale_range_is_half_to_double():
    t = TrainTransform((440, 440), rotate=0, blur=False, flip=False)
    sizes = []
    for seed in range(150):
        t.seed(seed)
        _, out = t(np.zeros((100, 100, 3), np.uint8), np.zeros((100, 100), np.uint8))
        sizes.append(int((out[220] == 0).sum()))  # width of the scaled content in the middle row
    assert 50 <= min(sizes) < 62 and 188 < max(sizes) <= 200, (min(sizes), max(sizes))


def test_rotation_and_padding_fill_image_with_mean_and_label_with_ignore():
    label = np.zeros((40, 40), np.uint8)
    image = np.full((40, 40, 3), 7, np.uint8)
    t = TrainTransform((60, 60), scale=(1.0, 1.0), blur=False, flip=False)
    rotated = 0
    for seed in range(20):
        t.seed(seed)
        img, out = t(image, label)
        assert set(np.unique(out).tolist()) <= {0, IGNORE}
        pad = out == IGNORE
        assert pad[:10].all() and pad[-10:].all()  # 40 -> 60: 10 px of padding each side
        # away from the content (bilinear blends the 1-px seam), the fill is exactly the mean colour
        deep = cv2.erode(pad.astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
        np.testing.assert_array_equal(img[deep], np.broadcast_to(MEAN_FILL, (int(deep.sum()), 3)))
        assert deep.sum() > 0.9 * (60 * 60 - 40 * 40 - 4 * 60)
        if pad[10:50, 10:50].any():  # rotated: corners of the 40x40 content are fill
            rotated += 1
        deep_content = cv2.erode((~pad).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert (img[deep_content] == 7).all()
    assert 3 <= rotated <= 17  # rotation has p = 0.5


def test_rotation_angle_is_at_most_10_degrees():
    # a horizontal line through the centre, rotated: its slope gives the angle
    image = np.zeros((101, 101, 3), np.uint8)
    label = np.zeros((101, 101), np.uint8)
    label[50, :] = 1
    t = TrainTransform((101, 101), scale=(1.0, 1.0), blur=False, flip=False)
    angles = []
    for seed in range(60):
        t.seed(seed)
        _, out = t(image, label)
        ys, xs = np.nonzero(out == 1)
        angles.append(abs(np.degrees(np.arctan(np.polyfit(xs, ys, 1)[0]))))
    assert max(angles) <= 10.5 and max(angles) > 6


def test_color_jitter_changes_colours_only_and_is_off_by_default():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, (40, 40, 3), dtype=np.uint8)
    label = _blocks(2, 40, 40, 8)
    still = dict(scale=(1.0, 1.0), rotate=0, blur=False, flip=False)
    off = TrainTransform((60, 60), **still)
    jitter = TrainTransform((60, 60), **still, color_jitter=0.3)
    changed = 0
    for seed in range(20):
        off.seed(seed)
        jitter.seed(seed)
        img_off, lab_off = off(image, label)
        img, lab = jitter(image, label)
        np.testing.assert_array_equal(lab, lab_off)  # labels never move
        np.testing.assert_array_equal(img_off[10:50, 10:50], image)  # off: pixels as read
        pad = lab == IGNORE
        np.testing.assert_array_equal(img[pad], np.broadcast_to(MEAN_FILL, (int(pad.sum()), 3)))  # fill stays mean
        changed += not np.array_equal(img[10:50, 10:50], image)
    assert 10 <= changed <= 20  # applied to 80% of samples


def test_seed_makes_a_sample_reproducible():
    label = _blocks(1, 48, 64, 8)
    t = TrainTransform((32, 32))
    t.seed(123)
    a = t(encode(label), label)
    t(encode(label), label)
    t.seed(123)
    b = t(encode(label), label)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _rare_blocks() -> np.ndarray:
    """A 200x300 label of class 0 with one 10x10 block of class 5 and one 3x3 block of class 7."""
    label = np.zeros((200, 300), np.uint8)
    label[20:30, 250:260] = 5
    label[170:173, 30:33] = 7
    return label


def _crops_holding(transform: TrainTransform, label: np.ndarray, seeds: range) -> list[set[int]]:
    """For each seed, which of the rare classes 5 and 7 the augmented crop contains (image checked aligned)."""
    found = []
    for seed in seeds:
        transform.seed(seed)
        image, out = transform(encode(label), label)
        assert image.shape == (32, 32, 3) and out.shape == (32, 32)
        bad, _ = misaligned_pixels(image, out, radius=1, tol=0)
        assert bad == 0
        found.append({c for c in (5, 7) if (out == c).any()})
    return found


def test_focus_crops_hold_a_focus_class_chosen_uniformly():
    label = _rare_blocks()
    still = dict(scale=(1.0, 1.0), rotate=0, blur=False, flip=False)
    focused = _crops_holding(TrainTransform((32, 32), **still, focus_classes=[5, 7], focus_prob=1.0), label,
                             range(60))
    assert all(found for found in focused)  # every crop holds a rare class
    per_class = [sum(c in found for found in focused) for c in (5, 7)]
    assert min(per_class) >= 15  # by class, not by pixel: the 9-pixel block is drawn as often as the 100
    uniform = _crops_holding(TrainTransform((32, 32), **still), label, range(60))
    assert sum(bool(found) for found in uniform) <= 10  # the blocks cover under 4% of crop positions
    half = _crops_holding(TrainTransform((32, 32), **still, focus_classes=[5, 7], focus_prob=0.5), label,
                          range(60))
    assert 15 <= sum(bool(found) for found in half) <= 50


def test_focus_crops_are_seeded_and_fall_back_to_uniform():
    label = _rare_blocks()
    t = TrainTransform((32, 32), focus_classes=[5, 7], focus_prob=1.0)
    t.seed(7)
    a = t(encode(label), label)
    t.seed(7)
    b = t(encode(label), label)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    absent = TrainTransform((32, 32), focus_classes=[9], focus_prob=1.0)  # no pixel of 9: a uniform crop
    absent.seed(7)
    assert absent(encode(label), label)[1].shape == (32, 32)
    with pytest.raises(ValueError, match="focus_prob"):
        TrainTransform((32, 32), focus_classes=[5], focus_prob=1.5)


def test_to_tensors_and_normalize():
    img = np.zeros((2, 3, 3), np.uint8)
    img[...] = MEAN_FILL
    img[1] = [[0, 0, 0], [255, 255, 255], [10, 200, 77]]
    x, y = to_tensors(img, np.array([[0, 1, 255]] * 2, np.uint8))
    assert x.dtype == torch.uint8 and x.shape == (3, 2, 3) and y.dtype == torch.int64 and y[0, 2] == 255
    assert torch.equal(x.permute(1, 2, 0), torch.from_numpy(img))  # HWC -> CHW, values untouched
    z = normalize(x[None])
    assert z.shape == (1, 3, 2, 3) and z.dtype == torch.float32
    # (value / 255 - mean) / std per channel, in float64 from the literal constants
    expected = (img.astype(np.float64) / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(z[0].permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(z[0, :, 1, 0].numpy(), [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], atol=1e-5)
    np.testing.assert_allclose(z[0, :, 1, 1].numpy(), [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225], atol=1e-5)
    # a 0-255 float batch normalises the same way
    torch.testing.assert_close(normalize(x[None].float()), z)


def test_bad_scale_range_is_refused():
    with pytest.raises(ValueError, match="scale range"):
        TrainTransform((8, 8), scale=(2.0, 0.5))
