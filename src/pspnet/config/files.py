"""Reading a run config: a YAML file (a path, or a shipped config's name) with its ``base:`` chain, checked
before it is expanded (alias bombs), ``key=value`` overrides, validation with suggestions, and writing one."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .schema import CONFIGS_DIR, SECTIONS, Config, _format_errors, _suggest, short_repr

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



def dump_config(cfg: Config) -> str:
    raw = cfg.model_dump(mode="json")
    if raw["data"]["label_map"]:  # JSON mode made the keys strings; YAML keeps them label values
        raw["data"]["label_map"] = cfg.data.label_map
    return yaml.safe_dump(raw, sort_keys=False)
