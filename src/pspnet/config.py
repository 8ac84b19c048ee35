"""Typed run configuration: a YAML file (a path, or the name of a config shipped in the package's
``configs/`` folder, e.g. ``camvid/pspnet_r18_cpu``) plus ``key=value`` overrides. A file may start
from another with ``base: camvid/pspnet_r18_cpu`` and list only the keys it changes.

Every section is a pydantic model that forbids unknown keys; an unknown or misspelled key is a
:class:`ConfigError` that suggests the closest valid key (``train.lr`` for ``train.lrr``).
"""

from __future__ import annotations

import difflib
import os
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .errors import ConfigError
from .labels import IGNORE_INDEX
from .models.pspnet import CONFIG_FIELDS, PSPNetConfig
from .models.schema import FieldSpec

__all__ = ["Config", "ModelSection", "DataSection", "TrainSection", "EvalSection", "load_config", "apply_overrides",
           "recorded_test_settings", "recorded_data_reading", "TEST_SETTING_KEYS", "shipped_configs",
           "resolve_config", "read_config_file",
           "CONFIGS_DIR", "config_for_data", "load_run_config", "check_config_against_data"]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
"""The configs shipped inside the package (package data: they come with every install)."""


class _Section(BaseModel):
    # allow_inf_nan=False: "train.lr=.inf" or a NaN from YAML is a ConfigError, not a run that diverges
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _model_field(f: FieldSpec) -> tuple[Any, Any]:
    """A pydantic field (annotation, FieldInfo) with the bounds of a :class:`PSPNetConfig` field.

    Values are coerced as pydantic does for YAML (``"8"`` is 8); the bounds are the schema's.
    Sequences are lists here (what YAML gives and ``model_dump`` writes back).
    """
    kind: Any = Literal[f.choices] if f.choices is not None else f.kind  # type: ignore[valid-type]
    bounds: dict[str, Any] = {}
    if f.range is not None:
        bounds = {"ge": f.range[0], ("lt" if f.open_above else "le"): f.range[1]}
    if f.sequence:
        annotation: Any = list[Annotated[kind, Field(**bounds)]]  # type: ignore[valid-type]
        lengths = {"min_length": f.length[0], "max_length": f.length[1]} if f.length else {}
        info = Field(None if f.default is None else list(f.default), description=f.help, **lengths)
    else:
        annotation, info = kind, Field(f.default, description=f.help, **bounds)
    return (annotation | None if f.nullable else annotation), info


def _check_model(section: Any) -> Any:
    """What only the whole section can tell (the stem's widths against its kind), as PSPNetConfig says it."""
    values = section.model_dump()
    values["num_classes"] = values["num_classes"] or 1  # left to the dataset: any valid count will do
    try:
        PSPNetConfig.from_dict(values)
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    return section


def _model_section() -> type[_Section]:
    """The ``model`` section: every :class:`PSPNetConfig` field with its default and bounds
    (:data:`~pspnet.models.pspnet.CONFIG_FIELDS`), except that ``num_classes`` may be left to the dataset."""
    fields = {name: _model_field(f) for name, f in CONFIG_FIELDS.items()}
    lo, hi = CONFIG_FIELDS["num_classes"].range  # type: ignore[misc]
    fields["num_classes"] = (int | None, Field(None, ge=lo, le=hi, description="default: the dataset's class count"))
    return create_model("ModelSection", __base__=_Section, __module__=__name__,
                        __doc__="Fields of :class:`pspnet.models.PSPNetConfig`, built from its schema.",
                        __validators__={"_whole_section": model_validator(mode="after")(_check_model)}, **fields)


ModelSection = _model_section()


def _per_core(value: int | None, key: str) -> int | None:
    """At most four per CPU core: ``train.threads=100000`` asked the OS for 100000 threads."""
    cores = os.cpu_count() or 1
    if value is not None and value > 4 * cores:
        raise ValueError(f"{key}={value} is more than 4 per CPU core (this machine has {cores}); allowed up to "
                         f"{4 * cores}")
    return value


def _square(v: Any) -> Any:
    """``473`` -> ``(473, 473)``: a single number is a square crop."""
    return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v


