"""The ``pspnet`` command: train, eval, predict, export, convert, bench, data, demo."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import PSPNetError


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.train import train
    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume, device=args.device, progress=not args.no_progress,
                   max_iters=args.max_iters)
    print(f"weights: {result.weights}")
    if result.best_miou is not None:
        print(f"best val mIoU: {result.best_miou:.4f}")
    return 0


def _read_names(text: str | None) -> list[str] | None:
    """``a,b,c`` or ``@names.txt`` (one name per line) -> list of class names."""
    from pathlib import Path
    if not text:
        return None
    if text.startswith("@"):
        from .errors import ConfigError
        path = Path(text[1:])
        if not path.is_file():
            raise ConfigError(f"{path}: class-name file not found")
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [n.strip() for n in text.split(",") if n.strip()]


def _cmd_convert(args: argparse.Namespace) -> int:
    import torch
    from .models.weights import convert
    names, palette = _read_names(args.class_names), None
    if args.dataset:
        from .data.datasets import dataset_info
        info = dataset_info(args.dataset, args.num_classes, names)
        names, palette = names or list(info.class_names), [list(c) for c in info.palette]
    overrides = {"depth": args.depth, "num_classes": args.num_classes or (len(names) if names else None),
                 "deep_stem": args.deep_stem, "output_stride": args.output_stride,
                 "bins": tuple(args.bins) if args.bins else None, "norm": args.norm}
    report = convert(args.input, args.output, class_names=names, palette=palette,
                     dtype=torch.bfloat16 if args.bf16 else None, **overrides)
    cfg = report["config"]
    print(f"read {args.input} ({report['source_kind']}): ResNet-{cfg['depth']}, "
          f"{'deep 3x3' if cfg['deep_stem'] else '7x7'} stem, output stride {cfg['output_stride']}, "
          f"{cfg['num_classes']} classes")

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet", description="PSPNet for semantic segmentation")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a PSPNet (DDP: launch with torchrun)")
    t.add_argument("--config", "-c", required=True, help="YAML config, e.g. configs/camvid/pspnet_r18_cpu.yaml")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=0.005")
    t.add_argument("--resume", help="training checkpoint (last.pt) to continue from")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--max-iters", type=int, help="stop after this iteration (the LR schedule keeps the full length)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    cv = sub.add_parser("convert", help="original-release checkpoint, ImageNet ResNet or pspnet checkpoint -> "
                                        "pspnet .safetensors (weights + config + class names + palette)")
    cv.add_argument("input", help="train_epoch_*.pth (original release), resnet*.pth (ImageNet), last.pt, ...")
    cv.add_argument("output", help="the .safetensors file to write")
    cv.add_argument("--depth", type=int, choices=[18, 34, 50, 101, 152], help="ResNet depth (default: from the file)")
    cv.add_argument("--num-classes", type=int, help="classes of the model (needed for an ImageNet backbone; a "
                                                    "different count re-initialises the classifiers)")
    cv.add_argument("--deep-stem", action=argparse.BooleanOptionalAction, default=None,
                    help="3x3 deep stem (original release) or 7x7 stem (torchvision); default: from the file")
    cv.add_argument("--output-stride", type=int, choices=[8, 16], help="8 (paper, default) or 16")
    cv.add_argument("--bins", type=int, nargs="+", help="PPM bins (default 1 2 3 6)")
    cv.add_argument("--norm", choices=["bn", "syncbn", "gn"], help="normalisation layers (default bn)")
    cv.add_argument("--class-names", help="comma-separated names, or @file with one name per line")
    cv.add_argument("--dataset", help="take class names and palette from a named dataset, e.g. cityscapes")
    cv.add_argument("--bf16", action="store_true", help="store floating-point tensors as bfloat16 (half size)")
    cv.set_defaults(func=_cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except PSPNetError as e:
        print(f"pspnet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
