"""The run config's sections, one pydantic model each (unknown keys refused), and what a weight file records
of the test settings and of how its training data was read."""

from __future__ import annotations

import difflib
import os
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from ..errors import ConfigError
from ..labels import IGNORE_INDEX
from ..models.pspnet import CONFIG_FIELDS, PSPNetConfig
from ..models.schema import FieldSpec

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
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
    focus_classes: list[int | str] | None = Field(
        None, description="classes (ids or names) that a share of training crops is placed around, e.g. "
                          "[pole, sign, fence]: class-uniform crop sampling (Zhu et al. 2019), not in the paper")
    focus_prob: float = Field(0.5, ge=0, le=1, description="share of crops placed around a focus class "
                              "(when data.focus_classes is set)")
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
    ema: float | None = Field(None, gt=0, lt=1, description="decay of a moving average of the weights (e.g. "
                              "0.999), written as final_ema.safetensors beside final.safetensors; null: none (the "
                              "paper has none)")
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


