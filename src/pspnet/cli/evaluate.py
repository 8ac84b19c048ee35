"""``pspnet eval``: mIoU / mAcc / allAcc of a model on a labelled split (one rank of a torchrun job, or alone)."""

from __future__ import annotations

import argparse
import sys

from . import options as opt
from .common import add_data_root, add_inference_options, one_rank, setting_flags


def run(args: argparse.Namespace) -> int:
    import json

    from ..api import load
    from ..data.datasets import GENERIC, build_dataset, dataset_info
    from ..distributed import rank_and_world
    from ..errors import ConfigError
    from ..files import write_text_output
    from ..inference.evaluate import format_table
    from ..labels import IGNORE_INDEX
    cfg = None
    if args.config:
        from ..config import load_config
        cfg = load_config(args.config, args.overrides)
    elif args.overrides:  # no config file: the overrides over the defaults (or over the recognised --data-root)
        from ..config import load_run_config
        cfg = load_run_config(None, args.overrides, data_root=args.data_root)
    d = cfg.data if cfg else None
    root = args.data_root or (d.root if d else None)
    if not root:
        raise ConfigError("pspnet eval needs --data-root (or --config, whose data.root it reads)")
    note = None
    if args.precision is None:  # eval's default: the model's own numbers, not a fast mode's
        args.precision = "fp32"
        note = ("precision fp32 (eval's default: the model's own metrics), while pspnet predict runs --precision "
                "auto (bf16 or int8 where this CPU and the weights allow, keeping >= 99.5% of the fp32 labels); "
                "to measure predict's mode: pspnet eval --precision auto")
    api = load(args.weights, precision=args.precision, backend=args.backend, device=args.device,
               max_memory=args.max_memory, config=cfg, **setting_flags(args))  # the Python API: pspnet.load
    model, meta = api.net, api.meta
    name = args.dataset or (d.dataset if d else None)
    name_from_weights = not name
    if name_from_weights:  # the dataset the weights record they were trained on (the packaged model: camvid)
        name = (meta.get("trained_on") or {}).get("dataset")
        if not name:
            raise ConfigError(f"{args.weights or 'the packaged model'} does not record the dataset it was trained "
                              f"on; pass --dataset (camvid, cityscapes, ..., folder, list) or --config")
    num_classes = model.config.num_classes
    split = args.split or (d.val_split if d else "val")
    list_file = args.list or (d.val_list if d and not args.split else None)
    names = d.class_names if d and d.class_names else None
    if names is None and name in GENERIC:  # the user's own data: the classes the weights name
        names = meta.get("class_names")
    label_map, ignore_index = (d.label_map, d.ignore_index) if d else (None, IGNORE_INDEX)
    label_colors = d.label_colors if d else None
    read_from = ""
    if d is None and name in GENERIC:  # no config: read the masks as the weights' training data was read
        from ..config import recorded_data_reading
        rec = recorded_data_reading(meta, str(args.weights or "the packaged model"))
        if rec.get("dataset") in GENERIC:
            label_map, ignore_index = rec.get("label_map"), rec.get("ignore_index", IGNORE_INDEX)
            label_colors = rec.get("label_colors")
            if label_map:
                from ..data.inspect import format_label_map
                read_from = f", data.label_map={format_label_map(label_map)} (weights)"
            if label_colors:
                read_from = f", data.label_colors={[list(c) for c in label_colors]} (weights)"
    info = dataset_info(name, num_classes, names, ignore_index=ignore_index, label_map=label_map,
                        label_colors=label_colors)
    if name in GENERIC and meta.get("palette") and len(meta["palette"]) == num_classes:
        info.palette = tuple(tuple(c) for c in meta["palette"])  # the user's own data: the model's colours
    if info.num_classes != num_classes:
        raise ConfigError(f"{args.weights or 'the packaged model'} predicts {num_classes} classes but dataset "
                          f"{name!r} has {info.num_classes}; evaluate it on data with the same classes")
    dataset = build_dataset(name, root, split, list_file=list_file, info=info, check_files=not args.skip_bad)
    s = {**api.settings, "precision": api.requested_precision, "backend": api.requested_backend}
    main_rank = rank_and_world()[0] == 0  # under torchrun, rank 0 alone prints and writes
    if main_rank:
        if name_from_weights or read_from:
            print(f"dataset: {name}{' (weights)' if name_from_weights else ''}{read_from}, split {split}, {root}")
        print(api.settings_line())
        if note:
            print(f"pspnet eval: note: {note}", file=sys.stderr)
    recorded = api.int8_agreement
    res = api.evaluate(dataset, ignore_index=info.ignore_index, class_names=info.class_names,
                       progress=not args.no_progress, skip_bad=args.skip_bad, absent=args.absent,
                       max_images=args.max_images, per_image=bool(args.per_image))
    res["settings"].update({"weights": str(args.weights or "packaged"), "config": args.config, "dataset": name,
                            "data_root": str(root), "split": split, "list": list_file, "sources": api.sources})
    if note:
        res["settings"]["precision_note"] = note
    if not main_rank:  # every rank returns the whole result (bad files included): the same exit status
        return 1 if res["bad_files"] else 0
    print(format_table(res))
    if args.grid:
        n = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
        mode = _eval_grid(model, dataset, info, s, args.grid, args.grid_images, int8_agreement=recorded, images=n)
        print(f"prediction grid: {args.grid} ({mode})")
    for b in res["bad_files"]:
        print(f"skipped: {b['path']}: {b['error']}", file=sys.stderr)
    if args.out:
        text = json.dumps(res, indent=2, allow_nan=False)
        write_text_output(args.out, text + "\n")
        print(f"metrics: {args.out}")
    if args.per_image:
        from ..inference.per_image import write_per_image_csv
        write_per_image_csv(res["per_image"], args.per_image)
        print(f"per-image scores, worst first: {args.per_image}")
    return 1 if res["bad_files"] else 0


