"""Converted zoo checkpoints give the zoo's own logits: mmsegmentation and CSAILVision vs pspnet.

Not a test: it needs each zoo's code, installed in a separate virtual environment that pspnet never
depends on (see docs/model.md, "Other zoos"), and is run on purpose:

    PYTHONPATH=src /work/refenv/bin/python bench/zoo_equivalence.py [--record tests/assets]

For each model it builds the zoo's network from the zoo's own code with random weights (convolutions
He-initialised, BatchNorm affine parameters random, running statistics measured on a random batch
and then perturbed), puts it in eval mode, saves a checkpoint in the zoo's own layout (an
mmsegmentation ``{"meta", "state_dict"}`` file; CSAILVision ``encoder_epoch_20.pth`` +
``decoder_epoch_20.pth``), converts it with ``pspnet convert`` (the command line) and runs both on the
same normalised input. It prints the largest absolute logit difference and the argmax agreement.

Logits: mmsegmentation's are ``EncoderDecoder.encode_decode`` (decode head + its own resize to the
input size). CSAILVision's inference path returns softmax probabilities; its logits are taken by a
forward hook on ``decoder.conv_last`` and resized to the input size as that decoder does (bilinear,
align_corners=False); the probabilities of the zoo's own forward are compared too.

``--record DIR`` also writes the zoo models' key / shape lists and convolution geometry (kernel,
stride, dilation, padding) to DIR, the data that tests/models/test_zoo_convert.py checks our conversion
against without importing either zoo.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

MMSEG_MODELS = {  # name -> (config under mmseg's .mim/configs/pspnet, checkpoint file name, input H x W)
    "mmseg-r18-d8": ("pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py",
                     "pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth", (256, 512)),
    "mmseg-r50-d8": ("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
                     "pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth", (256, 512)),
    "mmseg-r50-d8-769": ("pspnet_r50-d8_4xb2-40k_cityscapes-769x769.py",
                         "pspnet_r50-d8_769x769_40k_cityscapes_20200606_112725-86638686.pth", (257, 385)),
    "mmseg-r101-d8-ade": ("pspnet_r101-d8_4xb4-160k_ade20k-512x512.py",
                          "pspnet_r101-d8_512x512_160k_ade20k_20200615_100650-967c316f.pth", (240, 320)),
    "mmseg-r18b-d8": ("pspnet_r18b-d8_4xb2-80k_cityscapes-512x1024.py",
                      "pspnet_r18b-d8_512x1024_80k_cityscapes_20201226_063116-26928a60.pth", (256, 512)),
}
CSAIL_MODELS = {"csail-resnet50dilated-ppm_deepsup": ("resnet50", "ppm_deepsup", 2048, (264, 352)),
                "csail-resnet18dilated-ppm_deepsup": ("resnet18", "ppm_deepsup", 512, (264, 352)),
                "csail-resnet101dilated-ppm": ("resnet101", "ppm", 2048, (240, 320))}


@torch.no_grad()
def randomise(model: nn.Module, x: torch.Tensor, forward, seed: int) -> None:
    """Random weights and BatchNorm statistics that keep activations of a sane size."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            m.momentum = 1.0  # running statistics := those of the calibration batch
            m.reset_running_stats()
    model.train()
    forward(x)  # running statistics measured on a random batch
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.05)
            m.running_var.mul_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=g))
            for extra in ("_tmp_running_mean", "_tmp_running_var"):  # CSAIL's synchronised BN: must be dropped
                if hasattr(m, extra):
                    getattr(m, extra).copy_(torch.randn(m.num_features, generator=g) * 100)


