"""``pspnet demo``: the whole pipeline on built-in synthetic street scenes."""

from __future__ import annotations

import argparse

from . import options as opt


def run(args: argparse.Namespace) -> int:
    from ..demo import FULL, QUICK, run_demo, with_overrides
    settings = with_overrides(QUICK if args.quick else FULL, iters=args.iters, seed=args.seed)
    run_demo(args.out, settings=settings, progress=not args.no_progress)
    return 0


def add_parser(sub) -> None:
    dm = sub.add_parser("demo", help="the whole pipeline on built-in synthetic street scenes: generate, train, "
                                     "evaluate, predict (a few minutes on a CPU)")
    dm.add_argument("--out", default="pspnet_demo", type=opt.output_folder,
                    help="output folder (default: ./pspnet_demo)")
    dm.add_argument("--quick", action="store_true", help="a tiny run (seconds) that checks the pipeline works")
    dm.add_argument("--iters", type=opt.int_in(1), help="training iterations (default: 400; --quick: 6)")
    dm.add_argument("--seed", type=int, help="seed of the scenes and of training (default 0)")
    dm.add_argument("--no-progress", action="store_true", help="no progress bar")
    dm.set_defaults(func=run)
