"""Typed run configuration: a YAML file (a path, or the name of a config shipped in the package's
``configs/`` folder, e.g. ``camvid/pspnet_r18_cpu``) plus ``key=value`` overrides. A file may start
from another with ``base: camvid/pspnet_r18_cpu`` and list only the keys it changes.

Every section is a pydantic model that forbids unknown keys; an unknown or misspelled key is a
:class:`ConfigError` that suggests the closest valid key (``train.lr`` for ``train.lrr``).
"""

from __future__ import annotations

from .files import (
    apply_overrides,
    dump_config,
    load_config,
    parse_value,
    read_config_file,
    resolve_config,
    safe_yaml_load,
    shipped_configs,
    short_repr,
    validate,
)
from .for_data import check_config_against_data, config_for_data, load_run_config
from .schema import (
    CONFIGS_DIR,
    SECTIONS,
    TEST_SETTING_KEYS,
    Config,
    DataSection,
    EvalSection,
    ModelSection,
    TrainSection,
    recorded_data_reading,
    recorded_test_settings,
)

__all__ = ["Config", "ModelSection", "DataSection", "TrainSection", "EvalSection", "load_config", "apply_overrides",
           "recorded_test_settings", "recorded_data_reading", "TEST_SETTING_KEYS", "shipped_configs",
           "resolve_config", "read_config_file",
           "CONFIGS_DIR", "config_for_data", "load_run_config", "check_config_against_data", "dump_config",
           "parse_value", "safe_yaml_load", "short_repr", "validate", "SECTIONS"]
