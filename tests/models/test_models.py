"""The PSPNet model family: the original release's layout, any input size, strides, heads, variants."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pspnet.errors import DataError
from pspnet.models import (
    PSPNet,
    PSPNetConfig,
    PSPNetLoss,
    ResNet,
    build_pspnet,
    pspnet_resnet18,
    pspnet_resnet50,
    pspnet_resnet101,
)
from pspnet.models.pspnet import pspnet_resnet34, pspnet_resnet152

TESTS = Path(__file__).resolve().parents[1]
SHARED = TESTS.parent.parent / "shared" / "reference"


def read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """``key<TAB>AxBxC`` lines (header first; empty shape = scalar) -> {key: shape}, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["key", "shape"], f"{path}: unexpected header {lines[0]!r}"
    out = {}
    for line in lines[1:]:
        key, shape = line.split("\t")
        out[key] = tuple(int(x) for x in shape.split("x")) if shape else ()
    return out


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ layout of the original release
@pytest.mark.parametrize("source", [TESTS / "assets" / "semseg_pspnet50_keys.tsv",
                                    SHARED / "semseg_pspnet50_keys.tsv"], ids=["tests-copy", "shared"])
def test_pspnet50_matches_original_layout(source: Path):
    if not source.is_file():
        pytest.skip(f"{source} not present")
    ref = read_keys(source)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours = shapes_of(pspnet_resnet50(num_classes=19))
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}
    assert list(ours) == list(ref)  # the same order too
    assert len(ref) == 370


def test_pspnet101_matches_original_layout():
    source = SHARED / "semseg_pspnet101_keys.tsv"
    if not source.is_file():
        pytest.skip(f"{source} not present")
    ref = read_keys(source)
    with torch.device("meta"):
        ours = shapes_of(pspnet_resnet101(num_classes=19))
    assert ours == ref
    assert list(ours) == list(ref)


def test_layout_details_that_the_release_implies():
    with torch.device("meta"):
        m = pspnet_resnet50(num_classes=19)
    sd = shapes_of(m)
    assert sd["layer1.0.downsample.0.weight"] == (256, 128, 1, 1)  # deep stem ends in 128 channels
    assert sd["ppm.features.3.1.weight"] == (512, 2048, 1, 1)
    assert sd["cls.0.weight"] == (512, 4096, 3, 3) and sd["cls.4.weight"] == (19, 512, 1, 1)
    assert sd["aux.0.weight"] == (256, 1024, 3, 3) and sd["aux.4.bias"] == (19,)
    assert isinstance(m.cls[3], nn.Dropout2d) and m.cls[3].p == pytest.approx(0.1)
    assert isinstance(m.ppm.features[0][0], nn.AdaptiveAvgPool2d)
    assert [f[0].output_size for f in m.ppm.features] == [1, 2, 3, 6]


# ------------------------------------------------------------------ any input size
@pytest.mark.parametrize("size", [(97, 131), (360, 480), (8, 8), (9, 33)])
def test_logits_come_back_at_input_size(size, tiny_pspnet):
    torch.manual_seed(0)
    m = tiny_pspnet(7).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, *size))
    assert out.shape == (1, 7, *size)
    assert torch.isfinite(out).all()


def test_resnet50_on_a_small_odd_input():
    torch.manual_seed(0)
    m = pspnet_resnet50(num_classes=19).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 41, 53))
    assert out.shape == (1, 19, 41, 53)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 5, 200), (1, 3, 7, 7)])
def test_too_small_input_is_rejected_clearly(shape, tiny_pspnet):
    m = tiny_pspnet(5).eval()
    with pytest.raises(DataError, match=r"too small.*output stride 8 needs at least 8x8"):
        m(torch.randn(*shape))


def test_minimum_size_follows_output_stride(tiny_pspnet):
    m = tiny_pspnet(5, output_stride=16).eval()
    with pytest.raises(ValueError, match="needs at least 16x16"):  # DataError is a ValueError
        m(torch.randn(1, 3, 15, 40))
    with torch.no_grad():
        assert m(torch.randn(1, 3, 16, 16)).shape == (1, 5, 16, 16)


@pytest.mark.parametrize("x, msg", [(torch.randn(3, 32, 32), "N x 3 x H x W"),
                                    (torch.randn(1, 1, 32, 32), "N x 3 x H x W"),
                                    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "normalised float")])
def test_wrong_input_kind_is_rejected(x, msg, tiny_pspnet):
    with pytest.raises(DataError, match=msg):
        tiny_pspnet(5).eval()(x)


