"""Procedural street scenes: a small built-in segmentation dataset for ``pspnet demo`` and tests.

Each scene is drawn from a seeded random generator (the same seed gives the same pixels on every
machine): a horizon and a vanishing point, a road in perspective with lane markings, sidewalks with
paving, building facades whose roof lines recede towards the vanishing point, sky with clouds, and
trees, poles, cars and people whose size grows towards the bottom of the image. Every class has
its own texture (value noise, windows, paving joints, leaves), colours vary per object and per
scene, and the finished image gets random brightness/contrast/colour jitter and sensor noise.
Labels are exact (drawn, not estimated), so a model's mIoU on held-out scenes measures learning.

The dataset is written in the ``folder`` layout (``<root>/<split>/images/*.png`` and
``<root>/<split>/labels/*.png`` with class indices 0..7).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["CLASSES", "PALETTE", "render_scene", "make_scene", "write_dataset", "SyntheticSpec"]

CLASSES = ("sky", "building", "road", "sidewalk", "vegetation", "car", "pole", "person")
SKY, BUILDING, ROAD, SIDEWALK, VEGETATION, CAR, POLE, PERSON = range(len(CLASSES))
# Cityscapes' colours for the same classes, so the predictions look familiar.
PALETTE = ((70, 130, 180), (70, 70, 70), (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142),
           (153, 153, 153), (220, 20, 60))
SPLITS = {"train": 0, "val": 1, "test": 2}


# ------------------------------------------------------------------------------------ helpers
def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field in [0, 1]: random values on a grid of ``cell`` px, bilinearly interpolated."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.random((gh, gw))
    ys = np.arange(h) / cell
    xs = np.arange(w) / cell
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 20.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


class _Canvas:
    """A float RGB image and its label map, painted back to front."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.image = np.zeros((h, w, 3), np.float64)
        self.label = np.zeros((h, w), np.uint8)
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float64)

    def paint(self, mask: np.ndarray, cls: int, colour: np.ndarray | Sequence[float],
              texture: np.ndarray | None = None) -> None:
        """Fill ``mask`` with ``colour`` (RGB or H x W x 3), modulated by ``texture`` (H x W, ~1)."""
        if not mask.any():
            return
        col = np.asarray(colour, dtype=np.float64)
        if col.ndim == 1:
            col = np.broadcast_to(col, (self.h, self.w, 3))
        if texture is not None:
            col = col * texture[..., None]
        self.image[mask] = col[mask]
        self.label[mask] = cls

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.xx - cx) / max(rx, 0.5)) ** 2 + ((self.yy - cy) / max(ry, 0.5)) ** 2 <= 1.0

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.xx >= x0) & (self.xx < x1) & (self.yy >= y0) & (self.yy < y1)


