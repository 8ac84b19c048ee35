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
