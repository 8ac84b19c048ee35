"""Fuzzing the parsers and decoders with hypothesis, for a bounded number of examples.

The contract: whatever the input, the code either succeeds or raises one of the project's own
errors (:class:`PSPNetError` subclasses, with a message); any other exception is a bug.
Targets: the list-file parser, the YAML config loader and ``key=value`` overrides, label mapping
and colour decoding, and image/label decoding through the dataset API (random and mutated bytes).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from pspnet.config import SECTIONS, load_config
from pspnet.data.datasets import DatasetInfo, SegmentationDataset, read_list_file
from pspnet.data.datasets.base import decode_color_label, lut_from_mapping, map_label
from pspnet.data.palettes import colorize
from pspnet.errors import ConfigError, DataError, PSPNetError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)  # derandomize: the same examples on every run, so a failure is reproducible
WORK = Path(tempfile.mkdtemp(prefix="pspnet_fuzz_"))  # one folder reused by every example


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


def _write(name: str, content: bytes | str) -> Path:
    p = WORK / name
    p.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    return p


# ------------------------------------------------------------------------------------------ list files
list_line = st.one_of(
    st.text(max_size=60),
    st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
             min_size=0, max_size=4).map(" ".join),
    st.sampled_from(["", "# comment", "img.png lbl.png", "a b c", "  \t ", "x\x00y.png", "\ufeffimg.png"]))


@FUZZ
@given(lines=st.lists(list_line, max_size=8), raw=st.binary(max_size=64), use_raw=st.booleans())
def test_fuzz_list_file(lines, raw, use_raw):
    path = _write("list.txt", raw if use_raw else "\n".join(lines))
    try:
        pairs = read_list_file(path, WORK)
    except DataError as e:
        assert str(e)
        return
    assert pairs and all(isinstance(i, Path) and (lbl is None or isinstance(lbl, Path)) for i, lbl in pairs)


# ------------------------------------------------------------------------------------------ configs
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=12))
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                     max_leaves=6)
known_keys = [(s, k) for s, cls in SECTIONS.items() for k in cls.model_fields]
section_dict = st.dictionaries(st.sampled_from([k for _, k in known_keys] + ["lrr", "depht", ""]), value,
                               max_size=4)
config_dict = st.dictionaries(st.sampled_from(list(SECTIONS) + ["modle", "x"]),
                              st.one_of(section_dict, value), max_size=4)


@FUZZ
@given(cfg=config_dict, text=st.text(max_size=80), use_text=st.booleans())
def test_fuzz_config_file(cfg, text, use_text):
    if use_text:
        content = text
    else:
        try:
            content = yaml.safe_dump(cfg, allow_unicode=True)
        except yaml.YAMLError:
            return
    path = _write("config.yaml", content)
    try:
        load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)


override_key = st.one_of(st.sampled_from([f"{s}.{k}" for s, k in known_keys]), st.text(max_size=16),
                         st.sampled_from(["train.lrr", "model", "x.y.z", ".", "=", "data.", ".lr"]))
override_val = st.one_of(st.text(max_size=16), st.sampled_from(["[1, 2", "{a: 1}", "1e999", ".nan", "-.inf", "null",
                                                                "[473, 473]", "true", "!!python/object:os.system"]))


@FUZZ
@given(items=st.lists(st.tuples(override_key, st.sampled_from(["=", "", "=="]), override_val), max_size=4))
def test_fuzz_overrides(items):
    overrides = [k + sep + v for k, sep, v in items]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as e:
        assert str(e)
        return
    assert cfg.train.lr > 0 and np.isfinite(cfg.train.lr)  # no NaN/inf sneaks through


def test_non_finite_numbers_are_config_errors():
    for item in ("train.lr=.inf", "train.lr=.nan", "data.scale_max=.inf", "train.weight_decay=.nan"):
        with pytest.raises(ConfigError, match=item.split("=")[0]):
            load_config(None, [item])
    with pytest.raises(ConfigError):  # YAML tags that would build Python objects are not even parsed
        load_config(_write("evil.yaml", "train: !!python/object/apply:os.system ['touch x']\n"))


# ------------------------------------------------------------------------------------------ labels
def _info(kind: str, colours: dict) -> DatasetInfo:
    names = ("a", "b", "c")
    if kind == "lut":
        return DatasetInfo("lut", names, ((0, 0, 0),) * 3, id_to_train=lut_from_mapping({0: 0, 1: 1, 7: 2}))
    if kind == "lut16":
        return DatasetInfo("lut16", names, ((0, 0, 0),) * 3,
                           id_to_train=lut_from_mapping({0: 0, 300: 1}, size=65536, default=255))
    if kind == "colour":
        return DatasetInfo("colour", names, ((0, 0, 0),) * 3, color_to_train=colours)
    return DatasetInfo("plain", names, ((0, 0, 0),) * 3)


shape2 = st.tuples(st.integers(1, 6), st.integers(1, 6))
raw_label = st.one_of(
    shape2.flatmap(lambda s: arrays(np.uint8, s)),
    shape2.flatmap(lambda s: arrays(np.int32, s, elements=st.integers(-2**31, 2**31 - 1))),
    shape2.flatmap(lambda s: arrays(np.uint8, (*s, 3), elements=st.sampled_from([0, 1, 128, 255]))))
colour_map = st.dictionaries(st.tuples(*[st.sampled_from([0, 1, 128, 255])] * 3), st.sampled_from([0, 1, 2, 255]),
                             max_size=8)


@FUZZ
@given(raw=raw_label, kind=st.sampled_from(["lut", "lut16", "colour", "plain"]), colours=colour_map)
def test_fuzz_label_mapping(raw, kind, colours):
    info = _info(kind, colours)
    try:
        out = map_label(raw, info, Path("fuzz.png"))
    except DataError as e:
        assert str(e).startswith("fuzz.png: ")
        return
    assert out.shape == raw.shape[:2]
    if kind == "colour" and raw.ndim == 3:
        assert set(np.unique(out).tolist()) <= set(colours.values())


@FUZZ
@given(rgb=shape2.flatmap(lambda s: arrays(np.uint8, (*s, 3))), colours=colour_map)
def test_fuzz_colour_decoding(rgb, colours):
    try:
        out = decode_color_label(rgb, colours, Path("fuzz.png"))
    except DataError as e:
        assert "unknown label colour" in str(e)
        return
    for (r, g, b), v in colours.items():  # every pixel of a known colour got that colour's train id
        hit = (rgb[..., 0] == r) & (rgb[..., 1] == g) & (rgb[..., 2] == b)
        assert (out[hit] == v).all()


@FUZZ
@given(label=shape2.flatmap(lambda s: arrays(np.int64, s, elements=st.integers(-10**6, 10**6))),
       n=st.integers(1, 256))
def test_fuzz_colorize(label, n):
    from pspnet.labels import default_palette
    out = colorize(label, default_palette(n))
    assert out.shape == (*label.shape, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------------------------------ image bytes
def _encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {f"{fmt}_{mode}": _encoded(fmt, mode) for fmt, mode in
         [("PNG", "RGB"), ("PNG", "P"), ("PNG", "L"), ("JPEG", "RGB"), ("BMP", "RGB"), ("GIF", "P"),
          ("TIFF", "RGB"), ("WEBP", "RGB"), ("PNG", "I;16")]}
EXTS = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ""]
INFO = DatasetInfo("fuzz", ("a", "b", "c"), ((0, 0, 0),) * 3)


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for op, pos, val in edits:
        if not b:
            break
        i = pos % len(b)
        if op == 0:
            b[i] = val
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = bytes([val]) * (1 + val % 8)
        else:
            del b[i:i + 1 + val % 16]
    return bytes(b)


def _through_dataset(img: bytes, lbl: bytes | None, ext: str) -> None:
    ip = _write(f"img{ext}", img)
    lp = _write(f"lbl{ext}", lbl) if lbl is not None else None
    ds = SegmentationDataset([(ip, lp)], INFO)
    try:
        image, label = ds[0]
    except DataError as e:
        assert str(e).startswith((f"{ip}: ", f"{lp}: ")), str(e)
        return
    assert image.dtype.is_floating_point is False and image.shape[0] == 3
    assert label.shape == image.shape[1:]
    assert ((label < 3) | (label == 255)).all()


edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), e=edits, ext=st.sampled_from(EXTS))
def test_fuzz_mutated_images(seed, e, ext):
    _through_dataset(_mutate(SEEDS[seed], e), None, ext)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), e=edits, ext=st.sampled_from(EXTS), img=st.sampled_from(sorted(SEEDS)))
def test_fuzz_mutated_labels(seed, e, ext, img):
    _through_dataset(SEEDS[img], _mutate(SEEDS[seed], e), ext)


@FUZZ
@given(data=st.binary(max_size=300), magic=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM",
                                                            b"GIF89a", b"II*\x00", b"MM\x00*", b"RIFF"]),
       ext=st.sampled_from(EXTS))
def test_fuzz_random_bytes(data, magic, ext):
    _through_dataset(magic + data, None, ext)


def test_fuzz_contract_uses_project_errors():
    assert issubclass(DataError, PSPNetError) and issubclass(ConfigError, PSPNetError)
