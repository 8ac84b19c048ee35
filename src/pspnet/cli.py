"""The ``pspnet`` command: train, eval, predict, export, convert, bench, data, demo, configs, serve."""

from __future__ import annotations

import argparse
import logging
import sys

from . import cli_options as opt
from .errors import ConfigError, PSPNetError
from .models.pspnet import CONFIG_FIELDS


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training.trainer import train
    cfg = load_config(args.config, list(args.overrides) + (["data.skip_bad=true"] if args.skip_bad else []))
    if args.data_root:
        cfg.data.root = args.data_root
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


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_splits, write_json
    if args.config:
        from .config import load_config
        cfg = load_config(args.config, args.overrides)
        d = cfg.data
        name, root = args.dataset or d.dataset, args.data_root or d.root
        num_classes, class_names, label_map = args.num_classes or cfg.model.num_classes, d.class_names, d.label_map
        if args.split or args.list:
            splits = [(args.split or d.train_split, args.list)]
        else:
            splits = [(d.train_split, d.train_list)]
            if d.val_split or d.val_list:
                splits.append((d.val_split, d.val_list))
    else:
        if not args.dataset or not args.data_root:
            raise ConfigError("pspnet data check needs --config, or --dataset and --data-root")
        if args.overrides:
            raise ConfigError(f"overrides {args.overrides} need --config")
        name, root, num_classes, class_names, label_map = args.dataset, args.data_root, args.num_classes, None, None
        splits = [(args.split or "train", args.list)]
    reports = check_splits(name, root, splits, num_classes=num_classes, class_names=class_names,
                           workers=args.workers, progress=not args.no_progress, label_map=label_map)
    print("\n\n".join(r.format() for r in reports))
    if args.json:
        write_json(reports, args.json)
        print(f"report: {args.json}")
    return 0 if all(r.ok for r in reports) else 1


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

    from .models.convert import convert
    names, palette = _read_names(args.class_names), None
    if args.dataset:
        from .data.datasets import dataset_info
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


def _setting_flags(args: argparse.Namespace) -> dict:
    """The test-setting flags of eval/predict/serve as :func:`pspnet.load` keywords (None: not given;
    ``base_size=0``: no resize)."""
    return {"mode": None if args.sliding is None else ("sliding" if args.sliding else "whole"),
            "base_size": args.base_size, "crop_size": tuple(args.crop_size) if args.crop_size else None,
            "stride_rate": args.stride_rate, "scales": tuple(args.scales) if args.scales else None,
            "flip": args.flip, "protocol": args.protocol}


