"""Hostile input cannot hurt the user (issue 41): configs that cannot explode, weight files checked for
their tensors before a model is built, every CLI option validated where it is parsed (exit 2 and the
allowed range), outputs written atomically, a batch that goes on past a failing image, a memory budget.

The download path cases (``%2F`` and friends) are in ``tests/hub/test_hub.py``. Every case here runs in
well under a second of its own and a few hundred MB at most; the regression cases each fail on the code
before the fix (the module docstring of each section says how they did).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from pspnet.config import load_config
from pspnet.errors import ConfigError, PSPNetError, WeightsError
from pspnet.models import PSPNet
from pspnet.models.weights import load_weights

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------ YAML alias bombs
def _alias_bomb(levels: int = 9, width: int = 10, where: str = "train: {lr: *L%d}") -> str:
    """``levels`` nested lists of ``width`` aliases each: width**levels values once expanded."""
    lines = ["l0: &L0 [" + ",".join(["1"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &L{i} [" + ",".join([f"*L{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n" + (where % (levels - 1) if "%d" in where else where) + "\n"


@pytest.mark.parametrize("where", ["train: {lr: *L%d}", "train: *L%d", "model: {bins: *L%d}",
                                   "data: {class_names: *L%d}"])
def test_a_yaml_alias_bomb_is_refused_in_under_a_second(tmp_path, where):
    """Was: 3 GB and killed at 90 s (the error message repr'd the 10^9 values), or 65 s to a refusal."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(where=where))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="anchors and aliases") as e:
        load_config(path)
    assert time.perf_counter() - start < 1.0
    assert len(str(e.value)) < 400


def test_an_alias_bomb_in_an_override_is_refused():
    with pytest.raises(ConfigError):
        load_config(None, ["train.lr=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                           "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                           "&e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]]"])


def test_a_modest_alias_is_fine_and_errors_never_expand_a_value(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("common: &lr 0.01\n")
    with pytest.raises(ConfigError, match="unknown key 'common'"):
        load_config(path)
    path.write_text("train: {lr: &n 0.01, iters: 50}\neval: {}\nmodel: {dropout: *n}\n")
    assert load_config(path).train.lr == 0.01
    # a big value under a known key: the message shows a few dozen characters of it, not all of it
    path.write_text(_alias_bomb(levels=4, where="train: {lr: *L%d}"))  # 10^4 values: under the limit
    with pytest.raises(ConfigError) as e:
        load_config(path)
    line = next(ln for ln in str(e.value).splitlines() if "train.lr" in ln)
    assert len(line) < 200, line


def test_a_recursive_yaml_document_is_a_config_error(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("train: &t {lr: *t}\n")
    with pytest.raises(ConfigError):
        load_config(path)


_yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                            lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                                                    max_size=4), max_leaves=20)


@FAST
@given(section=st.sampled_from(["train", "data", "model", "eval", "other"]), key=st.text(max_size=10),
       value=_yaml_values, alias_depth=st.integers(0, 12))
def test_yaml_shapes_load_or_are_config_errors(tmp_path, section, key, value, alias_depth):
    """Any document shape, with its value put behind a chain of anchors: a Config or a ConfigError, fast."""
    text = _alias_bomb(levels=alias_depth, width=3, where="") if alias_depth else ""
    text += yaml.safe_dump({section: {key: value}})
    path = tmp_path / "shape.yaml"
    path.write_text(text)
    start = time.perf_counter()
    try:
        load_config(path)
    except ConfigError as e:
        assert len(str(e)) < 5000
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------ weight files: tensors checked before a model
_LARGEST = dict(num_classes=65536, depth=152, head_channels=16384, aux_channels=16384, bins=list(range(1, 17)),
                stem_channels=[4096, 4096, 4096], ppm_channels=16384)


def _metadata_only(path: Path, config: dict, tensors: dict | None = None) -> Path:
    save_file(tensors or {}, str(path), metadata={"format": "pspnet-weights-v1", "config": json.dumps(config)})
    return path


@pytest.fixture
def no_real_model(monkeypatch):
    """Fails the test as soon as a PSPNet is built anywhere but on the meta device (a spy: the old code
    built the 40 GB model first; this stops it before it allocates)."""
    real_init = PSPNet.__init__

    def spy(self, *a, **k):
        if torch.get_default_device().type != "meta":
            raise AssertionError("a real model was built before the file's tensors were checked")
        real_init(self, *a, **k)
    monkeypatch.setattr(PSPNet, "__init__", spy)


def test_a_metadata_only_weight_file_is_refused_before_a_model_is_built(tmp_path, no_real_model):
    """Was: a 492-byte file made predict/eval allocate 39.9 GB and die with a traceback."""
    path = _metadata_only(tmp_path / "huge.safetensors", _LARGEST)
    assert path.stat().st_size < 1000
    with pytest.raises(WeightsError, match="no tensors"):
        load_weights(path)


def test_a_weight_file_missing_tensors_is_refused_before_a_model_is_built(tmp_path, no_real_model):
    """Was: a 572-byte one took 5.2 GB and 21.7 s before its error."""
    path = _metadata_only(tmp_path / "some.safetensors", dict(_LARGEST, depth=50),
                          {"cls.4.bias": torch.zeros(65536)})
    with pytest.raises(WeightsError, match="missing keys"):
        load_weights(path)


def test_predict_with_a_metadata_only_file_is_a_usage_error(tmp_path, capsys, no_real_model):
    from pspnet.cli import main
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    path = _metadata_only(tmp_path / "huge.safetensors", _LARGEST)
    assert main(["predict", str(image), "--weights", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "over the memory budget" in capsys.readouterr().err  # 314 GiB of parameters: refused from the header
    assert main(["predict", str(image), "--weights", str(path), "--out", str(tmp_path / "o"), "--max-memory",
                 "64T"]) == 2
    assert "no tensors" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_devices_fifos_and_folders_as_weights_say_what_they_are(tmp_path):
    """Was: 'weight file not found' for a link to /dev/zero or a FIFO."""
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "nowhere")
    for name, words in [("zero", "device, FIFO"), ("fifo", "device, FIFO"), ("dir", "a folder"),
                        ("dangling", "broken symbolic link"), ("absent", "not found")]:
        with pytest.raises(WeightsError, match=words):
            load_weights(tmp_path / f"{name}.safetensors")


@FAST
@given(header=st.binary(max_size=64), declared=st.integers(0, 2**64 - 1))
def test_weight_file_headers_are_weights_errors(tmp_path, header, declared):
    path = tmp_path / "w.safetensors"
    path.write_bytes(declared.to_bytes(8, "little") + header)
    with pytest.raises(PSPNetError):
        load_weights(path)


# ------------------------------------------------------------------ CLI options: usage errors, exit 2, the range
def _usage_error(argv: list[str], capsys) -> str:
    """``main(argv)`` must stop at argument parsing with exit status 2 and one line naming the range."""
    from pspnet.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def tiny_inputs(tmp_path, varied_tiny_weights):
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    _, weights = varied_tiny_weights(tmp_path, ["a", "b", "c"], [(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    return image, weights


@pytest.mark.parametrize("option, value, words", [
    ("--base-size", "-1", "allowed 0 (no resize) or 16 to 8192"),
    ("--base-size", "100000", "allowed 0 (no resize) or 16 to 8192"),   # was: tried to allocate 90 GB
    ("--scales", "1000", "allowed from 0.1 to 4"),                      # was: 37 GB
    ("--scales", "nan", "not a finite number"),
    ("--stride-rate", "1e-9", "allowed from 0.1 to 1"),                 # was: accepted, 16 s for 64 x 48
    ("--crop-size", "0", "allowed 16 to 8192"),
    ("--every", "0", "allowed at least 1"),                             # was: accepted
    ("--batch-size", "0", "allowed 1 to 256"),
])
def test_predict_options_out_of_range_are_usage_errors(tiny_inputs, tmp_path, capsys, option, value, words):
    image, weights = tiny_inputs
    extra = [value, value] if option == "--crop-size" else [value]
    line = _usage_error(["predict", str(image), "--weights", str(weights), "--out", str(tmp_path / "o"),
                         "--precision", "fp32", "--device", "cpu", "--no-progress", option, *extra], capsys)
    assert option in line and words in line, line
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_or_unwritable_is_a_usage_error(tiny_inputs, tmp_path, capsys):
    """Was: a traceback (FileExistsError / PermissionError) after the model had run."""
    image, weights = tiny_inputs
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    common = [str(image), "--weights", str(weights), "--precision", "fp32", "--device", "cpu", "--no-progress"]
    line = _usage_error(["predict", *common, "--out", str(a_file)], capsys)
    assert "is not a folder" in line
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: only the file case can be shown
            return
        line = _usage_error(["predict", *common, "--out", str(locked / "sub")], capsys)
        assert "cannot write there" in line
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("argv, words", [
    (["eval", "--max-images", "0"], "allowed at least 1"),              # was: exit 0 having evaluated nothing
    (["eval", "--max-images", "-1"], "allowed at least 1"),
    (["eval", "--grid-images", "-1"], "allowed 1 to 64"),
    (["data", "check", "--workers", "-1"], "allowed 0 to"),
    (["data", "check", "--workers", "100000"], "CPU core"),
    (["train", "--config", "x", "--max-iters", "0"], "allowed at least 1"),
    (["bench", "--threads", "100000"], "CPU core"),
    (["export", "--out", "."], "is a folder"),
])
def test_other_commands_validate_their_options(argv, words, capsys):
    line = _usage_error(argv, capsys)
    assert words in line, line


def test_eval_max_images_zero_is_not_a_silent_success(tmp_path, folder_dataset, varied_tiny_weights, capsys):
    root = folder_dataset(tmp_path / "data", splits=("val",), n=2)
    _, weights = varied_tiny_weights(tmp_path, ["a", "b", "c"], [(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    _usage_error(["eval", "--weights", str(weights), "--dataset", "folder", "--data-root", str(root),
                  "--split", "val", "--device", "cpu", "--no-progress", "--max-images", "0"], capsys)


def test_absurd_thread_and_worker_counts_in_a_config_are_config_errors():
    """Was: train.threads=100000 reached torch.set_num_threads (a traceback)."""
    for override in ("train.threads=100000", "data.workers=100000", "eval.stride_rate=1e-9", "eval.scales=[1000]",
                     "eval.base_size=100000"):
        with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
            load_config(None, [override])


@FAST
@given(option=st.sampled_from(["--base-size", "--scales", "--stride-rate", "--crop-size", "--every", "--batch-size",
                               "--max-memory"]),
       value=st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(repr),
                       st.text(max_size=12)))
def test_predict_option_values_parse_in_range_or_are_usage_errors(option, value):
    """Any value: either it parses to one inside the documented range, or argparse refuses it (exit 2)."""
    from pspnet.cli import build_parser
    from pspnet.cli import options as opt
    parser = build_parser()
    parser.exit = lambda status=0, message=None: (_ for _ in ()).throw(SystemExit(status))
    parser.error = lambda message: (_ for _ in ()).throw(SystemExit(2))
    extra = [value, value] if option == "--crop-size" else [value]
    if value.startswith("-") and not value.lstrip("-")[:1].isdigit():
        return  # argparse reads it as an option name: a usage error too, but not ours to test
    try:
        args = parser.parse_args(["predict", "x.png", "--out", "o", option, *extra])
    except SystemExit as e:
        assert e.code == 2
        return
    got = getattr(args, option[2:].replace("-", "_"))
    got = got[0] if isinstance(got, list) else got
    bounds = {"--base-size": (0, opt.MAX_SIDE), "--scales": (0.1, opt.MAX_SCALE), "--stride-rate": (0.1, 1.0),
              "--crop-size": (16, opt.MAX_SIDE), "--every": (1, float("inf")), "--batch-size": (1, 256),
              "--max-memory": (2**26, 2**46)}[option]
    assert bounds[0] <= got <= bounds[1] and math.isfinite(got)
    if option == "--base-size":
        assert got == 0 or got >= 16


# ------------------------------------------------------------------ outputs: atomic, a full disk is a named failure
def _images(folder: Path, names=("a", "big", "b"), size=(40, 56)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for n in names:
        p = folder / f"{n}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_a_full_disk_during_save_probs_leaves_no_truncated_file(tmp_path, tiny_inputs, monkeypatch, capsys):
    """Was: a truncated _probs.npz, a 0-byte legend.png and a traceback."""
    from pspnet.cli import main
    _, weights = tiny_inputs
    imgs = _images(tmp_path / "in")

    def disk_full(file, **arrays):  # writes the start of the archive, then the disk is full
        file_obj = file if hasattr(file, "write") else open(file, "wb")
        file_obj.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez_compressed", disk_full)
    out = tmp_path / "out"
    rc = main(["predict", *map(str, imgs), "--weights", str(weights), "--out", str(out), "--save-probs",
               "--precision", "fp32", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "No space left on device" in err and err.count("failed: ") == 3
    assert not list(out.glob("*_probs.npz")), "a truncated .npz was left"
    assert _leftovers(out) == []
    assert (out / "legend.png").stat().st_size > 0


def test_a_full_disk_for_the_legend_is_reported(tmp_path, tiny_inputs, monkeypatch, capsys):
    from pspnet.cli import main
    from pspnet.inference import predict as predict_module
    _, weights = tiny_inputs
    imgs = _images(tmp_path / "in", names=("a",))
    real_save = Image.Image.save

    def save(self, fp, *a, **k):
        if "legend" in str(fp):
            open(fp, "wb").close()
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *a, **k)
    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "out"
    rc = main(["predict", *map(str, imgs), "--weights", str(weights), "--out", str(out), "--precision", "fp32",
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "legend.png" in err
    assert not (out / "legend.png").exists() and _leftovers(out) == []
    assert predict_module  # the module under test


# ------------------------------------------------------------------ batches go on past a failing image
def test_one_image_that_fails_for_any_reason_does_not_stop_the_batch(tmp_path, tiny_inputs, monkeypatch, capsys):
    """Was: a MemoryError / RuntimeError in one image aborted the batch with a traceback (the images after
    it were never written)."""
    from pspnet.cli import main
    from pspnet.inference import predict as predict_module
    _, weights = tiny_inputs
    imgs = _images(tmp_path / "in")
    real = predict_module.predict_logits

    def sometimes(model, x, **kw):
        if x.shape[-1] == 57:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 12700000000 bytes")
        return real(model, x, **kw)
    monkeypatch.setattr(predict_module, "predict_logits", sometimes)
    Image.fromarray(np.zeros((40, 57, 3), np.uint8)).save(imgs[1])  # "big": the one that fails
    out = tmp_path / "out"
    rc = main(["predict", *map(str, imgs), "--weights", str(weights), "--out", str(out), "--precision", "fp32",
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "failed: " in err and "big.png" in err and "can't allocate memory" in err
    assert (out / "a_label.png").is_file() and (out / "b_label.png").is_file()
    assert not (out / "big_label.png").exists()


# ------------------------------------------------------------------ the memory budget
def test_an_image_over_the_budget_runs_in_sliding_windows_and_says_so(tmp_path, tiny_pspnet, caplog):
    """Was: an 8000x8000 PNG ran whole at full resolution and peaked at 12.7 GB."""
    from pspnet.inference.budget import SLIDING_CROP, image_bytes, model_bytes
    from pspnet.inference.predict import predict_paths
    model = tiny_pspnet(3).eval()
    h, w = 1000, 1600  # more pixels than four 512 x 512 windows
    kw = dict(base_size=None, scales=(1.0,), precision="fp32")
    whole = model_bytes(model.config) + image_bytes(model.config, h, w, mode="whole", crop_size=None, **kw)
    windows = model_bytes(model.config) + image_bytes(model.config, h, w, mode="sliding",
                                                      crop_size=(SLIDING_CROP, SLIDING_CROP), **kw)
    assert windows < whole
    img = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img)
    calls = []
    import pspnet.inference.predict as predict_module
    monkey = pytest.MonkeyPatch()
    # the run itself is sliding_window's (tested elsewhere): only which mode was chosen matters here
    monkey.setattr(predict_module, "predict_logits",
                   lambda m, x, **k: (calls.append(k["mode"]), torch.full((1, 3, *x.shape[-2:]), 1 / 3))[1])
    try:
        with caplog.at_level("WARNING"):
            out = predict_paths(model, [img], tmp_path / "o", class_names=["a", "b", "c"], palette=None or
                                [(0, 0, 0), (1, 1, 1), (2, 2, 2)], progress=False, max_memory=(whole + windows) // 2)
    finally:
        monkey.undo()
    assert calls == ["sliding"] and not out.failed
    assert "sliding windows" in caplog.text and "over the memory budget" in caplog.text
    out = predict_paths(model, [img], tmp_path / "o2", class_names=["a", "b", "c"],
                        palette=[(0, 0, 0), (1, 1, 1), (2, 2, 2)], progress=False, max_memory=windows // 2)
    assert len(out.failed) == 1 and "even in sliding windows" in out.failed[0][1]


def test_the_estimate_refuses_a_model_over_the_budget_before_it_is_built(tmp_path, no_real_model):
    from pspnet.errors import MemoryBudgetError
    from pspnet.inference.loading import load_for_inference
    path = _metadata_only(tmp_path / "huge.safetensors", _LARGEST)
    with pytest.raises(MemoryBudgetError, match="over the memory budget"):
        load_for_inference(path, device="cpu", max_memory=8 << 30)


def test_colliding_output_names_are_reported(tmp_path, tiny_pspnet, caplog):
    from pspnet.inference.predict import predict_paths
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for folder in ("x", "y"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / folder / "same.png")
    with caplog.at_level("WARNING"):
        predict_paths(tiny_pspnet(3).eval(), [tmp_path / "x" / "same.png", tmp_path / "y" / "same.png"],
                      tmp_path / "o", class_names=["a", "b", "c"], palette=[(0, 0, 0)] * 3, progress=False)
    assert "same-2" in caplog.text


def test_an_animated_gif_says_only_its_first_frame_is_used(tmp_path, caplog):
    from pspnet.data.io import read_image
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 120, 240)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING"):
        assert read_image(tmp_path / "anim.gif").shape == (16, 16, 3)
    assert "3 frames; only the first is used" in caplog.text


def test_an_image_over_the_budget_is_refused_from_its_header_before_decoding(tmp_path, tiny_pspnet, monkeypatch):
    """Was: a 19999 x 19999 PNG was decoded (1.2 GB, copied twice) before anything else happened."""
    import pspnet.inference.predict as predict_module
    img = tmp_path / "huge.png"
    Image.new("RGB", (6000, 5000)).save(img)
    decoded = []
    monkeypatch.setattr(predict_module, "read_image", lambda f: decoded.append(f))
    out = predict_module.predict_paths(tiny_pspnet(3).eval(), [img], tmp_path / "o", class_names=["a", "b", "c"],
                                       palette=[(0, 0, 0)] * 3, progress=False, max_memory=256 << 20)
    assert not decoded and "even in sliding windows" in out.failed[0][1]


def test_image_size_reads_headers_up_to_the_pixel_limit(tmp_path):
    """PIL's own limit (89 M pixels) is below pspnet's (400 M): the header of a 10000 x 10000 image must
    still give its size, or the budget would never see the images that need it most."""
    from pspnet.data.io import image_size
    Image.new("L", (10000, 10000)).save(tmp_path / "big.png")
    assert image_size(tmp_path / "big.png") == (10000, 10000)
    assert image_size(tmp_path / "missing.png") is None


def test_eval_runs_an_image_over_the_budget_in_sliding_windows_or_refuses_it(tiny_pspnet, monkeypatch, caplog):
    """eval plans each image within the memory budget as predict does: one too large to run whole runs in
    sliding windows (said, and listed in the metrics), one too large even so is refused by name. Windows of
    64 px here (512 in use), so that a small image is already cheaper in windows than whole."""
    from pspnet.errors import MemoryBudgetError
    from pspnet.inference import budget
    from pspnet.inference.budget import model_bytes
    from pspnet.inference.evaluate import evaluate
    monkeypatch.setattr(budget, "SLIDING_CROP", 64)

    model = tiny_pspnet(3).eval()
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(0, 256, (3, 200, 240), dtype=torch.uint8, generator=g),
              torch.randint(0, 3, (200, 240), generator=g))]
    tight = model_bytes(model.config) + 40 * 200 * 240 * 4  # about 40 floats a pixel: too few to run whole
    with caplog.at_level("WARNING"):
        res = evaluate(model, items, num_classes=3, max_memory=tight, progress=False)
    assert res["settings"]["memory_fallback"] and "sliding windows" in caplog.text
    roomy = evaluate(model, items, num_classes=3, progress=False)
    assert "memory_fallback" not in roomy["settings"]
    with pytest.raises(MemoryBudgetError, match="even in sliding windows"):
        evaluate(model, items, num_classes=3, max_memory=model_bytes(model.config) + 1000, progress=False)