def image_batch(h: int, w: int, seed: int, n: int = 1) -> torch.Tensor:
    """A smooth random 0-255 RGB image, normalised with the ImageNet mean/std x 255 (both zoos' preprocessing)."""
    g = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.rand(n, 3, h // 8 + 1, w // 8 + 1, generator=g), (h, w), mode="bilinear") * 255
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return (img - mean) / std


def convert_with_cli(inputs: list[Path], out: Path) -> str:
    cmd = [sys.executable, "-m", "pspnet.cli", "convert", *map(str, inputs), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}")
    return res.stdout


@torch.no_grad()
def ours(out: Path, x: torch.Tensor) -> torch.Tensor:
    from pspnet.models.weights import load_weights
    model, _ = load_weights(out)
    return model(x)


def compare(name: str, theirs: torch.Tensor, mine: torch.Tensor, extra: str = "") -> dict:
    diff = (theirs - mine).abs().max().item()
    agree = (theirs.argmax(1) == mine.argmax(1)).float().mean().item()
    print(f"{name:<36} logits {tuple(theirs.shape)}  range [{theirs.min().item():8.2f}, {theirs.max().item():7.2f}]  "
          f"max |diff| {diff:.2e}  argmax agreement {100 * agree:.4f}%{extra}", flush=True)
    return {"name": name, "max_abs_diff": diff, "agreement": agree}


def conv_table(model: nn.Module) -> list[str]:
    return [f"{n}\t{'x'.join(map(str, m.kernel_size))}\t{m.stride[0]}\t{m.dilation[0]}\t{m.padding[0]}"
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def key_table(state) -> list[str]:
    return [f"{k}\t{'x'.join(map(str, v.shape)) or '-'}" for k, v in state.items()]


def write_table(path: Path, header: str, rows: list[str]) -> None:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    print(f"recorded {path} ({len(rows)} rows)")


# ----------------------------------------------------------------------------------------- mmseg
def build_mmseg(config_name: str) -> tuple[nn.Module, object]:
    import mmseg
    from mmengine import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(str(Path(mmseg.__file__).parent / ".mim" / "configs" / "pspnet" / config_name))
    cfg.model.pretrained = None
    for part in ("backbone", "decode_head", "auxiliary_head"):  # SyncBN needs a process group: plain BN (same keys)
        if "norm_cfg" in cfg.model[part]:
            cfg.model[part].norm_cfg = dict(type="BN", requires_grad=True)
    cfg.model.data_preprocessor = None
    return MODELS.build(cfg.model), cfg


def run_mmseg(name: str, tmp: Path, record: Path | None, seed: int) -> dict:
    config_name, ckpt_name, (h, w) = MMSEG_MODELS[name]
    model, cfg = build_mmseg(config_name)
    x = image_batch(h, w, seed)
    metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))]
    randomise(model, image_batch(h, w, seed + 1, n=2), lambda b: model.encode_decode(b, metas * len(b)), seed)
    with torch.no_grad():
        theirs = model.encode_decode(x, metas)
    path = tmp / ckpt_name
    meta = {"CLASSES": None, "PALETTE": None}
    if name != "mmseg-r50-d8":  # one file without a config text: conventions from the file name and tensors
        meta = {"config": cfg.pretty_text}
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    out = tmp / (name + ".safetensors")
    printed = convert_with_cli([path], out)
    res = compare(name, theirs, ours(out, x), "")
    print("    " + printed.strip().splitlines()[0])
    if record:
        write_table(record / f"{name}_keys.tsv", "key\tshape", key_table(model.state_dict()))
        write_table(record / f"{name}_convs.tsv", "module\tkernel\tstride\tdilation\tpadding", conv_table(model))
    return res


# ----------------------------------------------------------------------------------------- CSAIL
def run_csail(name: str, tmp: Path, record: Path | None, seed: int) -> dict:
    from mit_semseg.models import models as M
    from mit_semseg.models import resnet as R
    depth_name, decoder_arch, fc_dim, (h, w) = CSAIL_MODELS[name]
    encoder = M.ResnetDilated(getattr(R, depth_name)(pretrained=False), dilate_scale=8)  # no ImageNet download
    decoder = M.ModelBuilder.build_decoder(arch=decoder_arch, fc_dim=fc_dim, num_class=150, weights="",
                                           use_softmax=True)
    net = M.SegmentationModule(encoder, decoder, crit=None)
    x = image_batch(h, w, seed)

    randomise(net, image_batch(h, w, seed + 1, n=2), lambda b: net({"img_data": b}, segSize=(h, w)), seed)
    captured = {}
    hook = decoder.conv_last.register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o))
    with torch.no_grad():
        probs = net({"img_data": x}, segSize=(h, w))
    hook.remove()
    theirs = F.interpolate(captured["logits"], (h, w), mode="bilinear", align_corners=False)
    folder = tmp / f"ade20k-{depth_name}dilated-{decoder_arch}"
    folder.mkdir()
    torch.save(encoder.state_dict(), folder / "encoder_epoch_20.pth")
    torch.save(decoder.state_dict(), folder / "decoder_epoch_20.pth")
    out = tmp / (name + ".safetensors")
    printed = convert_with_cli([folder / "encoder_epoch_20.pth", folder / "decoder_epoch_20.pth"], out)
    mine = ours(out, x)
    pdiff = (probs - mine.softmax(1)).abs().max().item()
    res = compare(name, theirs, mine, f"  (softmax vs the zoo's own output: max |diff| {pdiff:.2e}, argmax "
                  f"agreement {100 * (probs.argmax(1) == mine.argmax(1)).float().mean().item():.4f}%)")
    print("    " + printed.strip().splitlines()[0])
    if record:
        write_table(record / f"{name}_encoder_keys.tsv", "key\tshape", key_table(encoder.state_dict()))
        write_table(record / f"{name}_decoder_keys.tsv", "key\tshape", key_table(decoder.state_dict()))
        write_table(record / f"{name}_convs.tsv", "module\tkernel\tstride\tdilation\tpadding",
                    conv_table(nn.ModuleDict({"encoder": encoder, "decoder": decoder})))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=list(MMSEG_MODELS) + list(CSAIL_MODELS),
                    help=f"any of {list(MMSEG_MODELS) + list(CSAIL_MODELS)}")
    ap.add_argument("--record", type=Path, help="write key/shape and conv geometry tables here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    import mit_semseg  # noqa: F401
    import mmseg
    print(f"torch {torch.__version__}, mmsegmentation {mmseg.__version__}, mit-semseg 1.0.0; CPU float32")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.models):
            t0 = time.time()
            sub = Path(tmp) / name
            sub.mkdir()
            run = run_mmseg if name in MMSEG_MODELS else run_csail
            results.append(run(name, sub, args.record, args.seed + 10 * i))
            print(f"    ({time.time() - t0:.1f} s)")
    bad = [r["name"] for r in results if not (r["max_abs_diff"] < 1e-3 and r["agreement"] > 0.999)]
    print("all within max |logit diff| < 1e-3 and argmax agreement > 99.9%" if not bad else f"FAILED: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
