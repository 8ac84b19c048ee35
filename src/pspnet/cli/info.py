"""``pspnet info``: versions, the CPU, which precisions run here and why not, and what 'auto' runs."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import json

    from ..info import collect, format_info
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def add_parser(sub) -> None:
    inf = sub.add_parser("info", help="versions, the CPU, which precisions run here and why not, and the mode "
                                      "'auto' runs the packaged model in (paste it into a bug report)")
    inf.add_argument("--json", action="store_true", help="print it as JSON")
    inf.set_defaults(func=run)