# ------------------------------------------------------------------------------------ the scene
def render_scene(rng: np.random.Generator, height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene; returns (uint8 H x W x 3 image, uint8 H x W label of :data:`CLASSES`)."""
    if height < 24 or width < 24:
        raise ValueError(f"scenes need at least 24x24 pixels, got {height}x{width}")
    h, w = height, width
    cv = _Canvas(h, w)
    yy, xx = cv.yy, cv.xx
    horizon = h * rng.uniform(0.36, 0.5)
    vx = w * rng.uniform(0.35, 0.65)
    depth = np.clip((yy - horizon) / (h - horizon), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom

    # sky: vertical gradient plus soft clouds
    top, bottom = _jitter(rng, (60, 120, 200), 25), _jitter(rng, (170, 200, 230), 20)
    t = (yy / max(horizon, 1.0))[..., None].clip(0, 1)
    sky = top * (1 - t) + bottom * t
    clouds = np.clip(_value_noise(rng, h, w, rng.uniform(8, 20)) * 1.6 - 0.7, 0, 1)[..., None]
    cv.paint(np.ones((h, w), bool), SKY, sky * (1 - clouds) + 240 * clouds)

    # road and sidewalks: straight edges converging at the vanishing point
    road_l, road_r = vx - w * rng.uniform(0.3, 0.6), vx + w * rng.uniform(0.3, 0.6)
    walk_l, walk_r = road_l - w * rng.uniform(0.15, 0.35), road_r + w * rng.uniform(0.15, 0.35)

    def edge(x_bottom: float) -> np.ndarray:  # x of a ground line through (vx, horizon) and (x_bottom, h)
        return vx + (x_bottom - vx) * depth

    below = yy > horizon
    road = below & (xx >= edge(road_l)) & (xx <= edge(road_r))
    walk = below & ~road & (xx >= edge(walk_l)) & (xx <= edge(walk_r))

    # facades: everything beside the sidewalks up to a roof line that recedes to the vanishing point
    n_left, n_right = rng.integers(1, 4), rng.integers(1, 4)
    roof = np.full(w, horizon - h * 0.05)
    for side, n in (("left", n_left), ("right", n_right)):
        lo, hi = (0.0, vx) if side == "left" else (vx, float(w))
        cuts = np.sort(rng.uniform(lo, hi, n - 1)) if n > 1 else np.array([])
        bounds = np.concatenate([[lo], cuts, [hi]])
        for a, b in zip(bounds[:-1], bounds[1:]):
            cols = (np.arange(w) >= a) & (np.arange(w) < b)
            reach = np.abs(np.arange(w) - vx) / max(vx, w - vx)  # 0 at the vanishing point, 1 at the border
            height_here = h * rng.uniform(0.25, 0.65) * reach + h * rng.uniform(0.03, 0.1)
            roof[cols] = (horizon - height_here)[cols]
    building_mask = (yy >= roof[None, :]) & ~road & ~walk
    building_mask &= ~(below & (xx > edge(walk_l)) & (xx < edge(walk_r)))
    # per-building colour and window grid, keyed by column segments
    bcol = np.zeros((h, w, 3))
    windows = np.zeros((h, w), bool)
    seg_edges = np.sort(np.concatenate([[0, w], rng.uniform(0, w, n_left + n_right)]))
    for a, b in zip(seg_edges[:-1], seg_edges[1:]):
        cols = (xx >= a) & (xx < b)
        base = _jitter(rng, rng.choice([(150, 120, 100), (120, 120, 125), (180, 160, 130), (90, 80, 75)]), 25)
        bcol[cols] = base
        cw, ch = rng.uniform(3, 8), rng.uniform(4, 9)
        duty = rng.uniform(0.35, 0.6)
        windows |= cols & (((xx - a) / cw) % 1.0 < duty) & (((yy - rng.uniform(0, ch)) / ch) % 1.0 < duty)
    tex = 0.85 + 0.3 * _value_noise(rng, h, w, rng.uniform(2, 6))
    tex = np.where(windows, rng.uniform(0.35, 0.6), tex)
    cv.paint(building_mask, BUILDING, bcol, tex)

    # road: dark asphalt with fine grain and a dashed centre line
    asphalt = _jitter(rng, (85, 85, 90), 15)
    grain = 0.85 + 0.3 * _value_noise(rng, h, w, 1.5)
    cv.paint(road, ROAD, asphalt, grain)
    centre = edge((road_l + road_r) / 2)
    dash = (np.floor(6.0 / (depth + 0.08)) % 2 == 0) & (np.abs(xx - centre) <= 0.4 + 1.2 * depth) & road
    cv.image[dash] = _jitter(rng, (230, 230, 210), 10)

    # sidewalks: lighter paving with joints
    paving = _jitter(rng, rng.choice([(170, 160, 150), (190, 175, 170), (150, 150, 155)]), 15)
    tile = rng.uniform(3, 7)
    joints = ((xx % tile) < 0.8) | ((yy % (tile * 0.6)) < 0.7)
    cv.paint(walk, SIDEWALK, paving, np.where(joints, 0.75, 0.95 + 0.1 * _value_noise(rng, h, w, 3)))

    # objects, far to near: trees and poles and people on the sidewalks, cars on the road
    objects: list[tuple[float, str, float]] = []  # (depth of the base, kind, x fraction across its area)
    for kind, count in (("tree", rng.integers(1, 4)), ("pole", rng.integers(1, 3)),
                        ("person", rng.integers(1, 4)), ("car", rng.integers(1, 4))):
        for _ in range(count):
            objects.append((rng.uniform(0.35, 1.0), kind, rng.random()))
    objects.sort(key=lambda o: o[0])
    leaves_noise = _value_noise(rng, h, w, 1.2)
    for d, kind, frac in objects:
        y = horizon + d * (h - horizon)
        if kind == "car":
            xl, xr = vx + (road_l - vx) * d, vx + (road_r - vx) * d
            cw = w * rng.uniform(0.2, 0.3) * d
            cx = xl + cw / 2 + frac * max(xr - xl - cw, 0)
            ch = cw * rng.uniform(0.45, 0.6)
            body = cv.rect(cx - cw / 2, y - ch * 0.55, cx + cw / 2, y)
            cabin = cv.rect(cx - cw * 0.33, y - ch, cx + cw * 0.33, y - ch * 0.5)
            wheels = cv.ellipse(cx - cw * 0.3, y, cw * 0.1, ch * 0.15) | cv.ellipse(cx + cw * 0.3, y, cw * 0.1,
                                                                                     ch * 0.15)
            paint = _jitter(rng, rng.choice([(180, 20, 20), (20, 40, 150), (230, 230, 230), (30, 30, 30),
                                             (200, 170, 20), (40, 110, 60)]), 20)
            shade = np.where(cabin & ~body, 0.45, 1.0) * (0.9 + 0.2 * _value_noise(rng, h, w, 4))
            cv.paint(body | cabin, CAR, paint, shade)
            cv.paint(wheels, CAR, (20, 20, 20))
            continue
        # sidewalk objects: left or right sidewalk
        left = frac < 0.5
        a, b = ((walk_l, road_l) if left else (road_r, walk_r))
        xa, xb = vx + (a - vx) * d, vx + (b - vx) * d
        x = xa + (xb - xa) * rng.uniform(0.2, 0.8)
        if kind == "tree":
            r = h * rng.uniform(0.08, 0.16) * d
            trunk_h = r * rng.uniform(1.0, 1.8)
            cv.paint(cv.rect(x - max(0.6, r * 0.12), y - trunk_h, x + max(0.6, r * 0.12), y), VEGETATION,
                     _jitter(rng, (90, 60, 40), 10))
            crown = cv.ellipse(x, y - trunk_h - r * 0.8, r * rng.uniform(0.8, 1.2), r)
            green = _jitter(rng, (60, 120, 40), 20)
            cv.paint(crown, VEGETATION, green, 0.6 + 0.7 * leaves_noise)
        elif kind == "pole":
            ph = h * rng.uniform(0.35, 0.6) * d
            pw = max(1.0, w * 0.012 * d)  # half width
            grey = _jitter(rng, (130, 130, 135), 20)
            cv.paint(cv.rect(x - pw, y - ph, x + pw, y), POLE, grey)
            arm = ph * 0.2 * (1 if left else -1)  # a lamp arm reaching over the road
            cv.paint(cv.rect(min(x - pw, x + arm), y - ph, max(x + pw, x + arm), y - ph + 2 * pw), POLE, grey)
        else:  # person
            ph = h * rng.uniform(0.25, 0.36) * d
            pw = ph * 0.32
            head = cv.ellipse(x, y - ph * 0.9, pw * 0.35, ph * 0.1)
            torso = cv.rect(x - pw / 2, y - ph * 0.8, x + pw / 2, y - ph * 0.42)
            legs = cv.rect(x - pw * 0.4, y - ph * 0.42, x - pw * 0.05, y) | cv.rect(x + pw * 0.05, y - ph * 0.42,
                                                                                  x + pw * 0.4, y)
            cv.paint(legs, PERSON, _jitter(rng, rng.choice([(40, 40, 70), (60, 50, 40), (20, 20, 20)]), 15))
            cv.paint(torso, PERSON, _jitter(rng, (rng.uniform(0, 255), rng.uniform(0, 255), rng.uniform(0, 255)), 0))
            cv.paint(head, PERSON, _jitter(rng, rng.choice([(230, 190, 160), (160, 110, 80), (90, 60, 40)]), 10))

    # camera: exposure, contrast, white balance, sensor noise
    img = cv.image
    img = (img - 128) * rng.uniform(0.8, 1.2) + 128 * rng.uniform(0.8, 1.2)
    img = img * rng.uniform(0.9, 1.1, 3)
    img = img + rng.normal(0, rng.uniform(2, 8), img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), cv.label


def make_scene(seed: int, index: int, split: str = "train", height: int = 96,
               width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of ``split`` for a dataset seed: a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return render_scene(np.random.default_rng([seed, SPLITS[split], index]), height, width)


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of a generated dataset (immutable, so one instance can be a default argument)."""

    train: int = 64
    val: int = 16
    height: int = 96
    width: int = 128
    seed: int = 0


def write_dataset(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the scenes as a ``folder`` dataset under ``root``; returns ``root``.

    Also writes ``root/classes.json`` (class names and palette).
    """
    root = Path(root)
    for split, n in (("train", spec.train), ("val", spec.val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = make_scene(spec.seed, i, split, spec.height, spec.width)
            name = f"{split}_{i:04d}.png"
            Image.fromarray(image).save(root / split / "images" / name)
            Image.fromarray(label).save(root / split / "labels" / name)
    (root / "classes.json").write_text(json.dumps({"class_names": list(CLASSES), "palette": [list(c) for c in PALETTE],
                                                   "spec": spec.__dict__}, indent=1), encoding="utf-8")
    return root