# ------------------------------------------------------------------ dilated network strategy
def _features(m: PSPNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = m.layer2(m.layer1(m.layer0(x)))
    x3 = m.layer3(x)
    return x3, m.layer4(x3)


@pytest.mark.parametrize("os_, l3_dil, l4_dil", [(8, 2, 4), (16, 1, 2)])
def test_output_stride(os_, l3_dil, l4_dil, tiny_pspnet):
    m = tiny_pspnet(5, output_stride=os_).eval()
    with torch.no_grad():
        x3, x4 = _features(m, torch.randn(1, 3, 64, 96))
        assert x4.shape[-2:] == (64 // os_, 96 // os_)
        assert x3.shape[-2:] == (64 // os_, 96 // os_)
        assert m(torch.randn(1, 3, 64, 96)).shape[-2:] == (64, 96)
    assert m.layer3[0].conv1.dilation == (l3_dil, l3_dil) and m.layer4[-1].conv2.dilation == (l4_dil, l4_dil)
    assert m.layer4[0].conv1.stride == (1, 1)
    # a dilated 3x3 conv keeps the size: padding equals dilation
    assert m.layer4[0].conv2.padding == (l4_dil, l4_dil)


# The paper's models (Sec. 3.2 / 4.1, output stride 8): layer3 and layer4 keep the resolution of layer2
# (every stride 1, the downsample shortcut's 1x1 too) and dilate their 3x3 convolutions by 2 and 4,
# padding = dilation, in every block (the original release does not halve the first block's dilation).
PAPER_DILATION = {"layer3": 2, "layer4": 4}
PAPER_MODELS = {"pspnet_resnet50": (pspnet_resnet50, 6, 3), "pspnet_resnet101": (pspnet_resnet101, 23, 3)}


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_paper_models_dilate_every_conv_of_layer3_and_layer4(name):
    builder, n3, n4 = PAPER_MODELS[name]
    with torch.device("meta"):
        m = builder(num_classes=19)
    assert m.config.output_stride == 8
    for layer, blocks in (("layer3", n3), ("layer4", n4)):
        d = PAPER_DILATION[layer]
        stage = getattr(m, layer)
        assert len(stage) == blocks
        convs = {n: c for n, c in stage.named_modules() if isinstance(c, nn.Conv2d)}
        assert len(convs) == 3 * blocks + 1, sorted(convs)  # 3 per bottleneck + the first block's shortcut
        for n, c in convs.items():
            where = f"{name}.{layer}.{n}"
            assert c.stride == (1, 1), where
            if c.kernel_size == (3, 3):
                assert n.endswith("conv2"), where
                assert (c.dilation, c.padding) == ((d, d), (d, d)), f"{where}: {c.dilation}, {c.padding}"
            else:
                assert c.kernel_size == (1, 1), where
                assert (c.dilation, c.padding) == ((1, 1), (0, 0)), where
        down = stage[0].downsample
        assert isinstance(down, nn.Sequential) and len(down) == 2
        assert isinstance(down[0], nn.Conv2d) and isinstance(down[1], nn.BatchNorm2d)
        assert down[0].kernel_size == (1, 1) and down[0].stride == (1, 1)
        assert all(b.downsample is None for b in stage[1:])
    # and what comes before is strided as in ResNet: output stride 4 after the stem, 8 after layer2
    assert m.layer2[0].conv2.stride == (2, 2) and m.layer2[0].downsample[0].stride == (2, 2)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _reference_stage(x: torch.Tensor, stage: nn.Sequential, dilation: int) -> torch.Tensor:
    """A dilated bottleneck stage written with F.conv2d from the paper's description, reading only
    the modules' weights and BatchNorm statistics (none of their stride/dilation/padding settings)."""
    for i, b in enumerate(stage):
        out = F.relu(_bn(F.conv2d(x, b.conv1.weight), b.bn1))
        out = F.relu(_bn(F.conv2d(out, b.conv2.weight, stride=1, padding=dilation, dilation=dilation), b.bn2))
        out = _bn(F.conv2d(out, b.conv3.weight), b.bn3)
        shortcut = _bn(F.conv2d(x, b.downsample[0].weight), b.downsample[1]) if i == 0 else x
        x = F.relu(out + shortcut)
    return x


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_paper_models_backbone_equals_an_independent_dilated_forward(name):
    """layer3 + layer4 of the model == the reference above, in float64 (so the comparison does not
    depend on how a CPU rounds), on layer2-sized features of an odd size. BatchNorm statistics are
    random so that every part of every block shows in the output."""
    builder = PAPER_MODELS[name][0]
    torch.manual_seed(0)
    m = builder(num_classes=19).eval()
    stages = nn.Sequential(m.layer3, m.layer4).double()
    g = torch.Generator().manual_seed(1)
    for bn in (x for x in stages.modules() if isinstance(x, nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g, dtype=torch.float64) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g, dtype=torch.float64) + 0.5)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=g, dtype=torch.float64) * 0.1)
    x = torch.randn(1, 512, 13, 11, generator=g, dtype=torch.float64)  # layer2's output: 512 channels, 1/8 size
    with torch.no_grad():
        out = stages(x)
        ref = _reference_stage(_reference_stage(x, m.layer3, PAPER_DILATION["layer3"]), m.layer4,
                               PAPER_DILATION["layer4"])
    assert out.shape == ref.shape == (1, 2048, 13, 11)  # output stride 8 kept through layer4
    assert float(ref.abs().max()) > 0
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_invalid_output_stride_is_rejected():
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        PSPNetConfig(output_stride=32)


