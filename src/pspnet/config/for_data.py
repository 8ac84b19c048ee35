"""A run config for a data folder without a config file (its recognised starter config), and the checks of
a config's data-dependent keys against the data itself."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .files import apply_overrides, load_config, safe_yaml_load, validate
from .schema import Config


def config_for_data(root: str | Path, overrides: list[str] | None = None) -> Config:
    """A run config without a config file: the starter config of the data folder ``root`` (its layout and
    label encoding recognised by :func:`pspnet.data.inspect.recognise`; the file ``pspnet data check
    --write-config`` would write, :mod:`pspnet.data.starter`) with ``overrides`` applied."""
    from ..data.inspect import recognise
    from ..data.starter import starter_yaml
    from ..errors import DataError
    finding = recognise(root)
    if finding.layout.dataset == "flat":
        raise ConfigError(f"{root}: {finding.layout.description}: its validation split needs list files; write them "
                          f"with a config: pspnet data check --data-root {root} --write-config my_data.yaml")
    try:
        text = starter_yaml(finding, f"{Path(root).resolve().name or 'data'}.yaml")
    except DataError as e:
        raise ConfigError(f"{root}: {finding.format()}\n{e}") from None
    raw = apply_overrides(safe_yaml_load(text, str(root)), overrides or [])
    return validate(raw, f"{root} (recognised, no config file)")


def load_run_config(path: str | Path | None, overrides: list[str] | None = None, *,
                    data_root: str | None = None) -> Config:
    """The config of a command: the file ``path`` (or shipped config) with ``overrides``; without one, the
    recognised starter config of ``data_root`` (or of the override ``data.root=...``); without either, the
    defaults with the overrides. ``data_root`` (``--data-root``) replaces the config's ``data.root``."""
    overrides = list(overrides or [])
    if path is None:
        root = data_root or next((o.split("=", 1)[1] for o in reversed(overrides)
                                  if o.replace(" ", "").startswith("data.root=")), None)
        names_dataset = any(o.replace(" ", "").startswith("data.dataset=") for o in overrides)
        if root and not names_dataset:
            return config_for_data(root, overrides)
    cfg = load_config(path, overrides)
    if data_root:
        cfg.data.root = data_root
    return cfg


FAR_SCALE = 1.5
"""A base or crop size more than this factor from the images' size is far from it (a warning)."""


def check_config_against_data(cfg: Config) -> list[str]:
    """Check the keys of a run config that depend on the data (class count, ``train.class_weights``,
    ``data.class_names``, ``data.label_map``, ``data.crop_size``, ``eval.base_size``) against the label files
    and images of its own data (``folder``, ``list``; up to 48 training labels are read): keys inherited from a
    shipped config (``base: camvid/pspnet_r18_cpu``) must not mislead. A mismatch is a :class:`ConfigError`
    naming each key and the values to use; returns warnings (a base or crop size far from the images')."""
    from ..data.datasets import GENERIC, build_dataset
    from ..data.inspect import _rgb, _spread, format_label_map, label_encoding
    from ..data.io import image_size
    from ..errors import DataError
    d = cfg.data
    if d.dataset not in GENERIC:
        return []
    try:
        pairs = build_dataset(d.dataset, d.root, d.train_split, list_file=d.train_list, num_classes=1,
                              check_labels=False, check_files=False).pairs
        enc = label_encoding([lbl for _, lbl in pairs if lbl is not None])
    except DataError:
        return []  # training (or data check) names what is missing
    names = d.class_names
    n = cfg.model.num_classes or (len(names) if names else None) or enc.num_classes
    errors: list[str] = []
    if enc.kind == "colours":
        listed = {tuple(c) for c in d.label_colors or ()}
        found = [_rgb(c) for c in enc.values]
        missing = [c for c in found if c not in listed]
        if missing:
            errors.append(f"the label files are colour masks and data.label_colors does not list "
                          f"{[list(c) for c in missing[:8]]}: set data.label_colors: {[list(c) for c in found]} "
                          f"(class i = colour i) and model.num_classes: {len(found)}")
    elif enc.usable:
        lm = d.label_map or {}
        unmapped = [v for v in enc.values if v not in lm and v != d.ignore_index and not (n and v < n)]
        if unmapped:
            fix = f"data.label_map: {format_label_map(enc.label_map)}" if enc.label_map else \
                "data.label_map (label-file value -> class id or ignore)"
            errors.append(f"the label files hold values {unmapped} that are not classes 0..{(n or 1) - 1}"
                          + (f" and data.label_map {format_label_map(lm)} does not map them" if lm else "")
                          + f": set {fix}" + (f" and model.num_classes: {enc.num_classes}"
                                              if enc.num_classes != n else "")
                          + " ('pspnet data check --data-root DIR' prints the map)")
    if names and n and len(names) != n:
        errors.append(f"data.class_names has {len(names)} names but there are {n} classes: set data.class_names: "
                      f"null (class_0, class_1, ...) or {n} names")
    weights = cfg.train.class_weights
    if isinstance(weights, list) and n and len(weights) != n:
        errors.append(f"train.class_weights has {len(weights)} values but there are {n} classes: set "
                      f"train.class_weights: auto (computed from the training labels) or null (unweighted), "
                      f"or give {n} values")
    if errors:
        raise ConfigError(f"data.root {d.root}: the config does not fit the data ({len(errors)} key(s)):\n  "
                          + "\n  ".join(errors))
    warnings: list[str] = []
    sizes = [image_size(img) for img, _ in _spread(pairs, 16) if img.is_file()]
    sizes = [s for s in sizes if s]
    if sizes:
        h, w = max(set(sizes), key=sizes.count)
        long = max(h, w)
        base = cfg.eval.base_size
        if base and not long / FAR_SCALE <= base <= long * FAR_SCALE:
            warnings.append(f"eval.base_size: {base} resizes the long side of these {w}x{h} images to {base} "
                            f"({base / long:.1f}x) for validation and prediction: set eval.base_size: null (their "
                            f"own size) or {long}")
        ch, cw = d.crop_size
        if ch > h * FAR_SCALE * d.scale_max or cw > w * FAR_SCALE * d.scale_max:
            warnings.append(f"data.crop_size: {list(d.crop_size)} is far larger than these {w}x{h} images (scaled "
                            f"up to {d.scale_max}x): the crops are mostly padding; set data.crop_size: [{h}, {w}]")
    return warnings


