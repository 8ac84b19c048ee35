"""A starter config for a recognised data folder (``pspnet data check --data-root DIR --write-config
FILE``): the ``data`` section that reads the folder as :mod:`.inspect` recognised it (dataset, splits,
``label_map``, class names), and a small-data recipe a CPU trains in minutes to an hour:

* PSPNet-18 with the deep stem at output stride 8 and the CamVid CPU model's head widths (256/128),
  so ``train.pretrained: packaged`` (commented in the file) can start from the packaged CamVid model;
* crops of the images' common size scaled down to 256 px on the long side, scales 0.5-1.5,
  ``train.class_weights: auto`` (median frequency balancing of the training labels);
* SGD at 0.01 with the paper's 10x head rate, :data:`EPOCHS` epochs of the training images (at least
  :data:`MIN_ITERS` iterations), validation four times during the run, bf16 where the CPU runs it fast.

The file is plain YAML with comments; everything in it is an ordinary config key (docs/training.md).
The flat layout (no splits) gets two list files beside the config, every fifth pair held out for
validation, named in ``data.train_list``/``data.val_list`` by absolute path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DataError
from ..files import write_text_output
from ..version import __version__
from .inspect import Finding, format_label_map

__all__ = ["starter_yaml", "write_starter", "EPOCHS", "MIN_ITERS", "starter_recipe"]

EPOCHS = 50
MIN_ITERS = 200
MAX_CROP = 256


def _round8(x: float) -> int:
    return max(8, int(x) // 8 * 8)


def starter_recipe(finding: Finding) -> dict[str, int | list[int]]:
    """Crop size, batch size and iterations for the training split's size and the images' common size."""
    train = finding.layout.split_pairs().get("train") or next(iter(finding.layout.split_pairs().values()))
    n = len(train)
    (w, h), _ = (finding.image_sizes.most_common(1) or [((512, 512), 0)])[0]
    s = min(1.0, MAX_CROP / max(w, h))
    batch = max(1, min(8, n))
    iters = max(MIN_ITERS, EPOCHS * (n // batch))
    return {"crop_size": [_round8(h * s), _round8(w * s)], "batch_size": batch, "iters": iters,
            "val_every": max(1, iters // 4), "ckpt_every": max(1, min(250, iters // 4)), "images": n}


def _flow(value) -> str:
    return json.dumps(value) if not isinstance(value, dict) else format_label_map(value)


def starter_yaml(finding: Finding, config_path: str | Path, *, lists: dict[str, Path] | None = None,
                 command: str = "") -> str:
    """The starter config's text for ``finding``, to be saved as ``config_path`` (its run folder is
    ``runs/<config stem>``); ``lists``: the flat layout's list files by split."""
    if not finding.usable:
        raise DataError("no starter config: the labels' encoding is not one the own-data datasets read "
                        "(see the notes above)")
    config_path = Path(config_path)
    lay, enc = finding.layout, finding.encoding
    r = starter_recipe(finding)
    d = finding.data_settings()
    has_val = "val" in lists if lists is not None else bool(d.get("val_split"))
    lines = [f"# Starter config for {lay.root}, written by pspnet {__version__}"
             + (f" ({command})" if command else "") + ".",
             f"# layout: {lay.description}"]
    if enc is not None:
        lines.append(f"# labels: {enc.describe()}")
    lines += [f"# Train:  pspnet train --config {config_path}",
              "#         (stop early with --max-minutes N, continue with --resume runs/.../last.pt; any key can be",
              "#         overridden on the command line, e.g. train.iters=2000)",
              f"# Check:  pspnet data check --config {config_path}",
              "model:",
              "  depth: 18                  # PSPNet-18 trains on a CPU; 50 or 101 on a GPU",
              "  output_stride: 8",
              "  deep_stem: true",
              "  head_channels: 256         # the packaged CamVid model's widths (train.pretrained: packaged)",
              "  aux_channels: 128"]
    if finding.num_classes:
        lines.append(f"  num_classes: {finding.num_classes}")
    lines += ["data:", f"  dataset: {d['dataset']}", f"  root: {_flow(str(d['root']))}"]
    if lists:
        lines += [f"  train_list: {_flow(str(lists['train']))}   # every pair but each {5}th, by name",
                  f"  val_list: {_flow(str(lists['val']))}" if "val" in lists else "  val_split: null"]
    else:
        lines.append(f"  train_split: {d['train_split']}")
        lines.append(f"  val_split: {d['val_split'] or 'null'}"
                     + ("" if d["val_split"] else "          # no validation split found"))
    if enc is not None and finding.num_classes:
        names = [f"class_{i}" for i in range(finding.num_classes)]
        what = ("file values " + ", ".join(str(v) for v in enc.label_map)) if enc.label_map else \
            "the colours of data.label_colors" if enc.label_colors else "file values 0.." + str(finding.num_classes - 1)
        lines.append(f"  class_names: {_flow(names)}   # {what}: name them")
    if "label_map" in d:
        lines.append(f"  label_map: {_flow(d['label_map'])}   # label-file value -> class id (or ignore)")
    if "label_colors" in d:
        lines.append(f"  label_colors: {_flow(d['label_colors'])}   # [r, g, b] of class 0, 1, ...")
    lines += [f"  crop_size: {_flow(r['crop_size'])}",
              "  scale_min: 0.5",
              "  scale_max: 1.5",
              "  workers: 1",
              "train:",
              "  # pretrained: packaged      # start from the packaged CamVid model (its classifier is re-initialised)",
              f"  iters: {r['iters']}                # about {EPOCHS} epochs of the {r['images']} training images",
              f"  batch_size: {r['batch_size']}",
              "  lr: 0.01",
              "  head_lr_mult: 10.0",
              "  class_weights: auto        # rare classes weigh more (from the training labels' pixel counts)",
              "  precision: auto            # bf16 where this CPU runs it faster, else fp32",
              f"  val_every: {r['val_every']}" if has_val else "  val_every: 0",
              f"  ckpt_every: {r['ckpt_every']}",
              "  log_every: 10",
              f"  output_dir: {_flow('runs/' + config_path.stem)}",
              ""]
    return "\n".join(lines)


def write_starter(finding: Finding, config_path: str | Path, *, command: str = "") -> list[Path]:
    """Write the starter config (and the flat layout's list files beside it); never overwrites a file."""
    config_path = Path(config_path)
    lists: dict[str, Path] | None = None
    texts: dict[Path, str] = {}
    if finding.layout.dataset == "flat":
        lists = {}
        root = finding.layout.root.resolve()
        for split, pairs in finding.layout.split_pairs().items():
            path = (config_path.parent / f"{config_path.stem}.{split}.txt").resolve()
            lists[split] = path
            texts[path] = "".join(f"{os.path.relpath(img.resolve(), root)} {os.path.relpath(lbl.resolve(), root)}\n"
                                  for img, lbl in pairs if lbl is not None)
    texts[config_path] = starter_yaml(finding, config_path, lists=lists, command=command)
    existing = [str(p) for p in texts if p.exists()]
    if existing:
        raise DataError(f"{', '.join(existing)}: exists; the starter config never overwrites a file (an edited config "
                        f"would be lost): remove it or name another --write-config file")
    for path, text in texts.items():
        write_text_output(path, text)
    return list(texts)