def _one_rank(cmd):
    """``cmd`` (eval, predict) as one rank of a ``torchrun`` job: the process group is set up, the rank
    works on its own device (GPU ``LOCAL_RANK``) and share of the images, and leaves the group at the
    end. Without torchrun, ``cmd`` as it is."""
    def run(args: argparse.Namespace) -> int:
        from .distributed import cleanup, launched_by_torchrun, setup
        if not launched_by_torchrun():
            return cmd(args)
        try:
            args.device = str(setup(args.device).device)
            return cmd(args)
        finally:
            cleanup()
    return run


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .api import load
    from .data.datasets import GENERIC, build_dataset, dataset_info
    from .distributed import rank_and_world
    from .errors import ConfigError
    from .files import write_text_output
    from .inference.evaluate import format_table
    from .labels import IGNORE_INDEX
    cfg = None
    if args.config:
        from .config import load_config
        cfg = load_config(args.config, args.overrides)
    elif args.overrides:
        raise ConfigError(f"overrides {args.overrides} need --config")
    d = cfg.data if cfg else None
    root = args.data_root or (d.root if d else None)
    if not root:
        raise ConfigError("pspnet eval needs --data-root (or --config, whose data.root it reads)")
    if args.precision is None:  # eval's default: the model's own numbers, not a fast mode's
        args.precision = "fp32"
        note = ("precision fp32 (eval's default: the model's own metrics), while pspnet predict runs --precision "
                "auto (bf16 or int8 where this CPU and the weights allow, keeping >= 99.5% of the fp32 labels); "
                "to measure predict's mode: pspnet eval --precision auto")
    else:
        note = None
    api = load(args.weights, precision=args.precision, backend=args.backend, device=args.device,
               max_memory=args.max_memory, config=cfg, **_setting_flags(args))  # the Python API: pspnet.load
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
    info = dataset_info(name, num_classes, names, ignore_index=d.ignore_index if d else IGNORE_INDEX,
                        label_map=d.label_map if d else None)
    if name in GENERIC and meta.get("palette") and len(meta["palette"]) == num_classes:
        info.palette = tuple(tuple(c) for c in meta["palette"])  # the user's own data: the model's colours
    if info.num_classes != num_classes:
        raise ConfigError(f"{args.weights or 'the packaged model'} predicts {num_classes} classes but dataset "
                          f"{name!r} has {info.num_classes}; evaluate it on data with the same classes")
    dataset = build_dataset(name, root, split, list_file=list_file, info=info, check_files=not args.skip_bad)
    s = {**api.settings, "precision": api.requested_precision, "backend": api.requested_backend}
    main_rank = rank_and_world()[0] == 0  # under torchrun, rank 0 alone prints and writes
    if main_rank:
        if name_from_weights:
            print(f"dataset: {name} (weights), split {split}, {root}")
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
        from .inference.per_image import write_per_image_csv
        write_per_image_csv(res["per_image"], args.per_image)
        print(f"per-image scores, worst first: {args.per_image}")
    return 1 if res["bad_files"] else 0


def _eval_grid(model, dataset, info, settings, path, count: int, int8_agreement=None, images: int | None = None) -> str:
    """Image | ground truth | prediction for ``count`` evenly spaced items of ``dataset``, in the mode the
    metrics were measured in: ``auto`` gets the int8 agreements the weights record (int8 only where
    they keep >= 99.5% of the fp32 labels, as in predict and the evaluation) and the evaluation's call
    count (``images``), so it decides as the evaluation did. Returns ``precision/backend`` used."""
    from .inference.prepare import prepare_model
    from .inference.testtime import network_calls, predict_logits
    from .plots import plot_prediction_grid
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from .api import load
    from .distributed import rank_and_world
    model = load(args.weights, precision=args.precision, backend=args.backend, device=args.device,
                 max_memory=args.max_memory, **_setting_flags(args))  # the Python API: pspnet.load
    main_rank = rank_and_world()[0] == 0  # under torchrun, each rank writes its share; rank 0 alone prints
    if main_rank:
        print(model.settings_line())
    from .inference.video import split_video_inputs
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


def _cmd_export(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .export import check_onnx, check_torchscript, export_onnx, export_torchscript, format_check
    from .inference.loading import load_for_inference
    model, meta = load_for_inference(args.weights, None, "cpu")
    kw = {"class_names": meta.get("class_names"), "palette": meta.get("palette")}
    if args.format == "onnx":
        export_onnx(model, args.out, opset=args.opset, dynamo=args.dynamo, **kw)
    else:
        export_torchscript(model, args.out, **kw)
    print(f"wrote {args.out} ({args.format}; input: ImageNet-normalised float N x 3 x H x W, any H and W)")
    if not args.check:
        return 0
    bad_sizes = ConfigError(f"--check-sizes must look like 97x129,240x320 (height x width), got {args.check_sizes!r}")
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.check_sizes.split(",")]
    except ValueError:
        raise bad_sizes from None
    if not sizes or not all(len(s) == 2 and min(s) > 0 for s in sizes):  # not an assert: -O would drop it
        raise bad_sizes
    check = check_onnx if args.format == "onnx" else check_torchscript
    results = check(model, args.out, sizes)
    print(f"check: {args.format} vs PyTorch (pass: max |diff| < 1e-3 and argmax agreement > 99.9%)")
    print(format_check(results))
    ok = all(r["ok"] for r in results)
    print("check passed" if ok else "check FAILED")
    return 0 if ok else 1


