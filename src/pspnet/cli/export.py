"""``pspnet export``: ONNX (dynamic height/width) or TorchScript, optionally checked against PyTorch."""

from __future__ import annotations

import argparse

from . import options as opt


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..export import check_onnx, check_torchscript, export_onnx, export_torchscript, format_check
    from ..inference.loading import load_for_inference
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


def add_parser(sub) -> None:
    ex = sub.add_parser("export", help="ONNX (dynamic height/width) or TorchScript")
    ex.add_argument("--weights", "-w", help="weight file (default: the packaged CamVid model)")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    ex.add_argument("--out", "-o", required=True, type=opt.output_file, help="file to write (.onnx / .pt)")
    ex.add_argument("--opset", type=opt.int_in(7, 30), default=17, help="ONNX opset (default 17)")
    ex.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter (slower)")
    ex.add_argument("--check", action="store_true", help="compare the export with PyTorch on several sizes")
    ex.add_argument("--check-sizes", default="97x129,240x320,361x481", help="HxW sizes for --check")
    ex.set_defaults(func=run)
