"""``pspnet convert``: another release's or zoo's checkpoint (or an ImageNet ResNet) -> a pspnet .safetensors file."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..models.pspnet import CONFIG_FIELDS
from . import options as opt


def _read_names(text: str | None) -> list[str] | None:
    """``a,b,c`` or ``@names.txt`` (one name per line) -> list of class names."""
    from pathlib import Path
    if not text:
        return None
    if text.startswith("@"):
        from ..errors import ConfigError
        path = Path(text[1:])
        if not path.is_file():
            raise ConfigError(f"{path}: class-name file not found")
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [n.strip() for n in text.split(",") if n.strip()]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.convert import convert
    names, palette = _read_names(args.class_names), None
    if args.dataset:
        from ..data.datasets import dataset_info
        info = dataset_info(args.dataset, args.num_classes, names)
        names, palette = names or list(info.class_names), [list(c) for c in info.palette]
    overrides = {"depth": args.depth, "num_classes": args.num_classes or (len(names) if names else None),
                 "deep_stem": args.deep_stem, "output_stride": args.output_stride,
                 "bins": tuple(args.bins) if args.bins else None, "norm": args.norm,
                 "align_corners": args.align_corners}
    if len(args.input) > 2:
        raise ConfigError(f"pspnet convert takes IN OUT, or ENCODER DECODER OUT for a CSAILVision model; got "
                          f"{len(args.input)} inputs: {' '.join(args.input)}")
    report = convert(args.input[0] if len(args.input) == 1 else args.input, args.output, class_names=names,
                     palette=palette, dtype=torch.bfloat16 if args.bf16 else None,
                     storage="int8" if args.int8_storage else None, include_aux=not args.no_aux, **overrides)
    cfg = report["config"]
    stem = "-".join(map(str, cfg["stem_channels"])) + " " if cfg.get("stem_channels") else ""
    print(f"read {' + '.join(args.input)} ({report['source_kind']}): ResNet-{cfg['depth']}, "
          f"{stem}{'deep 3x3' if cfg['deep_stem'] else '7x7'} stem, output stride {cfg['output_stride']}, "
          f"{cfg['num_classes']} classes" + (", contracted dilation" if cfg.get("contract_dilation") else "")
          + f", align_corners={cfg['align_corners']}")
    for note in report.get("notes", []):
        print(f"note: {note}")

    def groups(keys):
        counts: dict[str, int] = {}
        for k in keys:
            counts[k.split(".")[0]] = counts.get(k.split(".")[0], 0) + 1
        return ", ".join(f"{g} {n}" for g, n in counts.items()) or "none"
    print(f"loaded {len(report['loaded'])} tensors: {groups(report['loaded'])}")
    print(f"new (initialised, train them): {len(report['new'])} tensors: {groups(report['new'])}")
    if report["reinitialised"]:
        print(f"re-initialised for {cfg['num_classes']} classes: {', '.join(report['reinitialised'])}")
    print(f"wrote {args.output}")
    return 0


def add_parser(sub) -> None:
    cv = sub.add_parser("convert", help="original-release, mmsegmentation or CSAILVision PSPNet checkpoint, ImageNet "
                                        "ResNet or pspnet checkpoint -> "
                                        "pspnet .safetensors (weights + config + class names + palette)")
    cv.add_argument("input", nargs="+", help="train_epoch_*.pth (original release), resnet*.pth (ImageNet), last.pt, "
                                             "an mmsegmentation pspnet_*.pth, or a CSAILVision pair "
                                             "encoder_epoch_N.pth decoder_epoch_N.pth")
    cv.add_argument("output", help="the .safetensors file to write")
    model = CONFIG_FIELDS  # the model's fields: choices and defaults from PSPNetConfig's schema
    cv.add_argument("--depth", type=int, choices=model["depth"].choices, help="ResNet depth (default: from the file)")
    cv.add_argument("--num-classes", type=opt.int_in(1, 65536),
                    help="classes of the model (needed for an ImageNet backbone; a different count re-initialises "
                         "the classifiers)")
    cv.add_argument("--deep-stem", action=argparse.BooleanOptionalAction, default=None,
                    help="3x3 deep stem (original release) or 7x7 stem (torchvision); default: from the file")
    cv.add_argument("--output-stride", type=int, choices=model["output_stride"].choices,
                    help=f"{model['output_stride'].help} "
                         f"(default: from the file, else {model['output_stride'].default})")
    cv.add_argument("--bins", type=opt.int_in(1, 64), nargs="+",
                    help=f"PPM bins (default: from the file, else {' '.join(map(str, model['bins'].default))})")
    cv.add_argument("--norm", choices=model["norm"].choices,
                    help=f"normalisation layers (default: from the file, else {model['norm'].default})")
    cv.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=None,
                    help="bilinear upsampling convention (default: from the file or its zoo)")
    cv.add_argument("--class-names", help="comma-separated names, or @file with one name per line")
    cv.add_argument("--dataset", help="take class names and palette from a named dataset, e.g. cityscapes")
    cv.add_argument("--bf16", action="store_true", help="store floating-point tensors as bfloat16 (half size)")
    cv.add_argument("--int8-storage", action="store_true",
                    help="store convolution weights as int8 with one scale per output channel (about a quarter of "
                         "fp32; dequantised on load), as the packaged model is")
    cv.add_argument("--no-aux", action="store_true", help="leave out the auxiliary head (unused at inference)")
    cv.set_defaults(func=run)