def _add_inference_options(q: argparse.ArgumentParser) -> None:
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


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from . import bench
    from .errors import ConfigError
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sizes = [bench.parse_size(s) for s in args.sizes.split(",")]
        depths = [int(d) for d in args.depths.split(",")]
    except ValueError as e:
        raise ConfigError(f"--sizes/--depths: {e}") from None
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in bench.MODES]
    if bad:
        raise ConfigError(f"unknown --modes {bad}; choose from {', '.join(bench.MODES)}")
    what = set(args.what.split(","))
    try:
        memory_size = bench.parse_size(args.memory_size)
        memory_crop = bench.parse_size(args.memory_crop)
    except ValueError as e:
        raise ConfigError(f"--memory-size/--memory-crop: {e}") from None
    unknown = what - {"headline", "inference", "train", "memory", "cm"}
    if unknown:
        raise ConfigError(f"unknown --what {sorted(unknown)}; choose from headline, inference, train, memory, cm")
    reps = args.reps or 5
    results = {"machine": bench.machine_info()}
    print(bench.format_machine(results["machine"]))
    if "headline" in what:
        results["headline"] = bench.bench_headline(reps=reps)
    if "inference" in what:
        results["inference"] = bench.bench_inference(depths, sizes, modes, reps=reps)
    if "train" in what:
        results["train"] = bench.bench_training(steps=reps, root=args.data_root)
    if "memory" in what:
        results["memory"] = bench.bench_memory(args.memory_depth, memory_size, images=args.reps or 4,
                                               crop=memory_crop, train={"root": args.data_root})
    if "cm" in what:
        results["confusion_matrix"] = bench.bench_confusion()
    if args.out:
        from .files import write_text_output
        text = json.dumps(results, indent=2)
        write_text_output(args.out, text + "\n")
        print(f"results: {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from .info import collect, format_info
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import FULL, QUICK, run_demo, with_overrides
    settings = with_overrides(QUICK if args.quick else FULL, iters=args.iters, seed=args.seed)
    run_demo(args.out, settings=settings, progress=not args.no_progress)
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from .config import CONFIGS_DIR, resolve_config, shipped_configs
    if args.name:  # the file itself: to read, or to copy and edit
        print(resolve_config(args.name).read_text(encoding="utf-8"), end="")
        return 0
    configs = shipped_configs()
    width = max(map(len, configs))
    for name, path in configs.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        first = next((ln.lstrip("# ").rstrip() for ln in lines if ln.startswith("#")), "")  # what the file is
        print(f"{name:<{width}}  {first}")
    print(f"\n{len(configs)} configs in {CONFIGS_DIR}\nuse one by name: pspnet train --config camvid/pspnet_r18_cpu "
          f"--data-root DIR; print one to copy and edit: pspnet configs camvid/pspnet_r18_cpu > my.yaml")
    return 0


def _add_data_root(q: argparse.ArgumentParser, what: str) -> None:
    q.add_argument("--data-root", "--root", dest="data_root", metavar="DIR",
                   help=f"dataset folder ({what}; --root is the old spelling)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet", description="PSPNet for semantic segmentation")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a PSPNet (DDP: launch with torchrun)")
    t.add_argument("--config", "-c", required=True,
                   help="YAML config: a file, or a shipped config's name, e.g. camvid/pspnet_r18_cpu "
                        "('pspnet configs')")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=0.005")
    _add_data_root(t, "default: the config's data.root")
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
    t.set_defaults(func=_cmd_train)

    dt = sub.add_parser("data", help="dataset tools: 'pspnet data check'")
    dsub = dt.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dc = dsub.add_parser("check", help="report missing/unreadable files, size mismatches, bad label values and "
                                       "per-class pixel counts; exits 1 when there is any problem")
    dc.add_argument("--config", "-c", help="YAML config (a file or a shipped config's name): checks its "
                                          "data.train_split and data.val_split")
    dc.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    dc.add_argument("--dataset", help="camvid, camvid32, cityscapes, ade20k, voc, voc_aug, kitti_road, list, folder")
    _add_data_root(dc, "default: the config's data.root")
    dc.add_argument("--split", help="split to check (default: train, or the config's train and val splits)")
    dc.add_argument("--list", help="list file of 'image label' lines (relative to --data-root) instead of the split's")
    dc.add_argument("--num-classes", type=opt.int_in(1, 65536), help="number of classes (datasets 'list' and 'folder')")
    dc.add_argument("--workers", type=opt.worker_count, default=0, help="processes reading files (default 0: this one)")
    dc.add_argument("--json", type=opt.output_file, help="also write the report(s) to this JSON file")
    dc.add_argument("--no-progress", action="store_true", help="no progress bar")
    dc.set_defaults(func=_cmd_data_check)

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
                    help=f"{model['output_stride'].help} (default {model['output_stride'].default})")
    cv.add_argument("--bins", type=opt.int_in(1, 64), nargs="+",
                    help=f"PPM bins (default {' '.join(map(str, model['bins'].default))})")
    cv.add_argument("--norm", choices=model["norm"].choices,
                    help=f"normalisation layers (default {model['norm'].default})")
    cv.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=None,
                    help="bilinear upsampling convention (default: from the file or its zoo)")
    cv.add_argument("--class-names", help="comma-separated names, or @file with one name per line")
    cv.add_argument("--dataset", help="take class names and palette from a named dataset, e.g. cityscapes")
    cv.add_argument("--bf16", action="store_true", help="store floating-point tensors as bfloat16 (half size)")
    cv.add_argument("--int8-storage", action="store_true",
                    help="store convolution weights as int8 with one scale per output channel (about a quarter of "
                         "fp32; dequantised on load), as the packaged model is")
    cv.add_argument("--no-aux", action="store_true", help="leave out the auxiliary head (unused at inference)")
    cv.set_defaults(func=_cmd_convert)

    ev = sub.add_parser("eval", help="mIoU / mAcc / allAcc of a model on a labelled split")
    ev.add_argument("--weights", "-w", help="weight file (default: the packaged CamVid model)")
    ev.add_argument("--config", "-c", help="YAML config (a file or a shipped config's name): dataset, root, val "
                                          "split, eval settings")
    ev.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    ev.add_argument("--dataset", help="dataset name without --config (camvid, cityscapes, ..., list, folder; "
                    "default: the one the weights record they were trained on, camvid for the packaged model)")
    _add_data_root(ev, "default: the config's data.root")
    ev.add_argument("--split", help="split to evaluate (default: the config's val split, or 'val')")
    ev.add_argument("--list", help="list file of 'image label' lines (relative to the data root)")
    _add_inference_options(ev)
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
    ev.set_defaults(func=_one_rank(_cmd_eval))

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
    _add_inference_options(pr)
    # predict: the fastest accurate CPU mode (docs/benchmarks.md)
    pr.set_defaults(func=_one_rank(_cmd_predict), precision="auto")

    ex = sub.add_parser("export", help="ONNX (dynamic height/width) or TorchScript")
    ex.add_argument("--weights", "-w", help="weight file (default: the packaged CamVid model)")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    ex.add_argument("--out", "-o", required=True, type=opt.output_file, help="file to write (.onnx / .pt)")
    ex.add_argument("--opset", type=opt.int_in(7, 30), default=17, help="ONNX opset (default 17)")
    ex.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter (slower)")
    ex.add_argument("--check", action="store_true", help="compare the export with PyTorch on several sizes")
    ex.add_argument("--check-sizes", default="97x129,240x320,361x481", help="HxW sizes for --check")
    ex.set_defaults(func=_cmd_export)

    dm = sub.add_parser("demo", help="the whole pipeline on built-in synthetic street scenes: generate, train, "
                                     "evaluate, predict (a few minutes on a CPU)")
    dm.add_argument("--out", default="pspnet_demo", type=opt.output_folder,
                    help="output folder (default: ./pspnet_demo)")
    dm.add_argument("--quick", action="store_true", help="a tiny run (seconds) that checks the pipeline works")
    dm.add_argument("--iters", type=opt.int_in(1), help="training iterations (default: 400; --quick: 6)")
    dm.add_argument("--seed", type=int, help="seed of the scenes and of training (default 0)")
    dm.add_argument("--no-progress", action="store_true", help="no progress bar")
    dm.set_defaults(func=_cmd_demo)

    bn = sub.add_parser("bench", help="CPU/GPU speed: inference latency per precision/backend, training step "
                                      "time and its share of the matmul peak, peak memory, confusion-matrix "
                                      "update; prints the machine")
    bn.add_argument("--what", default="headline",
                    help="comma list of: headline (PSPNet-50 473x473 fp32 eager vs default mode), inference, "
                         "train, memory (peak RSS of prediction and of a training step), cm (default: headline)")
    bn.add_argument("--depths", default="18,50,101", help="for --what inference (default 18,50,101)")
    bn.add_argument("--sizes", default="473x473,713x713,512x1024", help="HxW list for --what inference")
    bn.add_argument("--modes", default="eager,fp32,bf16",
                    help="for --what inference: eager (plain fp32 model), auto, fp32, bf16, fp32-unfused, "
                         "bf16-unfused, fp32-unfactored, bf16-unfactored, fp32+compile, bf16+compile, "
                         "int8 (torch, needs torchao), int8-unfactored, ort-fp32, ort-int8, ort-fp32-unfactored, "
                         "ort-int8-unfactored (default eager,fp32,bf16)")
    bn.add_argument("--reps", type=opt.int_in(1, 10**6),
                    help="timed repetitions (training: steps) per case (default 5); memory: images per case "
                         "(default 4)")
    bn.add_argument("--memory-size", default="1024x2048", help="HxW image for --what memory (default 1024x2048)")
    bn.add_argument("--memory-depth", type=int, default=50, help="PSPNet depth for --what memory (default 50)")
    bn.add_argument("--memory-crop", default="713x713",
                    help="sliding-window crop for --what memory (default 713x713, Cityscapes; stride rate 2/3)")
    bn.add_argument("--threads", type=opt.thread_count, help="torch threads (default: all cores)")
    _add_data_root(bn, "CamVid: time training on real crops instead of random pixels")
    bn.add_argument("--out", type=opt.output_file, help="also write the results as JSON here")
    bn.set_defaults(func=_cmd_bench)

    inf = sub.add_parser("info", help="versions, the CPU, which precisions run here and why not, and the mode "
                                      "'auto' runs the packaged model in (paste it into a bug report)")
    inf.add_argument("--json", action="store_true", help="print it as JSON")
    inf.set_defaults(func=_cmd_info)

    cf = sub.add_parser("configs", help="list the shipped configs (use one with --config NAME), or print one")
    cf.add_argument("name", nargs="?", help="print this config's YAML, e.g. camvid/pspnet_r18_cpu")
    cf.set_defaults(func=_cmd_configs)

    from .hub.commands import add_hub_commands  # pspnet models, pspnet download
    add_hub_commands(sub)
    from .cli_serve import add_serve_command  # pspnet serve
    add_serve_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if getattr(args, "weights", None):  # --weights NAME: a catalogue model downloaded with 'pspnet download'
            from .hub import resolve_weights
            args.weights = resolve_weights(args.weights)
        return args.func(args)
    except PSPNetError as e:
        print(f"pspnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during training, or Ctrl-C in another command
        print(f"pspnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
