"""The fused batch norm + (residual add) + ReLU of ``pspnet.models.norm_act`` computes what the eager
layers compute, and runs only where it applies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pspnet import cpu
from pspnet.models import norm_act
from pspnet.models.kernels import ENV
from pspnet.models.norm_act import bn_relu, fused_bn_available

pytestmark = pytest.mark.skipif(not fused_bn_available(), reason="no C++ compiler: the eager layers train")

CL = torch.channels_last


@pytest.fixture
def fused_calls(count_forward_calls):
    """How many times the kernel ran (its autograd Function's forward)."""
    return count_forward_calls(norm_act._BatchNormReLU)


def _case(dtype, residual: bool, shape=(3, 24, 10, 14), seed=0):
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(shape[1]).train()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(shape[1], generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(shape[1], generator=gen) - 0.5)
        bn.running_mean.copy_(torch.randn(shape[1], generator=gen))
    x = (torch.randn(shape, generator=gen) * 2 + 1).to(dtype).contiguous(memory_format=CL)
    r = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=CL) if residual else None
    grad = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=CL)
    return bn, x, r, grad


def _run(bn, x, r, grad, *, fused: bool, monkeypatch, dtype=None):
    """Output, gradients (x, weight, bias, residual) and BN state after one training forward/backward."""
    monkeypatch.setenv(ENV, "1" if fused else "0")
    bn = copy.deepcopy(bn)
    if dtype is not None:
        bn = bn.to(dtype)
    cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
    x = cast(x).detach().requires_grad_()
    r = None if r is None else cast(r).detach().requires_grad_()
    y = bn_relu(bn, x * 1, nn.ReLU(inplace=True), None if r is None else r * 1)
    y.backward(cast(grad))
    out = {"y": y, "dx": x.grad, "dw": bn.weight.grad, "db": bn.bias.grad, "running_mean": bn.running_mean,
           "running_var": bn.running_var, "num_batches_tracked": bn.num_batches_tracked.double()}
    if r is not None:
        out["dr"] = r.grad
    return {k: v.detach().double() for k, v in out.items()}


@pytest.mark.parametrize("residual", [False, True])
def test_fp32_matches_the_eager_layers(residual, monkeypatch, fused_calls):
    bn, x, r, grad = _case(torch.float32, residual)
    eager = _run(bn, x, r, grad, fused=False, monkeypatch=monkeypatch)
    assert not fused_calls
    fused = _run(bn, x, r, grad, fused=True, monkeypatch=monkeypatch)
    assert fused_calls, "the kernel did not run"
    for key, want in eager.items():
        torch.testing.assert_close(fused[key], want, rtol=1e-5, atol=1e-5, msg=key)
    assert fused["num_batches_tracked"].item() == 1


@pytest.mark.parametrize("residual", [False, True])
def test_bf16_is_as_close_to_float64_as_eager_bf16(residual, monkeypatch, fused_calls):
    """bf16 rounds differently (once at the end, not after BN and again after the add), so both are
    held to the float64 result: the fused error may not exceed eager's by more than a rounding step."""
    bn, x, r, grad = _case(torch.bfloat16, residual, shape=(4, 32, 12, 16))
    exact = _run(bn, x, r, grad, fused=False, monkeypatch=monkeypatch, dtype=torch.float64)
    eager = _run(bn, x, r, grad, fused=False, monkeypatch=monkeypatch)
    fused = _run(bn, x, r, grad, fused=True, monkeypatch=monkeypatch)
    assert fused_calls
    for key in exact:
        scale = exact[key].abs().mean().clamp(min=1e-6)
        err_fused = (fused[key] - exact[key]).abs().mean() / scale
        err_eager = (eager[key] - exact[key]).abs().mean() / scale
        assert err_fused <= err_eager * 1.5 + 4e-3, (key, float(err_fused), float(err_eager))


def test_reductions_do_not_depend_on_the_thread_count(monkeypatch):
    bn, x, r, grad = _case(torch.bfloat16, True, shape=(4, 64, 20, 30))
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        results.append(_run(bn, x, r, grad, fused=True, monkeypatch=monkeypatch))
    for other in results[1:]:
        for key, value in results[0].items():
            assert torch.equal(other[key], value), key


@pytest.mark.parametrize("case", ["eval", "contiguous", "groupnorm", "disabled"])
def test_the_eager_layers_run_where_the_kernel_does_not_apply(case, monkeypatch, fused_calls):
    bn, x, r, grad = _case(torch.float32, True)
    if case == "eval":
        bn.eval()
    elif case == "contiguous":
        x, r = x.contiguous(), r.contiguous()
    elif case == "groupnorm":
        bn = nn.GroupNorm(4, x.shape[1])
    monkeypatch.setenv(ENV, "0" if case == "disabled" else "1")
    relu = nn.ReLU()
    assert torch.equal(bn_relu(bn, x, relu, r), relu(bn(x) + r))
    assert not fused_calls


def test_a_training_step_of_pspnet_matches_eager(tiny_pspnet, monkeypatch, fused_calls):
    """The stem, every block and the heads go through the kernel; loss and every gradient as eager's."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=CL)
    target = torch.randint(0, 3, (2, 64, 64))
    results = []
    for fused in (False, True):
        monkeypatch.setenv(ENV, "1" if fused else "0")
        net = tiny_pspnet().train().to(memory_format=CL)
        out, aux = net(x)
        loss = nn.functional.cross_entropy(out, target) + 0.4 * nn.functional.cross_entropy(aux, target)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()},
                        {n: b.clone() for n, b in net.named_buffers()}))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in tiny_pspnet().modules())
    assert len(fused_calls) >= n_bn // 2, f"only {len(fused_calls)} of {n_bn} batch norms fused"
    (loss_e, grads_e, bufs_e), (loss_f, grads_f, bufs_f) = results
    torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6)
    for name in grads_e:
        torch.testing.assert_close(grads_f[name], grads_e[name], rtol=1e-3, atol=1e-5, msg=name)
    for name in bufs_e:  # rounding grows through the layers: 1e-4 of the buffer's size, far below 1 / (n - 1)
        torch.testing.assert_close(bufs_f[name], bufs_e[name], rtol=1e-4, atol=1e-4 * float(bufs_e[name].abs().max()))


def test_keep_freed_memory_is_off_when_asked(monkeypatch):
    cpu.keep_freed_memory.cache_clear()
    try:
        monkeypatch.setenv(cpu.ALLOCATOR_ENV, "0")
        assert cpu.keep_freed_memory() is False
    finally:
        cpu.keep_freed_memory.cache_clear()
