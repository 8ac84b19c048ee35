"""The CUDA paths: AMP training (fp16 with the gradient scaler, bf16 without), channels_last on the
GPU, inference in fp32/bf16 and under fp16 autocast keeping the labels, and synchronised BatchNorm
(torch's ``SyncBatchNorm``, NCCL) under DDP. They run where torch sees a GPU and skip, saying so,
everywhere else (the CPU paths have their own tests); the two-rank test needs two GPUs.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pspnet import cpu
from pspnet.config import load_config
from pspnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pspnet.errors import ConfigError
from pspnet.inference.auto import AGREEMENT_BOUND
from pspnet.inference.fast import FastPSPNet
from pspnet.inference.prepare import argmax_agreement, prepare_for_inference
from pspnet.inference.testtime import predict_logits
from pspnet.models.norm import convert_sync_batchnorm
from pspnet.models.weights import read_state_dict
from pspnet.training.state import load_checkpoint
from pspnet.training.trainer import Trainer, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                    reason="needs two CUDA GPUs")


def _on_gpu(trained_tiny) -> tuple[nn.Module, torch.Tensor]:
    """A GPU copy of the shared trained model (which stays as it is) and its held-out scenes."""
    model, images, _ = trained_tiny
    return copy.deepcopy(model).cuda().eval(), images[12:].cuda()


@needs_cuda
def test_auto_precision_on_a_gpu():
    """auto: bf16 where the GPU supports it, for training (else fp16 AMP) and inference (else fp32)."""
    gpu = torch.device("cuda")
    bf16 = torch.cuda.is_bf16_supported()
    assert cpu.resolve_precision("auto", gpu) == (torch.bfloat16 if bf16 else torch.float16)
    assert cpu.resolve_precision("fp16", gpu) == torch.float16 and cpu.resolve_precision("fp32", gpu) is None
    assert cpu.resolve_inference_precision("auto", gpu) == ("bf16" if bf16 else "fp32")


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_amp_training_on_cuda(tmp_path, folder_dataset, tiny_run_config, precision):
    """A few AMP steps on the GPU in channels_last: fp16 with an active gradient scaler, bf16 without;
    finite losses, weights that moved and stayed finite, a checkpoint holding the scaler's state."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    data = folder_dataset(tmp_path / "data", n=4, size=(40, 48))
    cfg = tiny_run_config(data, tmp_path / "run", f"train.precision={precision}", "train.iters=3",
                          "train.channels_last=true", "data.val_split=''")
    trainer = Trainer(cfg, device="cuda", progress=False)
    assert trainer.device.type == "cuda"
    assert trainer.amp_dtype == (torch.float16 if precision == "fp16" else torch.bfloat16)
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    conv = trainer.model.layer1[0].conv1
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    result = trainer.fit()
    assert result.iterations == 3
    losses = [r["loss"] for r in trainer.history if r["kind"] == "train"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = trainer.model.state_dict()
    assert all(torch.isfinite(after[k]).all() for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight moved"
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")  # weights_only=True: checkpoints are untrusted input
    assert ckpt["iteration"] == 3
    if precision == "fp16":
        assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0


@needs_cuda
def test_cuda_inference_modes_keep_the_labels(trained_tiny):
    """On the GPU: the folded fp32 model equals the eager one, bf16 (channels_last, no oneDNN) and fp16
    autocast keep the product's 99.5% of the fp32 labels, and int8 (a CPU mode) is refused by name."""
    model, x = _on_gpu(trained_tiny)
    with torch.no_grad():
        ref = model(x)
    fp32 = prepare_for_inference(model, "fp32")
    assert isinstance(fp32, FastPSPNet) and not fp32.onednn and fp32.device.type == "cuda"
    with torch.no_grad():
        out = fp32(x)
    assert out.is_cuda and out.dtype == torch.float32
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-3  # TF32 convolutions allowed
    if torch.cuda.is_bf16_supported():
        bf16 = prepare_for_inference(model, "bf16")
        assert bf16.precision == "bf16" and bf16.channels_last
        with torch.no_grad():
            out = bf16(x)
        assert out.dtype == torch.float32 and not torch.equal(out, ref)
        assert argmax_agreement(out, ref) >= AGREEMENT_BOUND
    mean, std = (torch.tensor(v, device="cuda").view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    images = ((x * std + mean) * 255).clamp(0, 255).round().to(torch.uint8)  # the 0-255 images predict_logits takes
    plain = predict_logits(model, images, softmax=False)
    half = predict_logits(model, images, softmax=False, autocast_dtype=torch.float16)
    assert half.dtype == torch.float32 and argmax_agreement(half, plain) >= AGREEMENT_BOUND
    with pytest.raises(ConfigError, match="CPU"):
        prepare_for_inference(model, "int8")


@needs_cuda
def test_sync_batchnorm_under_ddp_on_cuda_equals_batchnorm(tmp_path, tiny_pspnet):
    """One rank (NCCL): every BatchNorm becomes torch's SyncBatchNorm, and a DDP training step in
    channels_last gives the outputs, batch statistics and gradients of the plain BatchNorm model."""
    import torch.distributed as dist
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plain = tiny_pspnet(3, dropout=0.0).cuda().to(memory_format=torch.channels_last).train()  # no random masks
        synced = convert_sync_batchnorm(copy.deepcopy(plain), "cuda").cuda().train()
        bns = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
        assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == bns > 20
        ddp = nn.parallel.DistributedDataParallel(synced, device_ids=[0])
        x = torch.randn(4, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
        a, b = plain(x), ddp(x)
        for ours, theirs in zip(a, b):  # main and aux logits
            torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-3 * float(ours.abs().max()))
        (a[0].square().mean() + a[1].square().mean()).backward()
        (b[0].square().mean() + b[1].square().mean()).backward()
        # gradients: as a whole per tensor (elementwise, a deep network's float noise reaches single entries)
        for (name, p), q in zip(plain.named_parameters(), synced.parameters()):
            assert float((q.grad - p.grad).norm() / p.grad.norm().clamp(min=1e-12)) < 1e-2, name
        torch.testing.assert_close(synced.layer1[0].bn1.running_var, plain.layer1[0].bn1.running_var,
                                   rtol=1e-3, atol=1e-5)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_two_gpus
def test_two_gpu_ddp_with_sync_batchnorm_matches_one_gpu_with_the_global_batch(tmp_path: Path, folder_dataset):
    """Two ranks (NCCL, one GPU each) x batch 2 with SyncBatchNorm train to the weights of one GPU x batch 4
    (the CPU twin is tests/training/test_ddp.py; tolerances looser for TF32 and cuDNN's summation orders)."""
    data = folder_dataset(tmp_path / "data", n=8, seed=1, channel=1)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"num_classes": 3, "depth": 18, "head_channels": 32, "aux_channels": 16, "dropout": 0.0,
                  "norm": "bn"},
        "data": {"dataset": "folder", "root": str(data), "crop_size": [32, 32], "workers": 0},
        "train": {"iters": 3, "batch_size": 2, "precision": "fp32", "log_every": 1, "lr": 0.001,
                  "output_dir": str(tmp_path / "ddp")},
    }))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pspnet.cli", "train", "-c", str(cfg_path), "--device", "cuda", "--no-progress"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for rank, p in enumerate(procs):
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"
    single = train(load_config(cfg_path, ["train.batch_size=4", f"train.output_dir={tmp_path / 'single'}"]),
                   progress=False, device="cuda")
    assert single.iterations == 3
    a, _ = read_state_dict(tmp_path / "ddp" / "final.safetensors")
    b, _ = read_state_dict(tmp_path / "single" / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k
