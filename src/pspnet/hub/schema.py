"""The one schema of a catalogue entry, for the shipped ``catalogue.json`` and for ``$PSPNET_CATALOGUE``.

Every entry, built-in or local, is checked here before it becomes a
:class:`~pspnet.hub.catalogue.ModelEntry`; a bad one is a :class:`~pspnet.errors.ConfigError` naming
the file, the entry and the field (``catalogue.json: entry 'x', field files[0].url: ...``).

An entry is ``name``, ``source`` (a key of the file's ``sources``), ``dataset``, ``num_classes``,
``backbone``, ``depth``, ``files`` (each ``{url, sha256?, sha256_prefix?, filename?}``) and ``results``
(each ``{miou, protocol}``; the first is the number a converted file's test settings follow);
optional: ``zoo_dataset``, ``crop_size``, ``schedule``, ``config``, ``downloadable``, ``base_size``,
``test_crop``, ``notes``. A one-file entry may give ``url`` (+ ``sha256`` / ``sha256_prefix`` /
``filename``) instead of ``files``, and ``miou`` + ``protocol`` instead of ``results``; the keys that
``pspnet models --json`` derives from the source (``source_title``, ``checksum_published``,
``layout``, ``page``) are accepted and ignored, so its output is a valid catalogue. Any other key is
an error (a misspelt ``sha265`` must not pass as "no checksum").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import ConfigError

__all__ = ["FileSpec", "ResultSpec", "EntrySpec", "SourceSpec", "LAYOUTS", "validate_entry", "validate_source"]

# the converter's names for the checkpoint layouts (pspnet.models.convert; csailvision is two files)
Layout = Literal["mmsegmentation", "csailvision", "original-release"]
LAYOUTS: tuple[str, ...] = get_args(Layout)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
_HEX = re.compile(r"^[0-9a-f]+$")
_MMSEG_NAME_PREFIX = re.compile(r"-([0-9a-f]{8})\.pth$")  # mmsegmentation: file names end in -<sha256[:8]>.pth
_SHORTHAND_FILE = ("url", "sha256", "sha256_prefix", "filename")
_SHORTHAND_RESULT = ("miou", "protocol")
_DERIVED = ("source_title", "checksum_published", "layout", "page")  # pspnet models --json adds these


def _web_url(v: str) -> str:
    parsed = urlparse(v)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {v!r}")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSpec(_Strict):
    """One file of a checkpoint."""

    url: str
    sha256: str | None = None          # full hex digest
    sha256_prefix: str | None = None   # leading hex digits (mmsegmentation: the 8 in the file name)
    filename: str | None = Field(None, min_length=1)  # when the URL does not end in the file's name

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _web_url(v)

    @field_validator("sha256", "sha256_prefix")
    @classmethod
    def _hex(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        v = v.lower()
        size = "64" if info.field_name == "sha256" else "1-64"
        if not _HEX.match(v) or (info.field_name == "sha256" and len(v) != 64) or len(v) > 64:
            raise ValueError(f"must be {size} hex digits, got {v!r}")
        return v

    @model_validator(mode="after")
    def _agree(self) -> FileSpec:
        if self.sha256 and self.sha256_prefix and not self.sha256.startswith(self.sha256_prefix):
            raise ValueError(f"sha256 {self.sha256} does not start with sha256_prefix {self.sha256_prefix}")
        named = _MMSEG_NAME_PREFIX.search(urlparse(self.url).path)
        if named and self.sha256_prefix and self.sha256_prefix != named.group(1):
            raise ValueError(f"sha256_prefix {self.sha256_prefix} is not the {named.group(1)} the file name ends "
                             f"in (mmsegmentation names a file by its sha256's first 8 hex digits)")
        return self


class ResultSpec(_Strict):
    """One published mIoU (percent) and the protocol it was measured with."""

    miou: float = Field(gt=0, le=100)
    protocol: str = Field(min_length=1)


class SourceSpec(_Strict):
    """A model zoo: where its files live and what it publishes about them."""

    key: str = Field(pattern=r"^[a-z0-9_-]+$")
    title: str = Field(min_length=1)
    page: str                  # the table the numbers come from
    host: str = Field(min_length=1)  # where its files are downloaded from
    layout: Layout
    checksum: str = Field(min_length=1)  # what the zoo publishes to check a file with, in words
    requires_checksum: bool = False  # the zoo publishes one: every file of its entries must carry it

    @field_validator("page")
    @classmethod
    def _page(cls, v: str) -> str:
        return _web_url(v)


class EntrySpec(_Strict):
    """A public PSPNet checkpoint, as the catalogue file writes it. ``context={"sources": {key: source}}``
    (objects with ``layout`` and ``requires_checksum``) is needed to check ``source``."""

    name: str = Field(pattern=NAME_PATTERN)
    source: str
    dataset: str = Field(min_length=1)
    zoo_dataset: str = ""            # key of pspnet.models.zoo_datasets.ZOO_DATASETS: class names, palette
    num_classes: int = Field(ge=1)
    backbone: str = Field(min_length=1)
    depth: int = Field(ge=1)
    files: tuple[FileSpec, ...] = Field(min_length=1)
    results: tuple[ResultSpec, ...] = Field(min_length=1)
    crop_size: tuple[int, int] | None = None   # training crop (h, w)
    schedule: str = ""
    config: str = ""                 # the zoo's config the numbers belong to
    downloadable: bool = True        # False: no direct link (the file is given with --from)
    base_size: int | None = Field(None, ge=1)  # original release: tool/test.py's base_size
    test_crop: int | None = Field(None, ge=1)  # original release: test_h = test_w
    notes: str = ""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, d: Any) -> Any:
        """``url`` (+ checksums) for a one-file ``files``, ``miou`` + ``protocol`` for a one-result ``results``."""
        if not isinstance(d, Mapping):
            return d
        d = {k: v for k, v in d.items() if k not in _DERIVED}
        for key, short in (("files", _SHORTHAND_FILE), ("results", _SHORTHAND_RESULT)):
            given = {k: d.pop(k) for k in short if k in d}
            if d.get(key):
                first = d[key][0] if isinstance(d[key], (list, tuple)) and d[key] else {}
                first = first if isinstance(first, Mapping) else {}
                clash = [k for k, v in given.items() if v not in (None, "") and first.get(k) != v]
                if clash:
                    raise ValueError(f"field {key}: give {key} or {'/'.join(short)}, not both: "
                                     f"{', '.join(clash)} differs from {key}[0]")
            elif given:
                d[key] = [{k: v for k, v in given.items() if v is not None}]
        return d

    @model_validator(mode="after")
    def _fits_its_source(self, info: ValidationInfo) -> EntrySpec:
        sources = (info.context or {}).get("sources")
        if sources is None:
            raise ValueError("validate with context={'sources': ...}")
        if self.source not in sources:
            raise ValueError(f"field source: unknown source {self.source!r}; one of {sorted(sources)}")
        src = sources[self.source]
        if src.layout == "csailvision" and len(self.files) != 2:
            raise ValueError("field files: a CSAILVision model is two files (encoder, decoder)")
        if src.requires_checksum:
            for i, f in enumerate(self.files):
                if f.sha256 is None and f.sha256_prefix is None:
                    raise ValueError(f"field files[{i}]: {self.source} publishes a checksum ({src.checksum}); give "
                                     f"sha256 or sha256_prefix")
        return self


def _where(loc: tuple) -> str:
    """``('files', 0, 'sha256')`` -> ``files[0].sha256``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(e: ValidationError) -> str:
    lines = []
    errors = e.errors()
    for err in errors:
        if err["type"] == "too_short" and any(o["loc"][:len(err["loc"])] == err["loc"] and o["loc"] != err["loc"]
                                              for o in errors):
            continue  # "at least 1 item" only because an item was refused: that item's error says why
        msg = err["msg"].removeprefix("Value error, ")
        loc = _where(err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown field (a misspelling?)"
        elif err["type"] == "missing":
            msg = "required field missing"
        lines.append(f"field {loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def validate_entry(d: Any, sources: Mapping[str, Any], where: str = "catalogue") -> EntrySpec:
    """``d`` checked against :class:`EntrySpec`, or a :class:`ConfigError` naming ``where``, the entry and
    the field."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: each entry must be a JSON object, got {type(d).__name__}")
    try:
        return EntrySpec.model_validate(d, context={"sources": sources})
    except ValidationError as e:
        raise ConfigError(f"{where}: entry {d.get('name', '?')!r}, {_problems(e)}") from None


def validate_source(d: Any, where: str = "catalogue") -> SourceSpec:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: each source must be a JSON object, got {type(d).__name__}")
    try:
        return SourceSpec.model_validate(d)
    except ValidationError as e:
        raise ConfigError(f"{where}: source {d.get('key', '?')!r}, {_problems(e)}") from None
