"""Fixtures shared by the whole suite: a tiny PSPNet, a tiny ``folder`` dataset, a tiny training run,
and a tiny PSPNet trained until its predictions mean something; CSAILVision-layout checkpoints of a model.

Each is a session-scoped factory (or a session-scoped result), so module-scoped fixtures and
hypothesis tests can use them too. Tiny means PSPNet-18 with a narrow head: the full structure
(dilated ResNet, pyramid pooling of Sec. 3.3, auxiliary head) at a fraction of the cost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet import capability, cpu
from pspnet.config import Config, load_config
from pspnet.models import PSPNet, PSPNetConfig, PSPNetLoss
from pspnet.models.weights import save_weights


@pytest.fixture(autouse=True, scope="session")
def _private_pspnet_home(tmp_path_factory):
    """Caches (``auto``'s probe, downloads) go to a temporary folder, never the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PSPNET_HOME", str(tmp_path_factory.mktemp("pspnet_home")))
    yield
    mp.undo()


# bf16 / fp32 matrix throughput measured on the Zen 4 (377 / 131 GFLOP/s, docs/archive/benchmarks-history.md)
ZEN4_BF16_SPEEDUP = 2.9


@pytest.fixture(autouse=True)
def _pinned_bf16_probe(monkeypatch):
    """Where bf16 runs natively without AMX (avx512_bf16 alone), ``auto`` times bf16 against fp32 on the real
    machine (:func:`pspnet.cpu.bf16_speedup`). Tests that simulate a Zen 4 mean a Zen 4, so the probe answers
    as one measured; tests/test_cpu.py drives the probe and its slow answer itself. Where bf16 does not run
    (an AVX2-only CPU) the probe is never asked, so this pinned answer cannot make bf16 chosen there."""
    monkeypatch.setattr(cpu, "bf16_speedup", lambda: ZEN4_BF16_SPEEDUP)


@pytest.fixture
def simulate_cpu(monkeypatch) -> Callable[..., capability.Capabilities]:
    """``simulate_cpu("zen4")``: :mod:`pspnet.capability` answers as that CPU (one of ``capability.PROFILES``:
    avx2, avx512, zen4, xeon-amx, arm64) whatever this machine is, so decisions can be tested for every CPU
    kind on any one. Pure by default: for tests that decide but run nothing in a precision the real machine
    may lack. ``within_real=True`` is what ``PSPNET_SIMULATE_CPU`` does for users: the simulated CPU limited
    to what this machine's runtime runs, for tests that then run what was decided."""
    def apply(name: str, *, within_real: bool = False, **libraries: str | None) -> capability.Capabilities:
        """``libraries``: pure simulations only, which are installed (``torchao="0.18"``, ``openvino=None``)."""
        monkeypatch.setenv(capability.SIMULATE_ENV, name)
        if not within_real:
            real = capability.real_facts()
            installed = {"torchao": real.torchao, "onnxruntime": real.onnxruntime, "openvino": real.openvino,
                         **libraries}
            profile = capability.Facts(**capability.PROFILES[name], compiler=True, simulated=name, **installed)
            monkeypatch.setattr(capability, "real_facts", lambda: profile)
        return capability.capabilities()
    return apply


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A training run sets torch's thread count for the whole process (``train.threads``); without this,
    every later test would run with the count the last such test chose, and float results that
    depend on the summation order would depend on the order the tests ran in."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def count_forward_calls(monkeypatch) -> Callable[[type], list]:
    """``count_forward_calls(Function)``: a list that gains an item each time that autograd Function's
    forward runs, for the tests that a CPU kernel ran (or did not)."""
    def install(function: type) -> list:
        calls: list = []
        forward = function.forward

        def counted(*args):
            calls.append(1)
            return forward(*args)

        monkeypatch.setattr(function, "forward", staticmethod(counted))
        return calls
    return install


# ----------------------------------------------------------------------------------------- tiny model
def _tiny_pspnet(num_classes: int = 3, *, seed: int | None = 0, head_channels: int = 16, aux_channels: int = 8,
                 **config: Any) -> PSPNet:
    if seed is not None:
        torch.manual_seed(seed)
    return PSPNet(PSPNetConfig(num_classes=num_classes, depth=18, head_channels=head_channels,
                               aux_channels=aux_channels, **config))


@pytest.fixture(scope="session")
def tiny_pspnet() -> Callable[..., PSPNet]:
    """``tiny_pspnet(num_classes=3, *, seed=0, head_channels=16, aux_channels=8, **config)``: a new
    PSPNet-18 with a narrow head, initialised after ``torch.manual_seed(seed)`` (``seed=None``: from
    the current random state), in training mode as built; ``config`` is any other
    :class:`PSPNetConfig` field."""
    return _tiny_pspnet


def _varied_tiny_weights(folder: Path, class_names: Sequence[str], palette) -> tuple[PSPNet, Path]:
    model = _tiny_pspnet(len(class_names)).eval()
    with torch.no_grad():
        model.cls[-1].weight.normal_(0, 1.0)  # predictions and confidence that vary over the image
    path = folder / "tiny.safetensors"
    save_weights(model, path, list(class_names), palette)
    return model, path


@pytest.fixture(scope="session")
def varied_tiny_weights() -> Callable[..., tuple[PSPNet, Path]]:
    """``varied_tiny_weights(folder, class_names, palette) -> (model, weight file)``: the tiny PSPNet
    in eval mode with a classifier scaled up from its near-uniform start, saved with ``save_weights``."""
    return _varied_tiny_weights


# --------------------------------------------------------------------------------------- tiny dataset
Ignore = Literal["none", "top_band", "random_rows", "random_cols"]


def _folder_dataset(root: Path, *, splits: Sequence[str] = ("train",), n: int = 6, size: tuple[int, int] = (48, 64),
                    classes: int = 3, seed: int = 0, channel: int = 0, ignore: Ignore = "none") -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            label = (img[..., channel].astype(np.int64) * classes // 256).astype(np.uint8)
            if ignore == "top_band":
                label[: size[0] // 6] = 255
            elif ignore == "random_rows":
                label[: rng.integers(0, size[0] * 9 // 10)] = 255
            elif ignore == "random_cols":
                label[:, : rng.integers(0, size[1] * 9 // 10)] = 255
            Image.fromarray(img).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(label).save(root / split / "labels" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def folder_dataset() -> Callable[..., Path]:
    """``folder_dataset(root, *, splits=("train",), n=6, size=(48, 64), classes=3, seed=0, channel=0,
    ignore="none")`` writes ``root/<split>/{images,labels}/NNN.png`` and returns ``root``.

    Images are random RGB; a pixel's label is a function of one colour channel (so a model can
    learn it). ``ignore`` marks pixels 255: ``top_band`` = the top sixth of every label;
    ``random_rows`` / ``random_cols`` = a band of random height from the top / random width from
    the left, so images differ widely in how many pixels count."""
    return _folder_dataset


# ----------------------------------------------------------------------------------- tiny training run
def _tiny_run_overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return ["data.dataset=folder", f"data.root={data}", "data.crop_size=[32,32]", "data.workers=0",
            "model.num_classes=3", "model.depth=18", "model.head_channels=16", "model.aux_channels=8",
            "train.iters=2", "train.batch_size=2", "train.precision=fp32", "train.log_every=1",
            f"train.output_dir={out}", *extra]


@pytest.fixture(scope="session")
def tiny_run_overrides() -> Callable[..., list[str]]:
    """``tiny_run_overrides(data, out, *extra)``: the config overrides (``key=value``, as the CLI
    takes them) of a 2-iteration fp32 run of the tiny model on the folder dataset ``data``, writing
    to ``out``; ``extra`` overrides come last, so they win."""
    return _tiny_run_overrides


@pytest.fixture(scope="session")
def tiny_run_config() -> Callable[..., Config]:
    """``tiny_run_config(data, out, *extra)``: :func:`tiny_run_overrides` loaded as a run config."""
    def build(data: Path, out: Path, *extra: str) -> Config:
        return load_config(None, _tiny_run_overrides(data, out, *extra))
    return build


# --------------------------------------------------------------------------------- trained tiny model
def rectangle_scenes(n: int, h: int, w: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images of random axis-aligned rectangles; each class has its own colour and
    texture, and the label of a pixel is the class of the topmost rectangle covering it."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, generator=g) * 4 - 2
    labels = torch.zeros(n, h, w, dtype=torch.long)
    for i in range(n):
        labels[i] = int(torch.randint(0, num_classes, (1,), generator=g))
        for _ in range(5):
            c = int(torch.randint(0, num_classes, (1,), generator=g))
            y0, x0 = int(torch.randint(0, h - 8, (1,), generator=g)), int(torch.randint(0, w - 8, (1,), generator=g))
            y1 = y0 + int(torch.randint(8, h // 2 + 9, (1,), generator=g))
            x1 = x0 + int(torch.randint(8, w // 2 + 9, (1,), generator=g))
            labels[i, y0:y1, x0:x1] = c
    images = colours[labels].permute(0, 3, 1, 2).contiguous()
    stripes = torch.sin(torch.arange(w, dtype=torch.float32) * (labels.float().unsqueeze(1) + 1) * 0.7)
    images = images + 0.3 * stripes + 0.1 * torch.randn(images.shape, generator=g)
    return images, labels


def fit_stats(model: PSPNet, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Eval-mode accuracy, the smallest share of pixels predicted as any one class, and the median
    margin between the top two logits, on the given images."""
    model.eval()
    with torch.no_grad():
        logits = model(images)
    pred = logits.argmax(1)
    top2 = logits.topk(2, dim=1).values
    share = torch.bincount(pred.flatten(), minlength=logits.shape[1]).float() / pred.numel()
    return {"accuracy": float((pred == labels).float().mean()), "min_class_share": float(share.min()),
            "median_margin": float((top2[:, 0] - top2[:, 1]).median())}


# what the trained model must reach (a margin above the 1.0 that tests/inference/test_fast.py checks, for slack)
FIT_GOAL = {"accuracy": 0.75, "min_class_share": 0.02, "median_margin": 1.5}


def train_until_meaningful(seed: int = 0, first: int = 30, every: int = 10,
                           max_steps: int = 150) -> tuple[PSPNet, int, dict[str, float]]:
    """Full-batch Adam on the 12 training scenes, checked every ``every`` steps from ``first`` on,
    until :data:`FIT_GOAL` holds; returns (model, steps taken, its statistics). The check makes the
    result independent of how a CPU rounds: a CPU whose kernels round differently follows another
    trajectory and may need a few more steps, but ends at a model that meets the same goal (a fixed
    step count gave a 2-class model on a Xeon with AMX). Full batches: no sampling, a smooth descent."""
    num_classes = 4
    model = _tiny_pspnet(num_classes, seed=seed, head_channels=32, aux_channels=16, output_stride=16)
    images, labels = rectangle_scenes(16, 64, 80, num_classes, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = PSPNetLoss(0.4, 255)
    stats: dict[str, float] = {}
    for step in range(1, max_steps + 1):
        model.train()
        loss, _ = criterion(model(images[:12]), labels[:12])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= first and (step - first) % every == 0:
            stats = fit_stats(model, images[:12], labels[:12])
            if all(stats[k] >= v for k, v in FIT_GOAL.items()):
                return model.eval(), step, stats
    raise AssertionError(f"not meaningful after {max_steps} steps: {stats} (goal {FIT_GOAL})")


@pytest.fixture(scope="session")
def trained_tiny() -> tuple[PSPNet, torch.Tensor, torch.Tensor]:
    """(model, images, labels): a PSPNet-18 (output stride 16, narrow head) trained on 12 of 16
    rectangle scenes (64 x 80, 4 classes) until it predicts every class with good accuracy
    (:func:`train_until_meaningful`): its BatchNorm statistics and weights are learned and its logits
    have real margins between classes, so agreement between precisions is measured on predictions
    that depend on the image (a random-weight model's near-uniform logits would make any agreement
    test meaningless). Scenes 12-15 are held out. Shared: tests must not modify the model."""
    model, _, _ = train_until_meaningful()
    images, labels = rectangle_scenes(16, 64, 80, 4, seed=0)
    return model, images, labels


# CSAILVision's key names for our PSPNet's (encoder_epoch_*.pth / decoder_epoch_*.pth), for tests that
# make that zoo's checkpoints from a model of ours (conversion, the hub's download-and-convert)
CSAIL_KEY_RULES = [(r"^layer0\.0\.", "encoder.conv1."), (r"^layer0\.1\.", "encoder.bn1."),
                   (r"^layer0\.3\.", "encoder.conv2."), (r"^layer0\.4\.", "encoder.bn2."),
                   (r"^layer0\.6\.", "encoder.conv3."), (r"^layer0\.7\.", "encoder.bn3."),
                   (r"^(layer[1-4])\.", r"encoder.\1."), (r"^ppm\.features\.(\d+)\.", r"decoder.ppm.\1."),
                   (r"^cls\.(\d)\.", r"decoder.conv_last.\1."), (r"^aux\.([01])\.", r"decoder.cbr_deepsup.\1."),
                   (r"^aux\.4\.", "decoder.conv_last_deepsup.")]


def _csail_checkpoints(model: PSPNet, folder: Path) -> tuple[Path, Path]:
    """encoder_epoch_20.pth + decoder_epoch_20.pth as CSAILVision's train.py saves them (with the
    synchronised BatchNorm's extra buffers, which hold nonsense here: they must be dropped)."""
    halves: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "decoder": {}}
    for k, v in model.state_dict().items():
        new = next((re.sub(p, r, k) for p, r in CSAIL_KEY_RULES if re.match(p, k)), None)
        assert new is not None, f"no CSAILVision name for {k}"
        part, _, key = new.partition(".")
        halves[part][key] = v.clone()
        if key.endswith(".running_var"):
            base = key[: -len("running_var")]
            halves[part].update({base + "_tmp_running_mean": torch.full_like(v, 1e6),
                                 base + "_tmp_running_var": torch.full_like(v, -1.0),
                                 base + "_running_iter": torch.ones(1)})
    folder.mkdir(parents=True, exist_ok=True)
    for part, state in halves.items():
        torch.save(state, folder / f"{part}_epoch_20.pth")
    return folder / "encoder_epoch_20.pth", folder / "decoder_epoch_20.pth"


@pytest.fixture(scope="session")
def csail_checkpoints() -> Callable[[PSPNet, Path], tuple[Path, Path]]:
    """``csail_checkpoints(model, folder)`` -> (encoder, decoder) paths of CSAILVision's layout."""
    return _csail_checkpoints


@pytest.fixture(scope="session")
def csail_key_rules() -> list[tuple[str, str]]:
    return CSAIL_KEY_RULES