class DataSection(_Section):
    dataset: str = "camvid"
    root: str = "data/camvid"
    train_split: str = "train"
    val_split: str | None = Field("val", description="null or empty: no validation set")
    train_list: str | None = None
    val_list: str | None = None
    class_names: list[str] | None = None
    label_map: dict[int, int | Literal["ignore"]] | None = Field(
        None, description="your own labels ('folder', 'list'): label-file value -> class id or 'ignore', e.g. "
                          "{255: 1} for 0/255 masks; values not named stay as they are")
    label_colors: list[tuple[Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)],
                             Annotated[int, Field(ge=0, le=255)]]] | None = Field(
        None, description="your own colour (RGB) masks ('folder', 'list'): the [r, g, b] colour of each class, class "
                          "0 first; a colour not listed is an error naming the file and pixel")
    crop_size: tuple[int, int] = (473, 473)
    scale_min: float = Field(0.5, gt=0)
    scale_max: float = Field(2.0, gt=0)
    rotate: float = Field(10.0, ge=0, le=180)
    blur: bool = True
    flip: bool = True
    color_jitter: float = Field(0.0, ge=0, le=1, description="brightness/contrast/saturation jitter strength "
                                "(hue a sixth of it), 80% of samples; 0 = off (the paper has none)")
    ignore_index: int = IGNORE_INDEX
    workers: int = Field(2, ge=0)
    skip_bad: bool = False

    _workers_bound = field_validator("workers")(lambda v: _per_core(v, "data.workers"))

    _crop_square = field_validator("crop_size", mode="before")(lambda v: _square(v))

    @field_validator("crop_size")
    @classmethod
    def _crop_positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError(f"crop_size must be at least 8 x 8 pixels (height, width), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _one_label_mapping(self) -> DataSection:
        if self.label_colors and self.label_map:
            raise ValueError("data.label_map (grey label values) and data.label_colors (colour masks) both set: "
                             "label files are one or the other; keep the one that fits them")
        return self

    @model_validator(mode="after")
    def _scale_order(self) -> DataSection:
        if self.scale_min > self.scale_max:
            raise ValueError(f"data.scale_min ({self.scale_min}) must not exceed data.scale_max ({self.scale_max})")
        return self


class TrainSection(_Section):
    epochs: int | None = Field(None, ge=1)
    iters: int | None = Field(None, ge=1, description="total iterations; overrides epochs")
    batch_size: int = Field(8, ge=1, description="per process")
    lr: float = Field(0.01, gt=0)
    head_lr_mult: float = Field(10.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    power: float = Field(0.9, ge=0)
    warmup_iters: int = Field(0, ge=0)
    aux_weight: float = Field(0.4, ge=0)
    loss: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = Field(0.7, gt=0, lt=1)
    class_weights: list[float] | Literal["auto"] | None = Field(
        None, description="per-class loss weights, or auto: sqrt(median frequency / frequency) of the training "
                          "labels' class pixels, computed at the start and stored in the run's config.yaml")
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps")
    freeze_backbone: bool = False
    freeze_bn: bool = False
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto"
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    val_every: int = Field(0, ge=0, description="iterations between validations (0: at the end only)")
    ckpt_every: int = Field(0, ge=0, description="iterations between checkpoints (0: end only)")
    log_every: int = Field(10, ge=1)
    val_max_images: int | None = Field(None, ge=1)
    pretrained: str | None = Field(None, description="weight file to start from, or 'packaged': the CamVid model "
                                                      "that ships with pspnet")
    output_dir: str = "runs/pspnet"
    tensorboard: bool = False
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: all cores)")

    _threads_bound = field_validator("threads")(lambda v: _per_core(v, "train.threads"))


class EvalSection(_Section):
    mode: Literal["whole", "sliding"] = "whole"
    base_size: int | None = Field(None, ge=8, le=8192, description="resize the long side to this before inference")
    crop_size: tuple[int, int] | None = None
    stride_rate: float = Field(2 / 3, ge=0.1, le=1)  # 1e-9 meant a window per pixel: 16 s for 64 x 48
    scales: list[Annotated[float, Field(ge=0.1, le=4.0)]] = Field([1.0], min_length=1, max_length=16)
    flip: bool = False
    protocol: Literal["release", "logit-average"] = Field(
        "release", description="test-time averaging: the original release's tool/test.py, or pspnet 0.1's")

    _crop_square = field_validator("crop_size", mode="before")(lambda v: _square(v))


TEST_SETTING_KEYS = ("mode", "base_size", "crop_size", "stride_rate", "scales", "flip", "protocol")
"""The eval-section fields a weight file records as ``test_settings`` (its test protocol)."""


def recorded_test_settings(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """The test settings a weight file records (its ``test_settings`` metadata, or the older
    ``eval_base_size``), checked like a config's eval section; ``{}`` when it records none."""
    raw = meta.get("test_settings")
    if raw is None:
        base = meta.get("eval_base_size")
        raw = {} if base is None else {"base_size": base}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: metadata test_settings must be a JSON object, got {short_repr(raw)}")
    unknown = sorted(set(raw) - set(TEST_SETTING_KEYS))
    if unknown:
        raise ConfigError(f"{source}: metadata test_settings has unknown keys {unknown}; "
                          f"known: {list(TEST_SETTING_KEYS)}")
    try:
        section = EvalSection.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, f"{source} (metadata test_settings)")) from None
    return {k: getattr(section, k) for k in raw}


