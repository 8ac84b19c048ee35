"""``pspnet train``: train a PSPNet (DDP: launch with torchrun)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from . import options as opt
from .common import add_data_root


def run(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..training.trainer import train
    if not args.config and not args.data_root and not any(o.startswith("data.root=") for o in args.overrides):
        raise ConfigError("pspnet train needs --config FILE, or --data-root DIR: a data folder pspnet recognises "
                          "('pspnet data check --data-root DIR' shows what it finds and --write-config writes a "
                          "config for it)")
    cfg = load_run_config(args.config, list(args.overrides) + (["data.skip_bad=true"] if args.skip_bad else []),
                          data_root=args.data_root)
    if args.config:  # keys that depend on the data (some inherited from a base config) checked against it
        import sys

        from ..config import check_config_against_data
        for w in check_config_against_data(cfg):
            print(f"pspnet train: warning: {w}", file=sys.stderr)
    if not args.config:
        print(f"no config file: data.dataset={cfg.data.dataset}, data.root={cfg.data.root}, "
              f"model.num_classes={cfg.model.num_classes}, train.iters={cfg.train.iters}, "
              f"train.output_dir={cfg.train.output_dir} (see them all in <output_dir>/config.yaml)")
    result = train(cfg, resume=args.resume, device=args.device, progress=not args.no_progress,
                   max_iters=args.max_iters, max_minutes=args.max_minutes)
    if result.bad_files:
        print(f"skipped {len(result.bad_files)} bad file(s):\n  " + "\n  ".join(result.bad_files))
    if result.interrupted:  # SIGINT/SIGTERM: last.pt was saved; 130 tells scripts the run is not finished
        print(f"interrupted at iteration {result.iterations}; resume with --resume {result.weights}")
        return 130
    print(f"weights: {result.weights}")
    if result.best_miou is not None:
        print(f"best val mIoU: {result.best_miou:.4f}")
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a PSPNet (DDP: launch with torchrun)")
    t.add_argument("--config", "-c",
                   help="YAML config: a file, or a shipped config's name, e.g. camvid/pspnet_r18_cpu "
                        "('pspnet configs'); without one, --data-root's folder is recognised and trained with its "
                        "starter config (what 'pspnet data check --write-config' writes) and the overrides")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=0.005")
    add_data_root(t, "default: the config's data.root")
    t.add_argument("--resume", help="training checkpoint (last.pt) to continue from")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--max-iters", type=opt.int_in(1),
                   help="stop after this iteration (the LR schedule keeps the full length)")
    t.add_argument("--max-minutes", type=opt.float_in(0, 10**6, lo_open=True),
                   help="stop after the iteration that ends this many minutes in, saving last.pt to --resume from "
                        "(a stage that fits a time slot; the LR schedule keeps the full length)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable/invalid images and labels, count them and list them at the end "
                        "(same as data.skip_bad=true; default: stop at the first bad file)")
    t.set_defaults(func=run)
