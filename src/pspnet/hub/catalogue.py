"""The public PSPNet checkpoints (``pspnet models``): the table is data, ``catalogue.json`` beside this
module (package data), read and checked against :mod:`pspnet.hub.schema` on import.

Like torchvision's ``WeightsEnum``, an entry keeps together what belongs together: the file(s) and
their checksums, the dataset and its classes, the published mIoU and the test protocol behind it,
and how the file converts (the zoo's layout; :func:`pspnet.models.convert.convert` does the work).
Adding a checkpoint is an edit of ``catalogue.json`` and a run of ``tests/hub`` (docs/zoo.md).

Where every fact comes from (nothing here is measured by us):

- **mmsegmentation**: ``configs/pspnet/README.md`` and ``configs/pspnet/metafile.yaml`` of
  open-mmlab/mmsegmentation (the same numbers and URLs in both; the stored metafile misspells the
  host of one URL, ``pspnet_r101-d8_769x769_80k``, the README's is used). "mIoU" is single scale,
  "mIoU(ms+flip)" scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 with flip (the commented ``img_ratios``
  of its dataset configs). Every file name ends in ``-<8 hex>.pth``, the first 8 hex digits of the
  file's sha256 (``tools/misc/publish_model.py``: ``sha256sum`` then ``-{sha[:8]}.pth``); no full
  checksum is published. The three ``-d32`` (output stride 32) models are left out: pspnet builds
  output stride 8 or 16 and ``pspnet convert`` refuses them. Test protocols (resize scale, whole or
  sliding) are those :mod:`pspnet.models.zoo` records in converted files.
- **CSAILVision** semantic-segmentation-pytorch: README "Performance" table (ADE20K val; "Mean IoU"
  with and without "MultiScale Testing"), URLs from ``demo_test.sh``
  (``http://sceneparsing.csail.mit.edu/model/pytorch/<config>/{encoder,decoder}_epoch_N.pth``) with N
  from each config's ``TEST.checkpoint``. Multi-scale is its ``eval_multipro.py`` with the config's
  ``imgSizes`` (short side 300..600, softmax averaged, no flip), the protocol a converted file
  records, so it is the entry's headline number. No checksum is published.
- **Original release** (hszhao/semseg): README "Performance" tables (mIoU given as fractions,
  stored here x100) and ``config/<dataset>/<dataset>_pspnet<depth>.yaml`` (``base_size``,
  ``test_h``, ``model_path``). Its ``tool/test.py`` slides ``test_h`` windows (stride 2/3) and
  always averages the flipped window (``net_process(..., flip=True)``). The files are in a Google
  Drive folder with no per-file links, so ``pspnet download`` needs them given with ``--from``.
  No checksum is published.

Class names and palettes come from :data:`pspnet.models.zoo_datasets.ZOO_DATASETS`
(mmsegmentation's dataset tables; the original release uses the same class order).

The table can be extended (e.g. a local mirror) from a JSON list of entries in the file named by
``PSPNET_CATALOGUE`` (:func:`catalogue`), checked against the same schema (:meth:`ModelEntry.from_dict`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError
from ..files import safe_file_name
from .schema import EntrySpec, validate_entry, validate_source

__all__ = ["ZooFile", "Published", "Source", "ModelEntry", "SOURCES", "CATALOGUE", "catalogue", "find_entry",
           "entry_for_url", "CATALOGUE_ENV", "CATALOGUE_FILE", "read_catalogue_file"]

CATALOGUE_ENV = "PSPNET_CATALOGUE"
CATALOGUE_FILE = Path(__file__).resolve().with_name("catalogue.json")
"""The shipped table (package data): ``{"format": 1, "sources": [...], "models": [...]}``."""
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Source:
    """A model zoo: where its files live and what it publishes about them."""

    key: str
    title: str
    page: str            # the table the numbers come from
    host: str            # where its files are downloaded from
    layout: str          # the converter's name for its checkpoint layout
    checksum: str        # what the zoo publishes to check a file with
    requires_checksum: bool = False  # it publishes one: every file of its entries carries it


@dataclass(frozen=True)
class ZooFile:
    """One file of a checkpoint (CSAILVision models have two: encoder, decoder)."""

    url: str
    sha256: str | None = None          # full hex digest, where the source publishes one
    sha256_prefix: str | None = None   # leading hex digits (mmsegmentation: the 8 in the file name)
    filename: str | None = None        # when the URL does not end in it (a Google Drive folder)

    def __post_init__(self) -> None:
        for name in ("sha256", "sha256_prefix"):
            v = getattr(self, name)
            if v is not None:
                if not isinstance(v, str) or not _HEX.match(v.lower()) or \
                        (name == "sha256" and len(v) != 64) or not 1 <= len(v) <= 64:
                    raise ConfigError(f"{self.url}: {name} must be {'64' if name == 'sha256' else '1-64'} hex "
                                      f"digits, got {v!r}")
                object.__setattr__(self, name, v.lower())
        # The file name joins the cache folder: reduce it to a plain base name, whether the catalogue
        # gave it or the URL's last part (percent-decoded there, so %2F must not become a folder)
        raw = self.filename if self.filename is not None else urlparse(self.url).path
        object.__setattr__(self, "filename", safe_file_name(raw))


@dataclass(frozen=True)
class Published:
    """One published number and the protocol it was measured with."""

    miou: float      # percent
    protocol: str


@dataclass(frozen=True)
class ModelEntry:
    """A public PSPNet checkpoint. ``results[0]`` is the number whose protocol a converted file
    records as its ``test_settings`` (so ``pspnet eval --weights NAME`` follows it by default).

    Entries come from data (:func:`read_catalogue_file`, :meth:`from_dict`), checked against
    :class:`pspnet.hub.schema.EntrySpec` first; building one in code checks the essentials only."""

    name: str
    source: str                          # a key of SOURCES
    dataset: str                         # as the zoo names it
    zoo_dataset: str                     # key of ZOO_DATASETS: classes and palette
    num_classes: int
    backbone: str
    depth: int
    files: tuple[ZooFile, ...]
    results: tuple[Published, ...]
    crop_size: tuple[int, int] | None = None   # training crop
    schedule: str = ""
    config: str = ""                     # the zoo's config the numbers belong to
    downloadable: bool = True            # False: no direct link (give the file with --from)
    base_size: int | None = None         # original release: tool/test.py's base_size (long side)
    test_crop: int | None = None         # original release: test_h = test_w (sliding window)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"catalogue entry {self.name!r}: unknown source {self.source!r}; "
                              f"one of {sorted(SOURCES)}")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", self.name):
            raise ConfigError(f"catalogue entry name {self.name!r}: use letters, digits and . _ + - only")
        if not self.files or not self.results:
            raise ConfigError(f"catalogue entry {self.name!r}: needs at least one file and one published result")
        if self.layout == "csailvision" and len(self.files) != 2:
            raise ConfigError(f"catalogue entry {self.name!r}: a CSAILVision model is two files (encoder, decoder)")

    # ------------------------------------------------------------------ derived facts
    @property
    def url(self) -> str:
        return self.files[0].url

    @property
    def miou(self) -> float:
        return self.results[0].miou

    @property
    def protocol(self) -> str:
        return self.results[0].protocol

    @property
    def layout(self) -> str:
        return SOURCES[self.source].layout

    @property
    def classes(self) -> list[str] | None:
        from ..models.zoo_datasets import ZOO_DATASETS
        names = ZOO_DATASETS.get(self.zoo_dataset, {}).get("classes")
        return list(names) if names and len(names) == self.num_classes else None

    @property
    def palette(self) -> list[list[int]] | None:
        from ..models.zoo_datasets import ZOO_DATASETS
        pal = ZOO_DATASETS.get(self.zoo_dataset, {}).get("palette")
        return [list(c) for c in pal] if pal and len(pal) == self.num_classes else None

    def release_test_settings(self) -> dict[str, Any] | None:
        """The original release's ``tool/test.py`` protocol as our ``test_settings`` (None for the
        other zoos: ``convert`` records theirs)."""
        if self.layout != "original-release" or not self.test_crop:
            return None
        return {"mode": "sliding", "base_size": self.base_size, "crop_size": [self.test_crop, self.test_crop],
                "stride_rate": 2 / 3, "scales": [1.0], "flip": True, "protocol": "release"}

    def to_dict(self) -> dict[str, Any]:
        """The entry for ``pspnet models --json``: every field (a valid catalogue entry again, see
        :mod:`pspnet.hub.schema`) plus facts derived from its source and first file and result."""
        src = SOURCES[self.source]
        single = len(self.files) == 1
        return {
            "name": self.name, "source": self.source, "source_title": src.title, "dataset": self.dataset,
            "zoo_dataset": self.zoo_dataset, "num_classes": self.num_classes, "backbone": self.backbone,
            "depth": self.depth, "url": self.url, "miou": self.miou, "protocol": self.protocol,
            "results": [{"miou": r.miou, "protocol": r.protocol} for r in self.results],
            "sha256": self.files[0].sha256 if single else None,
            "sha256_prefix": self.files[0].sha256_prefix if single else None,
            "checksum_published": src.checksum,
            "files": [{"url": f.url, "filename": f.filename, "sha256": f.sha256, "sha256_prefix": f.sha256_prefix}
                      for f in self.files],
            "layout": self.layout, "crop_size": list(self.crop_size) if self.crop_size else None,
            "schedule": self.schedule, "config": self.config, "downloadable": self.downloadable,
            "base_size": self.base_size, "test_crop": self.test_crop, "page": src.page, "notes": self.notes,
        }

    @classmethod
    def from_spec(cls, spec: EntrySpec) -> ModelEntry:
        """The entry an already checked :class:`~pspnet.hub.schema.EntrySpec` describes."""
        return cls(name=spec.name, source=spec.source, dataset=spec.dataset, zoo_dataset=spec.zoo_dataset,
                   num_classes=spec.num_classes, backbone=spec.backbone, depth=spec.depth,
                   files=tuple(ZooFile(f.url, f.sha256, f.sha256_prefix, f.filename) for f in spec.files),
                   results=tuple(Published(r.miou, r.protocol) for r in spec.results),
                   crop_size=spec.crop_size, schedule=spec.schedule, config=spec.config,
                   downloadable=spec.downloadable, base_size=spec.base_size, test_crop=spec.test_crop,
                   notes=spec.notes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "catalogue") -> ModelEntry:
        """An entry from JSON, checked against :class:`pspnet.hub.schema.EntrySpec` (its docstring lists
        the fields): a :class:`ConfigError` names ``where``, the entry and the field of a bad one."""
        return cls.from_spec(validate_entry(d, SOURCES, where))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}{what}: cannot read the catalogue file ({e})") from None


def _read(path: Path) -> tuple[dict[str, Source], list[EntrySpec]]:
    data = _read_json(path, "")
    if not isinstance(data, dict) or data.get("format") != 1 or set(data) != {"format", "sources", "models"}:
        raise ConfigError(f"{path}: expected a JSON object with keys format (1), sources and models")
    if not isinstance(data["sources"], list) or not isinstance(data["models"], list):
        raise ConfigError(f"{path}: sources and models must be JSON lists")
    sources: dict[str, Source] = {}
    for d in data["sources"]:
        s = validate_source(d, str(path))
        if s.key in sources:
            raise ConfigError(f"{path}: source {s.key!r} is listed twice")
        sources[s.key] = Source(**s.model_dump())
    specs = [validate_entry(d, sources, str(path)) for d in data["models"]]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"{path}: entry {spec.name!r}, field name: listed twice")
        seen.add(spec.name)
    return sources, specs


def read_catalogue_file(path: str | Path = CATALOGUE_FILE) -> tuple[dict[str, Source], tuple[ModelEntry, ...]]:
    """(sources, entries) of a catalogue file in the shipped format (:data:`CATALOGUE_FILE`), every
    source and entry checked against :mod:`pspnet.hub.schema` and every name unique. Entries of a
    source that is not shipped (:data:`SOURCES`) are refused."""
    sources, specs = _read(Path(path))
    return sources, tuple(ModelEntry.from_spec(s) for s in specs)


def _shipped() -> tuple[ModelEntry, ...]:
    sources, specs = _read(CATALOGUE_FILE)
    SOURCES.update(sources)
    return tuple(ModelEntry.from_spec(s) for s in specs)


SOURCES: dict[str, Source] = {}
"""The zoos of the shipped catalogue, by key: mmsegmentation, csailvision, semseg."""
CATALOGUE: tuple[ModelEntry, ...] = _shipped()
"""Every public PSPNet checkpoint pspnet knows (:data:`CATALOGUE_FILE`): mmsegmentation, CSAILVision,
the original release."""


def _extra_entries(path: str | Path) -> list[ModelEntry]:
    path = Path(path)
    data = _read_json(path, f" (from {CATALOGUE_ENV})")
    if not isinstance(data, list):
        raise ConfigError(f"{path} (from {CATALOGUE_ENV}): expected a JSON list of entries")
    return [ModelEntry.from_dict(d, str(path)) for d in data]


def catalogue(extra: Iterable[ModelEntry | Mapping[str, Any]] = ()) -> tuple[ModelEntry, ...]:
    """The built-in table, plus entries from the JSON file named by ``$PSPNET_CATALOGUE`` and ``extra``
    (later ones replace earlier ones of the same name)."""
    entries = {e.name: e for e in CATALOGUE}
    env = os.environ.get(CATALOGUE_ENV)
    more = _extra_entries(env) if env else []
    more += [e if isinstance(e, ModelEntry) else ModelEntry.from_dict(e) for e in extra]
    for e in more:
        entries[e.name] = e
    return tuple(entries.values())


def find_entry(name: str, entries: Iterable[ModelEntry] | None = None) -> ModelEntry | None:
    """The entry called ``name`` (exact, else case-insensitive), or None."""
    entries = list(entries if entries is not None else catalogue())
    for e in entries:
        if e.name == name:
            return e
    low = [e for e in entries if e.name.lower() == name.lower()]
    return low[0] if len(low) == 1 else None


def close_names(name: str, entries: Iterable[ModelEntry] | None = None, n: int = 3) -> list[str]:
    names = [e.name for e in (entries if entries is not None else catalogue())]
    return difflib.get_close_matches(name, names, n=n, cutoff=0.5)


def entry_for_url(url: str, entries: Iterable[ModelEntry] | None = None) -> ModelEntry | None:
    """The entry with a file at ``url`` (a CSAILVision encoder or decoder URL gives the pair), or None."""
    for e in entries if entries is not None else catalogue():
        if any(f.url == url for f in e.files):
            return e
    return None
