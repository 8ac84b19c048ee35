"""What several commands share: the --data-root option, the test-time (inference) options of eval and
predict, the settings they resolve to and the line that names them, and running one rank of a torchrun job."""

from __future__ import annotations

import argparse

from . import options as opt


def add_data_root(q: argparse.ArgumentParser, what: str) -> None:
    q.add_argument("--data-root", "--root", dest="data_root", metavar="DIR",
                   help=f"dataset folder ({what}; --root is the old spelling)")


def add_inference_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--scales", type=opt.float_in(0.1, opt.MAX_SCALE), nargs="+",
                   help="multi-scale test, e.g. 0.5 0.75 1.0 1.25 1.5 1.75")
    q.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="also average the horizontally flipped image")
    q.add_argument("--sliding", action=argparse.BooleanOptionalAction, default=None,
                   help="sliding-window inference with --crop-size (default: whole image)")
    q.add_argument("--crop-size", type=opt.int_in(16, opt.MAX_SIDE), nargs=2, metavar=("H", "W"),
                   help="sliding-window size")
    q.add_argument("--stride-rate", type=opt.float_in(0.1, 1.0), help="window stride / crop size (default 2/3)")
    q.add_argument("--base-size", type=opt.base_size,
                   help="resize the long side to this first (0: no resize; default: what the weight file records, "
                        "else no resize)")
    q.add_argument("--protocol", choices=["release", "logit-average"],
                   help="test-time averaging: release (default) = the original release's tool/test.py (softmax "
                        "per window, flip inside each window, half-pixel resizes); logit-average = pspnet 0.1's")
    q.add_argument("--precision", default=None, choices=["fp32", "auto", "bf16", "int8"],
                   help="eval: fp32 (default: the model's own metrics; it says so, naming predict's mode); "
                        "predict: auto (default) = the fastest mode that keeps the labels "
                        "on this CPU: bf16 where bf16 is native, else fp32, or int8 (onnxruntime, torch or "
                        "openvino) where the weights record >= 99.5%% int8 agreement on that backend and a probe "
                        "(cached per machine) finds it faster; int8 calibrates on the first image (as the "
                        "recorded agreement was measured; the log names it); on the torch "
                        "backend it needs torchao (docs/benchmarks.md)")
    q.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"],
                   help="torch (default), onnxruntime or openvino (optional: pip install \"pspnet[openvino]\"); "
                        "the last two run on the CPU with one graph per input size, so keep sizes fixed "
                        "with --base-size or --sliding")
    q.add_argument("--max-memory", type=opt.memory_size, metavar="SIZE",
                   help="memory budget, e.g. 4G: a model or image estimated to need more is refused, a large image "
                        "is predicted in sliding windows that fit (default: 3/4 of the available memory)")
    q.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")


def setting_flags(args: argparse.Namespace) -> dict:
    """The test-setting flags of eval/predict as :func:`pspnet.load` keywords (None: not given;
    ``base_size=0``: no resize)."""
    return {"mode": None if args.sliding is None else ("sliding" if args.sliding else "whole"),
            "base_size": args.base_size, "crop_size": tuple(args.crop_size) if args.crop_size else None,
            "stride_rate": args.stride_rate, "scales": tuple(args.scales) if args.scales else None,
            "flip": args.flip, "protocol": args.protocol}


def one_rank(cmd):
    """``cmd`` (eval, predict) as one rank of a ``torchrun`` job: the process group is set up, the rank
    works on its own device (GPU ``LOCAL_RANK``) and share of the images, and leaves the group at the
    end. Without torchrun, ``cmd`` as it is."""
    def run(args: argparse.Namespace) -> int:
        from ..distributed import cleanup, launched_by_torchrun, setup
        if not launched_by_torchrun():
            return cmd(args)
        try:
            args.device = str(setup(args.device).device)
            return cmd(args)
        finally:
            cleanup()
    return run
