"""The ``pspnet models`` and ``pspnet download`` subcommands (registered by :func:`add_hub_commands`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_hub_commands", "format_table"]

SOURCE_KEYS = ("mmsegmentation", "csailvision", "semseg")  # catalogue.SOURCES (not imported here: torch)


def format_table(entries) -> str:
    """The catalogue as text: one line per model, then the protocols and checksums per source."""
    from .catalogue import SOURCES
    from .download import cached_weights_path
    head = f"{'NAME':<58} {'DATASET':<22} {'BACKBONE':<31} {'mIoU':>6} {'other':>7}  CHECKSUM  GOT"
    lines = [head, "-" * len(head)]
    for e in entries:
        other = " ".join(f"{r.miou:.2f}" for r in e.results[1:2])
        check = (e.files[0].sha256[:8] if e.files[0].sha256 else e.files[0].sha256_prefix) if len(e.files) == 1 \
            else None
        got = "yes" if cached_weights_path(e.name).is_file() else ("--from" if not e.downloadable else "")
        lines.append(f"{e.name:<58} {e.dataset[:22]:<22} {e.backbone[:31]:<31} {e.miou:>6.2f} {other:>7}  "
                     f"{check or '-':<8}  {got}")
    lines.append("")
    lines.append("mIoU: the published number whose protocol the converted file records (pspnet eval follows it);"
                 " other: the zoo's second published number. Protocols (pspnet models --json has them per model):")
    seen = set()
    for e in entries:
        if e.source in seen:
            continue
        seen.add(e.source)
        src = SOURCES[e.source]
        lines.append(f"  {src.title}: {src.page}")
        lines.append(f"    mIoU e.g. {e.name}: {e.results[0].protocol}")
        if len(e.results) > 1:
            lines.append(f"    other: {e.results[1].protocol}")
        lines.append(f"    checksum: {src.checksum}")
    lines.append(f"{len(entries)} models; 'pspnet download NAME' fetches, verifies and converts one, then "
                 f"--weights NAME works in predict / eval / export")
    return "\n".join(lines)


def _cmd_models(args: argparse.Namespace) -> int:
    from .catalogue import catalogue
    entries = catalogue()
    if args.source:
        entries = tuple(e for e in entries if e.source == args.source)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    else:
        print(format_table(entries))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .download import download
    res = download(args.model, sha256=args.sha256, out=args.out, sources=args.sources,
                   progress=not args.no_progress)
    rep: dict[str, Any] = res.report
    cfg = rep.get("config", {})
    print(f"converted ({rep.get('source_kind')}): ResNet-{cfg.get('depth')}, {cfg.get('num_classes')} classes, "
          f"output stride {cfg.get('output_stride')}, align_corners={cfg.get('align_corners')}")
    for note in rep.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {res.weights}")
    if res.entry is not None:
        print(f"published mIoU {res.entry.miou:.2f} ({res.entry.protocol})")
    use = res.name if args.out is None else str(res.weights)
    print(f"use it: pspnet predict IMAGES --weights {use} --out OUT  (or pspnet eval / export --weights {use})")
    return 0


def add_hub_commands(sub) -> None:
    """Register ``models`` and ``download`` on the ``pspnet`` command's subparsers."""
    mo = sub.add_parser("models", help="the public PSPNet checkpoints (original release, mmsegmentation, "
                                       "CSAILVision): dataset, backbone, published mIoU and protocol, URL, checksum")
    mo.add_argument("--json", action="store_true", help="print a JSON list (name, source, dataset, url, miou, ...)")
    mo.add_argument("--source", choices=SOURCE_KEYS, help="only this zoo")
    mo.set_defaults(func=_cmd_models)

    dl = sub.add_parser("download", help="download a catalogued checkpoint (or a URL) into the cache "
                                         "($PSPNET_HOME, default ~/.cache/pspnet), verify and convert it; then "
                                         "--weights NAME works in predict / eval / export")
    dl.add_argument("model", metavar="NAME|URL", help="a name from 'pspnet models', or a checkpoint URL")
    dl.add_argument("--sha256", nargs="+", metavar="HEX",
                    help="expected sha256 of the file (two for a CSAILVision encoder + decoder); default: what "
                         "the source publishes (mmsegmentation: the 8 hex digits in the file name)")
    dl.add_argument("--out", "-o", help="write the converted .safetensors here (default: the cache)")
    dl.add_argument("--from", dest="sources", nargs="+", metavar="FILE|URL",
                    help="use these files or URLs instead of the catalogue's (a mirror, or the original release's "
                         "files downloaded by hand from its Google Drive folder)")
    dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    dl.set_defaults(func=_cmd_download)