# ------------------------------------------------------------------ heads
def test_aux_output_only_in_training(tiny_pspnet):
    torch.manual_seed(0)
    m = tiny_pspnet(4)
    x = torch.randn(2, 3, 40, 56)
    m.train()
    out = m(x)
    assert isinstance(out, tuple) and len(out) == 2
    main, aux = out
    assert main.shape == aux.shape == (2, 4, 40, 56)
    assert not torch.equal(main, aux)
    m.eval()
    calls = []
    handle = m.aux.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = m(x)
    handle.remove()
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 40, 56)
    assert calls == []  # the auxiliary branch is not even computed at inference


def test_no_aux_head_when_disabled(tiny_pspnet):
    m = tiny_pspnet(5, aux=False).train()
    assert m.aux is None and not any(k.startswith("aux.") for k in m.state_dict())
    assert isinstance(m(torch.randn(2, 3, 32, 32)), torch.Tensor)


def test_loss_weights_aux_by_0_4_and_ignores_255():
    torch.manual_seed(0)
    main, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    ce = nn.functional.cross_entropy
    total, parts = PSPNetLoss()((main, aux), target)
    expected = ce(main, target, ignore_index=255) + 0.4 * ce(aux, target, ignore_index=255)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"main", "aux"}
    weights = [1.0, 2.0, 0.5]
    total_w, _ = PSPNetLoss(class_weights=weights)(main, target)
    assert total_w.item() == pytest.approx(
        ce(main, target, weight=torch.tensor(weights), ignore_index=255).item(), rel=1e-6)


def _two_class_logits(p_true: list[float]) -> torch.Tensor:
    """1 x 2 x 1 x N logits whose softmax gives class 0 the probabilities ``p_true``."""
    p = torch.tensor(p_true)
    return torch.stack([p.log(), (1 - p).log()])[None, :, None, :]


