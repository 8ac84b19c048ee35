"""``pspnet predict``: label maps, colour maps and overlays for images; overlay videos for videos."""

from __future__ import annotations

import argparse
import sys

from . import options as opt
from .common import add_inference_options, one_rank, setting_flags


def run(args: argparse.Namespace) -> int:
    from ..api import load
    from ..distributed import rank_and_world
    model = load(args.weights, precision=args.precision, backend=args.backend, device=args.device,
                 max_memory=args.max_memory, **setting_flags(args))  # the Python API: pspnet.load
    main_rank = rank_and_world()[0] == 0  # under torchrun, each rank writes its share; rank 0 alone prints
    if main_rank:
        print(model.settings_line())
    from ..inference.video import split_video_inputs
    videos, images = split_video_inputs(args.inputs)
    failed = []
    if images or not videos:
        out = model.predict_files(images, args.out, save_probs=args.save_probs, progress=not args.no_progress)
        done = sum(p.name.endswith("_label.png") for p in out)
        kinds = "_label/_color/_overlay.png" + (", _probs.npz, _confidence/_entropy.png" if args.save_probs else "")
        ranks = f" ({len(out.images_per_rank)} processes: {' + '.join(map(str, out.images_per_rank))} images)" \
            if len(out.images_per_rank) > 1 else ""
        if main_rank:
            print(f"wrote {done} prediction(s) ({kinds}) and legend.png to {args.out}{ranks}")
        failed += out.failed
    if videos:
        out = model.predict_videos(videos, args.out, color=args.video_color,
                                   frame_labels=args.frame_labels or args.every is not None, every=args.every or 1,
                                   batch_size=args.batch_size, progress=not args.no_progress)
        made = [p.name for p in out if p.suffix == ".mp4" or p.name.endswith("_labels")]
        if main_rank:
            print(f"wrote {', '.join(made) or 'no video'} and legend.png to {args.out}")
        failed += out.failed
    if main_rank:  # every rank knows every failure: one exit status
        for item, reason in failed:
            print(f"failed: {item}: {reason}", file=sys.stderr)
        if failed:
            print(f"{len(failed)} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def add_parser(sub) -> None:
    pr = sub.add_parser("predict", help="label maps, colour maps and overlays for images; overlay videos for videos")
    pr.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image files, folders or glob patterns; video files (.mp4, .avi, .mov, .mkv, ...); "
                         "an integer is a camera index (0: the first webcam; Ctrl-C stops it)")
    pr.add_argument("--weights", "-w", help="weight file (default: the packaged CamVid model)")
    pr.add_argument("--out", "-o", required=True, type=opt.output_folder, help="output folder")
    pr.add_argument("--save-probs", action="store_true",
                    help="images: also <stem>_probs.npz (float16 class probabilities, C x H x W), "
                         "<stem>_confidence.png (255 x top probability) and <stem>_entropy.png (255 x entropy / ln C)")
    pr.add_argument("--video-color", action="store_true", help="videos: also <stem>_color.mp4 (the classes' colours)")
    pr.add_argument("--frame-labels", action="store_true", help="videos: also a label PNG per frame in <stem>_labels/")
    pr.add_argument("--every", type=opt.int_in(1), metavar="N",
                    help="videos: label PNGs of every N-th frame only (implies --frame-labels; the videos keep "
                         "every frame)")
    pr.add_argument("--batch-size", type=opt.int_in(1, 256), default=4,
                    help="videos: frames per forward pass (default 4)")
    add_inference_options(pr)
    # predict: the fastest accurate CPU mode (docs/benchmarks.md)
    pr.set_defaults(func=one_rank(run), precision="auto")