def recorded_data_reading(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """How the weights' training data was read (their ``trained_on`` metadata): ``dataset``, ``label_map``
    (label-file value -> class id or ``"ignore"``), ``label_colors``, ``ignore_index``; the keys it records, checked
    like a config's data section, so ``pspnet eval --weights W --data-root DIR`` reads the same masks without a
    config."""
    raw = meta.get("trained_on") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: metadata trained_on must be a JSON object, got {short_repr(raw)}")
    out: dict[str, Any] = {}
    if isinstance(raw.get("dataset"), str):
        out["dataset"] = raw["dataset"]
    values: dict[str, Any] = {}
    if raw.get("label_map") is not None:
        pairs = raw["label_map"]
        if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)):
            raise ConfigError(f"{source}: metadata trained_on.label_map must be a list of [value, class] pairs, "
                              f"got {short_repr(pairs)}")
        values["label_map"] = {k: v for k, v in pairs}
    if raw.get("ignore_index") is not None:
        values["ignore_index"] = raw["ignore_index"]
    if raw.get("label_colors") is not None:
        values["label_colors"] = raw["label_colors"]
    try:
        section = DataSection.model_validate(values)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, f"{source} (metadata trained_on)")) from None
    out.update({k: getattr(section, k) for k in values})
    return out


class Config(_Section):
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()

    def model_kwargs(self, num_classes: int) -> dict[str, Any]:
        d = self.model.model_dump()
        d["num_classes"] = d["num_classes"] or num_classes
        return d


SECTIONS = {"model": ModelSection, "data": DataSection, "train": TrainSection, "eval": EvalSection}


MAX_YAML_NODES = 100_000
"""The most nodes a config may hold once its aliases are expanded (the shipped ones: under 200). An
alias bomb (nine nested aliases of ten: 10^9 values) is refused from its node graph, before any value
is built or validated."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], source: str) -> int:
    """Nodes ``node`` stands for with every alias expanded; a shared node is counted once per use but
    computed once (``sizes``), so the count itself takes time in the size of the document, not of its
    expansion."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ConfigError(f"{source}: a YAML alias refers to the node that contains it (a recursive document); "
                          f"write the values out")
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_nodes, source) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_nodes, source) + _expanded_size(v, sizes, open_nodes, source)
                    for k, v in node.value)
    open_nodes.discard(key)
    sizes[key] = min(size, MAX_YAML_NODES + 1)  # capped: the sum stays a small integer
    return sizes[key]


def safe_yaml_load(text: str, source: str = "config") -> Any:
    """``yaml.safe_load`` that refuses documents which expand (through anchors and aliases) to more than
    :data:`MAX_YAML_NODES` nodes: PyYAML shares an aliased value, but validation and error messages
    walk it once per use, so ten nested aliases of ten took a minute and gigabytes to refuse."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set(), source)
        if size > MAX_YAML_NODES:
            raise ConfigError(f"{source}: the YAML expands (through its anchors and aliases) to more than "
                              f"{MAX_YAML_NODES:,} values; a config holds a few hundred: write the values out")
        return loader.construct_document(node)
    finally:
        loader.dispose()


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 60, 60, 2, 6, 6


def short_repr(value: Any) -> str:
    """``repr`` cut to two levels and 100 characters: an error message never expands a value."""
    text = _SHORT.repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in SECTIONS.items() for k in cls.model_fields]


def _suggest(key: str) -> str:
    keys = _all_keys()
    if "." not in key:  # a key without its section, or a misspelled section name
        leaf = [k for k in keys if k.split(".")[1] == key]
        if leaf:
            return f"; did you mean '{leaf[0]}'?"
        close = difflib.get_close_matches(key, list(SECTIONS), n=1, cutoff=0.5)
        if close:
            return f"; did you mean section '{close[0]}'? (sections: {', '.join(SECTIONS)})"
        return f"; the sections are {', '.join(SECTIONS)}"
    leaf_matches = [k for k in keys if k.split(".")[1] == key.split(".")[-1]]
    close = leaf_matches or difflib.get_close_matches(key, keys, n=1, cutoff=0.5) or \
        difflib.get_close_matches(key.split(".")[-1], [k.split(".")[1] for k in keys], n=1, cutoff=0.6)
    if close:
        best = close[0]
        if "." not in best:
            best = next(k for k in keys if k.endswith("." + best))
        return f"; did you mean '{best}'?"
    return ""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'{_suggest(key)}")
        elif e["type"] == "value_error" and len(e["loc"]) <= 1:  # a cross-field check of a section
            lines.append(str(e["msg"]).removeprefix("Value error, "))
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
            lines.append(f"'{key}': {msg} (got {short_repr(e.get('input'))})")
    return f"{source}: invalid config:\n  " + "\n  ".join(lines)


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    raw = {k: ({} if v is None and k in SECTIONS else v) for k, v in raw.items()}  # "eval:" with no keys
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def parse_value(text: str) -> Any:
    try:
        return safe_yaml_load(text, "override")
    except (yaml.YAMLError, RecursionError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config dict."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=0.005")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise ConfigError(f"override key '{key}' must be <section>.<key> with section one of "
                              f"{list(SECTIONS)}{_suggest(key)}")
        section, leaf = parts
        if leaf not in SECTIONS[section].model_fields:
            raise ConfigError(f"override: unknown key '{key}'{_suggest(key)}")
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ConfigError(f"config section '{section}' must be a mapping")
        raw[section][leaf] = parse_value(value)
    return raw


def shipped_configs() -> dict[str, Path]:
    """The shipped configs by name (``camvid/pspnet_r18_cpu``: the path under :data:`CONFIGS_DIR` without ``.yaml``)."""
    return {p.relative_to(CONFIGS_DIR).with_suffix("").as_posix(): p for p in sorted(CONFIGS_DIR.rglob("*.yaml"))}


def resolve_config(spec: str | Path) -> Path:
    """The file of ``--config SPEC``: an existing file, else the shipped config named ``SPEC`` (with or
    without ``.yaml``), so that a name works from any folder after a plain ``pip install``."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.as_posix().removesuffix(".yaml")
    if name in shipped:
        return shipped[name]
    close = difflib.get_close_matches(name, list(shipped), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"{spec}: config file not found, nor a shipped config of that name{hint} "
                      f"('pspnet configs' lists the shipped ones)")