def _eval_grid(model, dataset, info, settings, path, count: int, int8_agreement=None, images: int | None = None) -> str:
    """Image | ground truth | prediction for ``count`` evenly spaced items of ``dataset``, in the mode the
    metrics were measured in: ``auto`` gets the int8 agreements the weights record (int8 only where
    they keep >= 99.5% of the fp32 labels, as in predict and the evaluation) and the evaluation's call
    count (``images``), so it decides as the evaluation did. Returns ``precision/backend`` used."""
    from ..inference.prepare import prepare_model
    from ..inference.testtime import network_calls, predict_logits
    from ..plots import plot_prediction_grid
    keys = ("base_size", "scales", "flip", "mode", "crop_size", "stride_rate", "protocol")
    calls = None if images is None else network_calls(images, settings.get("scales", (1.0,)), settings.get(
        "flip", False), settings.get("mode", "whole"), settings.get("protocol", "release"))
    runner, _ = prepare_model(model, settings.get("precision", "fp32"), settings.get("backend", "torch"),
                              int8_agreement=int8_agreement, expected_calls=calls)
    rows = []
    for i in sorted({round(k * (len(dataset) - 1) / max(count - 1, 1)) for k in range(count)}):
        image, label = dataset[i]
        pred = predict_logits(runner, image[None], **{k: settings[k] for k in keys if k in settings}).argmax(1)[0]
        rows.append((image.permute(1, 2, 0).numpy(), label.numpy(), pred.cpu().numpy()))
    plot_prediction_grid(rows, info.palette, info.class_names, path, info.ignore_index)
    return f"{getattr(runner, 'precision', 'fp32')}/{getattr(runner, 'backend', 'torch')}"


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="mIoU / mAcc / allAcc of a model on a labelled split")
    ev.add_argument("--weights", "-w", help="weight file (default: the packaged CamVid model)")
    ev.add_argument("--config", "-c", help="YAML config (a file or a shipped config's name): dataset, root, val "
                                          "split, eval settings")
    ev.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    ev.add_argument("--dataset", help="dataset name without --config (camvid, cityscapes, ..., list, folder; "
                    "default: the one the weights record they were trained on, camvid for the packaged model)")
    add_data_root(ev, "default: the config's data.root")
    ev.add_argument("--split", help="split to evaluate (default: the config's val split, or 'val')")
    ev.add_argument("--list", help="list file of 'image label' lines (relative to the data root)")
    add_inference_options(ev)
    ev.add_argument("--absent", choices=["nan", "zero"], default="nan",
                    help="classes absent from the ground truth: left out of the means (nan, default) or "
                         "counted as 0 (zero, the original release)")
    ev.add_argument("--max-images", type=opt.int_in(1), help="evaluate only the first N images")
    ev.add_argument("--skip-bad", action="store_true", help="skip unreadable items (listed; exit status 1)")
    ev.add_argument("--out", "-o", type=opt.output_file, help="write the metrics JSON here")
    ev.add_argument("--per-image", metavar="FILE.csv", type=opt.output_file,
                    help="also write each image's mIoU, pixel accuracy and 3 worst classes (name, IoU) as CSV, "
                         "worst image first")
    ev.add_argument("--grid", type=opt.output_file, help="also write a PNG grid: image | ground truth | prediction")
    ev.add_argument("--grid-images", type=opt.int_in(1, 64), default=6, help="rows of the --grid figure (default 6)")
    ev.set_defaults(func=one_rank(run))
