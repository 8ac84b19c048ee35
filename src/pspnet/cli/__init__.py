"""The ``pspnet`` command: train, eval, predict, export, convert, bench, data, demo, configs, serve.

One module per command (or family: ``data check``; ``models`` and ``download`` in :mod:`.hub`), each
with its handler and ``add_parser(subparsers)``; what several share is in :mod:`.common`, the checked
option types in :mod:`.options`. This module registers them, in the order ``pspnet --help`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import PSPNetError
from ..version import __version__
from . import bench, configs, convert, data, demo, evaluate, export, hub, info, predict, serve, train

__all__ = ["build_parser", "main"]

COMMANDS = (train, data, convert, evaluate, predict, export, demo, bench, info, configs, hub, serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet", description="PSPNet for semantic segmentation")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"pspnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if getattr(args, "weights", None):  # --weights NAME: a catalogue model downloaded with 'pspnet download'
            from ..hub import resolve_weights
            args.weights = resolve_weights(args.weights)
        return args.func(args)
    except PSPNetError as e:
        print(f"pspnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during training, or Ctrl-C in another command
        print(f"pspnet {args.command}: interrupted", file=sys.stderr)
        return 130
