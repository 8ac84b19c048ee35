"""The loss on output-stride logits (the trainer's path: ``PSPNet(x, upsample=False)``) equals the loss
on upsampled logits, through the CPU kernel of ``kernels/upsampled_ce.cpp`` and without it."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from pspnet.models import PSPNetLoss
from pspnet.models import loss as loss_module
from pspnet.models.kernels import ENV
from pspnet.models.loss import upsampled_cross_entropy

kernel_builds = pytest.mark.skipif(loss_module._library() is None, reason="no C++ compiler: the loss upsamples eagerly")


@pytest.fixture
def kernel_calls(count_forward_calls):
    return count_forward_calls(loss_module._UpsampledCrossEntropy)


def _batch(dtype=torch.float32, low=(5, 7), full=(37, 53), classes=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, classes, *low, generator=gen) * 3).to(dtype).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, classes, (2, *full), generator=gen)
    target[0, :4] = 255
    return logits, target


@kernel_builds
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("sizes", [((5, 7), (37, 53)), ((24, 32), (192, 256)), ((3, 4), (3, 9))])
def test_kernel_matches_float64_interpolate_and_cross_entropy(align_corners, sizes, kernel_calls):
    logits, target = _batch(low=sizes[0], full=sizes[1])
    weight = torch.linspace(0.5, 2.0, logits.shape[1])
    upstream = torch.rand(target.shape, generator=torch.Generator().manual_seed(1))
    x = logits.clone().requires_grad_()
    loss = upsampled_cross_entropy(x, target, weight, 255, align_corners)
    (loss * upstream).sum().backward()
    assert kernel_calls
    ref_x = logits.double().requires_grad_()
    ref = F.cross_entropy(F.interpolate(ref_x, sizes[1], mode="bilinear", align_corners=align_corners), target,
                          weight=weight.double(), ignore_index=255, reduction="none")
    (ref * upstream.double()).sum().backward()
    assert loss.dtype == torch.float32 and loss.shape == target.shape
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    # float32 sums of up to ~100 pixels per source cell: 1e-5 of the largest gradient
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-5 * float(ref_x.grad.abs().max()))
    assert loss[0, :4].eq(0).all()


@kernel_builds
@pytest.mark.parametrize("kind", ["ce", "weighted", "ohem"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pspnet_loss_on_low_resolution_logits_equals_it_on_upsampled_ones(kind, dtype, kernel_calls):
    kwargs = {"weighted": {"class_weights": [0.5, 1, 2, 1, 1, 3]},
              "ohem": {"class_weights": [0.5, 1, 2, 1, 1, 3], "ohem_thresh": 0.7, "ohem_min_kept": 500}}.get(kind, {})
    criterion = PSPNetLoss(0.4, 255, align_corners=True, **kwargs)
    main, target = _batch(dtype)
    aux, _ = _batch(dtype, seed=1)
    results = []
    for low in (True, False):
        m, a = main.clone().requires_grad_(), aux.clone().requires_grad_()
        up = (lambda t: t) if low else (lambda t: F.interpolate(t, target.shape[-2:], mode="bilinear",
                                                                align_corners=True))
        total, _ = criterion((up(m), up(a)), target)
        total.backward()
        results.append((total.detach(), m.grad.float(), a.grad.float()))
    assert len(kernel_calls) == 2
    (low_total, low_gm, low_ga), (full_total, full_gm, full_ga) = results
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 1e-3}
    torch.testing.assert_close(low_total, full_total, **tol)
    torch.testing.assert_close(low_gm, full_gm, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    torch.testing.assert_close(low_ga, full_ga, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


@kernel_builds
def test_a_label_out_of_range_is_named():
    logits, target = _batch()
    target[1, 5, 5] = 9
    with pytest.raises(IndexError, match="label 9 is out of range for 6 classes"):
        upsampled_cross_entropy(logits, target, None, 255, True)


def test_without_the_kernel_the_loss_is_the_eager_upsampled_one(monkeypatch, kernel_calls):
    monkeypatch.setenv(ENV, "0")
    criterion = PSPNetLoss(0.4, 255, class_weights=[0.5, 1, 2, 1, 1, 3], align_corners=False)
    main, target = _batch()
    full = F.interpolate(main, target.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.equal(criterion(main, target)[0], criterion(full, target)[0])
    assert not kernel_calls


def test_pspnet_returns_output_stride_logits_when_asked(tiny_pspnet):
    net = tiny_pspnet()
    x = torch.randn(2, 3, 64, 96)
    main, aux = net(x, upsample=False)
    assert main.shape == aux.shape == (2, 3, 8, 12)
    full, _ = net(x)
    torch.manual_seed(0)
    net.eval()
    assert net(x, upsample=False).shape == (2, 3, 8, 12)
    assert full.shape[-2:] == x.shape[-2:]