def test_ohem_averages_the_hard_pixels_only_and_keeps_at_least_min_kept():
    p_true = [0.9, 0.6, 0.5, 0.95, 0.3]
    logits, target = _two_class_logits(p_true), torch.tensor([[[0, 0, 0, 0, 255]]])
    hard = [-math.log(0.6), -math.log(0.5)]  # p(true) < 0.7; the ignored pixel never counts
    loss, _ = PSPNetLoss(ohem_thresh=0.7, ohem_min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(sum(hard) / 2, rel=1e-5)
    loss, _ = PSPNetLoss(ohem_thresh=0.7, ohem_min_kept=3)(logits, target)  # too few hard: the 3 hardest
    assert loss.item() == pytest.approx((sum(hard) - math.log(0.9)) / 3, rel=1e-5)


def test_ohem_judges_hardness_on_the_class_weighted_loss():
    # weight 2: hard up to p(true) = sqrt(0.7) = 0.837, so 0.8 and 0.82 are hard and 0.9 is not
    logits, target = _two_class_logits([0.8, 0.82, 0.9]), torch.tensor([[[0, 0, 0]]])
    loss, _ = PSPNetLoss(class_weights=[2.0, 1.0], ohem_thresh=0.7, ohem_min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(-(math.log(0.8) + math.log(0.82)), rel=1e-5)
    loss, _ = PSPNetLoss(ohem_thresh=0.7, ohem_min_kept=1)(logits, target)  # unweighted: none is hard
    assert loss.item() == pytest.approx(-math.log(0.8), rel=1e-5)  # the one hardest (min_kept)


def test_training_step_reduces_loss_on_a_fixed_batch(tiny_pspnet):
    """A few SGD steps on one batch must lower the loss: gradients reach every part of the model."""
    torch.manual_seed(0)
    m = tiny_pspnet(3, norm="gn").train()
    x = torch.randn(2, 3, 32, 32)
    y = (torch.arange(32)[None, :, None] >= 16).long().expand(2, 32, 32).contiguous()
    loss_fn = PSPNetLoss()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for i in range(6):
        opt.zero_grad()
        loss, _ = loss_fn(m(x), y)
        loss.backward()
        if i == 0:  # every parameter tensor gets a gradient, and a non-zero one (not cut off by a detach
            # or multiplied away: a zero-filled gradient "exists" too)
            missing = [n for n, p in m.named_parameters() if p.grad is None]
            zero = [n for n, p in m.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
            assert missing == [] and zero == [], (missing, zero)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------ variants
@pytest.mark.parametrize("norm, layer", [("bn", nn.BatchNorm2d), ("syncbn", nn.BatchNorm2d), ("gn", nn.GroupNorm)])
def test_norm_variants_build_and_run(norm, layer, tiny_pspnet):
    m = tiny_pspnet(5, norm=norm)
    kinds = {type(x) for x in m.modules() if isinstance(x, (nn.BatchNorm2d, nn.GroupNorm))}
    assert kinds == {layer}
    if norm == "gn":  # GroupNorm trains on a single image (BatchNorm cannot: the 1x1 PPM bin)
        main, aux = m.train()(torch.randn(1, 3, 32, 32))
        assert main.shape == (1, 5, 32, 32)


def test_groupnorm_groups_divide_channels(tiny_pspnet):
    m = tiny_pspnet(5, norm="gn")
    for g in (x for x in m.modules() if isinstance(x, nn.GroupNorm)):
        assert g.num_channels % g.num_groups == 0 and g.num_groups <= 32


@pytest.mark.parametrize("depth, params_m", [(18, 11.2), (34, 21.3), (50, 23.5), (101, 42.5), (152, 58.1)])
def test_every_depth_builds(depth, params_m):
    """Construct only (meta device: no memory, no init); the backbone has ResNet-{depth}'s size."""
    with torch.device("meta"):
        m = build_pspnet({"depth": depth, "num_classes": 19})
        backbone = ResNet(depth, deep_stem=False, output_stride=8)
    n = sum(p.numel() for p in backbone.parameters()) / 1e6
    assert n == pytest.approx(params_m, abs=0.1)  # torchvision's ResNet without fc: 11.2M ... 58.1M
    width = 512 if depth < 50 else 2048
    assert m.ppm.features[0][1].in_channels == width
    assert m.aux[0].in_channels == width // 2
    assert len(m.layer3) == {18: 2, 34: 6, 50: 6, 101: 23, 152: 36}[depth]


def test_named_builders_use_their_depth():
    with torch.device("meta"):
        for fn, depth in [(pspnet_resnet18, 18), (pspnet_resnet34, 34), (pspnet_resnet152, 152)]:
            assert fn(num_classes=3).config.depth == depth


@pytest.mark.parametrize("deep_stem", [True, False])
def test_stems(deep_stem, tiny_pspnet):
    m = tiny_pspnet(5, deep_stem=deep_stem).eval()
    convs = [x for x in m.layer0 if isinstance(x, nn.Conv2d)]
    if deep_stem:
        assert [c.kernel_size for c in convs] == [(3, 3)] * 3
        assert [c.out_channels for c in convs] == [64, 64, 128]
        assert m.layer1[0].conv1.in_channels == 128
    else:
        assert [c.kernel_size for c in convs] == [(7, 7)]
        assert m.layer1[0].conv1.in_channels == 64
    assert isinstance(m.layer0[-1], nn.MaxPool2d)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 33, 45)).shape == (1, 5, 33, 45)


def test_resnet_stem_forward_equals_layer0():
    """``ResNet.stem()`` shares the backbone's modules and computes the same thing as its forward."""
    torch.manual_seed(0)
    for deep in (True, False):
        r = ResNet(18, deep_stem=deep, output_stride=8).eval()
        x = torch.randn(1, 3, 40, 40)
        with torch.no_grad():
            a = r.forward_features(x)
            b = r.layer4(r.layer3(r.layer2(r.layer1(r.stem()(x)))))
        torch.testing.assert_close(a, b)


def test_ppm_options(tiny_pspnet):
    m = tiny_pspnet(5, bins=(1, 3), pool="max").eval()
    assert [f[0].output_size for f in m.ppm.features] == [1, 3]
    assert isinstance(m.ppm.features[0][0], nn.AdaptiveMaxPool2d)
    assert m.ppm.out_channels == 512 + 2 * 256
    with torch.no_grad():
        assert m(torch.randn(1, 3, 50, 30)).shape == (1, 5, 50, 30)


def test_config_round_trip_and_errors():
    cfg = PSPNetConfig(num_classes=3, depth=34, bins=[1, 2], pool="max", norm="gn")
    again = PSPNetConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.bins == (1, 2)
    with pytest.raises(ValueError, match="unknown PSPNet config keys.*'nmu_classes'"):
        PSPNetConfig.from_dict({"nmu_classes": 3})
    with pytest.raises(ValueError, match="depth must be one of"):
        PSPNetConfig(depth=42)
    with pytest.raises(TypeError, match="either a PSPNetConfig or keyword arguments"):
        PSPNet(cfg, num_classes=4)
