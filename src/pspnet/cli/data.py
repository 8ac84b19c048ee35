"""``pspnet data check``: missing/unreadable files, size mismatches, bad label values, per-class pixel counts."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from . import options as opt
from .common import add_data_root


def run(args: argparse.Namespace) -> int:
    from ..data.check import check_splits, write_json
    if args.config:
        from ..config import check_config_against_data, load_config
        cfg = load_config(args.config, args.overrides)
        if args.data_root:
            cfg.data.root = args.data_root
        if args.dataset:
            cfg.data.dataset = args.dataset
        fit_warnings = check_config_against_data(cfg)  # keys that depend on the data, inherited ones too
        d = cfg.data
        name, root = args.dataset or d.dataset, args.data_root or d.root
        num_classes, class_names, label_map = args.num_classes or cfg.model.num_classes, d.class_names, d.label_map
        label_colors = d.label_colors
        if args.split or args.list:
            splits = [(args.split or d.train_split, args.list)]
        else:
            splits = [(d.train_split, d.train_list)]
            if d.val_split or d.val_list:
                splits.append((d.val_split, d.val_list))
    elif not args.dataset:
        return _check_recognised(args)
    else:
        if not args.data_root:
            raise ConfigError("pspnet data check needs --config, or --data-root (and --dataset to name its kind)")
        from ..config import load_config
        over = load_config(None, args.overrides)  # data.label_map, data.class_names, model.num_classes, ...
        num_classes = args.num_classes or over.model.num_classes or len(over.data.class_names or ()) or None
        if args.dataset in ("folder", "list") and not num_classes:
            raise ConfigError(f"--dataset {args.dataset} needs --num-classes N (the number of classes in the label "
                              f"files), or leave out --dataset: 'pspnet data check --data-root {args.data_root}' "
                              f"recognises the layout and the label encoding and counts the classes")
        name, root, class_names, label_map = args.dataset, args.data_root, over.data.class_names, over.data.label_map
        label_colors = over.data.label_colors
        splits = [(args.split or "train", args.list)]
    reports = check_splits(name, root, splits, num_classes=num_classes, class_names=class_names,
                           workers=args.workers, progress=not args.no_progress, label_map=label_map,
                           label_colors=label_colors)
    print("\n\n".join(r.format() for r in reports))
    for w in fit_warnings if args.config else ():
        print(f"warning: {w}")
    if args.json:
        write_json(reports, args.json)
        print(f"report: {args.json}")
    return 0 if all(r.ok for r in reports) else 1


def _check_recognised(args: argparse.Namespace) -> int:
    """``pspnet data check --data-root DIR`` without --dataset/--config: recognise the folder's layout and label
    encoding, say what was found, check it as the starter config reads it (overrides applied) and, with
    --write-config, write that config."""
    from ..config import config_for_data
    from ..data.check import check_splits, write_json
    from ..data.inspect import check_finding, recognise
    from ..data.starter import write_starter
    if not args.data_root:
        raise ConfigError("pspnet data check needs --config, or --dataset and --data-root, or --data-root alone "
                          "(its layout and label files are recognised)")
    if args.split or args.list or args.num_classes:
        raise ConfigError("--split, --list and --num-classes need --dataset (or --config); without them the "
                          "folder's own splits are recognised")
    finding = recognise(args.data_root)
    print(finding.format())
    if not finding.usable:
        print("result: the labels cannot be read as classes (see the notes above); nothing was checked")
        return 1
    if finding.layout.dataset == "flat" or finding.layout.named:
        if args.overrides:
            raise ConfigError(f"overrides {args.overrides}: for this layout write a config first (--write-config)")
        reports = check_finding(finding, workers=args.workers, progress=not args.no_progress)
    else:
        d = config_for_data(args.data_root, args.overrides).data
        splits = [(s, None) for s in (d.train_split, d.val_split) if s]
        reports = check_splits(d.dataset, d.root, splits, num_classes=len(d.class_names or []) or None,
                               class_names=d.class_names, workers=args.workers, progress=not args.no_progress,
                               label_map=d.label_map, label_colors=d.label_colors)
    print()
    print("\n\n".join(r.format() for r in reports))
    if args.json:
        write_json(reports, args.json)
        print(f"report: {args.json}")
    if args.write_config:
        if finding.layout.named:
            print(f"no starter config for a named dataset: start from a shipped one "
                  f"('pspnet configs', e.g. {finding.dataset}/pspnet_r18)")
        else:
            written = write_starter(finding, args.write_config, command=f"pspnet data check --data-root "
                                    f"{args.data_root} --write-config {args.write_config}")
            print("wrote " + ", ".join(map(str, written)))
            print(f"next: pspnet train --config {args.write_config}")
    return 0 if all(r.ok for r in reports) else 1


def add_parser(sub) -> None:
    dt = sub.add_parser("data", help="dataset tools: 'pspnet data check'")
    dsub = dt.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dc = dsub.add_parser("check", help="report missing/unreadable files, size mismatches, bad label values and "
                                       "per-class pixel counts; exits 1 when there is any problem")
    dc.add_argument("--config", "-c", help="YAML config (a file or a shipped config's name): checks its "
                                          "data.train_split and data.val_split")
    dc.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    dc.add_argument("--dataset", help="camvid, camvid32, cityscapes, ade20k, voc, voc_aug, kitti_road, list, folder "
                                      "(default: recognised from --data-root's layout and label files)")
    add_data_root(dc, "default: the config's data.root")
    dc.add_argument("--split", help="split to check (default: train, or the config's train and val splits)")
    dc.add_argument("--list", help="list file of 'image label' lines (relative to --data-root) instead of the split's")
    dc.add_argument("--num-classes", type=opt.int_in(1, 65536), help="number of classes (datasets 'list' and 'folder')")
    dc.add_argument("--workers", type=opt.worker_count, default=0, help="processes reading files (default 0: this one)")
    dc.add_argument("--json", type=opt.output_file, help="also write the report(s) to this JSON file")
    dc.add_argument("--no-progress", action="store_true", help="no progress bar")
    dc.add_argument("--write-config", metavar="FILE.yaml", type=opt.output_file,
                    help="without --dataset/--config: also write a starter config for the recognised folder "
                         "(dataset, splits, label_map, classes, a CPU recipe); never overwrites a file")
    dc.set_defaults(func=run)
