"""``pspnet configs``: list the shipped configs, or print one."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..config import CONFIGS_DIR, resolve_config, shipped_configs
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


def add_parser(sub) -> None:
    cf = sub.add_parser("configs", help="list the shipped configs (use one with --config NAME), or print one")
    cf.add_argument("name", nargs="?", help="print this config's YAML, e.g. camvid/pspnet_r18_cpu")
    cf.set_defaults(func=run)