def _read_raw(path: Path) -> dict[str, Any]:
    try:
        raw = safe_yaml_load(path.read_text(encoding="utf-8"), str(path)) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections {list(SECTIONS)}, "
                          f"got {type(raw).__name__}")
    return raw


def _resolve_base(spec: Any, child: Path) -> Path:
    """The file a ``base:`` key names: a path relative to the file that names it, else a shipped config."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{child}: 'base' must name a config (a shipped name such as camvid/pspnet_r18_cpu, "
                          f"or a path relative to this file), got {short_repr(spec)}")
    beside = child.parent / spec
    if beside.is_file():
        return beside
    try:
        return resolve_config(spec)
    except ConfigError as e:
        raise ConfigError(f"{child}: base: {e}") from None


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw sections of a YAML config, with its ``base:`` (if any) read first and overridden key by
    key: a variant names what it changes and nothing else, so it cannot drift from the config it varies."""
    chain = (*_chain, path.resolve())
    raw = _read_raw(path)
    if "base" not in raw:
        return raw
    base_path = _resolve_base(raw.pop("base"), path)
    if base_path.resolve() in chain:
        loop = " -> ".join(p.name for p in (*chain, base_path.resolve()))
        raise ConfigError(f"{chain[0]}: 'base' goes round in a loop: {loop}")
    merged = read_config_file(base_path, chain)
    for section, values in raw.items():
        if values is None:  # "eval:" with no keys changes nothing
            continue
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:  # not a mapping: validation reports it against this file's value
            merged[section] = values
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a path or a shipped config's name, :func:`resolve_config`; the defaults when
    ``path`` is None), with its ``base:`` config under it (:func:`read_config_file`), and apply overrides."""
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = resolve_config(path)
        source = str(path)
        raw = read_config_file(path)
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, source)


def config_for_data(root: str | Path, overrides: list[str] | None = None) -> Config:
    """A run config without a config file: the starter config of the data folder ``root`` (its layout and
    label encoding recognised by :func:`pspnet.data.inspect.recognise`; the file ``pspnet data check
    --write-config`` would write, :mod:`pspnet.data.starter`) with ``overrides`` applied."""
    from .data.inspect import recognise
    from .data.starter import starter_yaml
    from .errors import DataError
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
    from .data.datasets import GENERIC, build_dataset
    from .data.inspect import _rgb, _spread, format_label_map, label_encoding
    from .data.io import image_size
    from .errors import DataError
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


def dump_config(cfg: Config) -> str:
    raw = cfg.model_dump(mode="json")
    if raw["data"]["label_map"]:  # JSON mode made the keys strings; YAML keeps them label values
        raw["data"]["label_map"] = cfg.data.label_map
    return yaml.safe_dump(raw, sort_keys=False)
