"""The public PSPNet checkpoints, one typed table (``pspnet models``).

Like torchvision's ``WeightsEnum``, an entry keeps together what belongs together: the file(s) and
their checksums, the dataset and its classes, the published mIoU and the test protocol behind it,
and how the file converts (the zoo's layout; :func:`pspnet.models.convert.convert` does the work).

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
``PSPNET_CATALOGUE`` (:func:`catalogue`); each item has the fields of :meth:`ModelEntry.from_dict`.
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
from ..models.zoo import MMSEG_SLIDE, MMSEG_TEST_SCALE

__all__ = ["ZooFile", "Published", "Source", "ModelEntry", "SOURCES", "CATALOGUE", "catalogue", "find_entry",
           "entry_for_url", "CATALOGUE_ENV"]

CATALOGUE_ENV = "PSPNET_CATALOGUE"
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


SOURCES: dict[str, Source] = {s.key: s for s in (
    Source("mmsegmentation", "OpenMMLab mmsegmentation",
           "https://github.com/open-mmlab/mmsegmentation/blob/main/configs/pspnet/README.md",
           "download.openmmlab.com", "mmsegmentation",
           "first 8 hex digits of the file's sha256, in its file name (tools/misc/publish_model.py)"),
    Source("csailvision", "CSAILVision semantic-segmentation-pytorch",
           "https://github.com/CSAILVision/semantic-segmentation-pytorch#performance",
           "sceneparsing.csail.mit.edu", "csailvision", "none published"),
    Source("semseg", "original release (hszhao/semseg)", "https://github.com/hszhao/semseg#performance",
           "drive.google.com", "original-release", "none published"),
)}


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
    records as its ``test_settings`` (so ``pspnet eval --weights NAME`` follows it by default)."""

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
        src = SOURCES[self.source]
        single = len(self.files) == 1
        return {
            "name": self.name, "source": self.source, "source_title": src.title, "dataset": self.dataset,
            "num_classes": self.num_classes, "backbone": self.backbone, "depth": self.depth,
            "url": self.url, "miou": self.miou, "protocol": self.protocol,
            "results": [{"miou": r.miou, "protocol": r.protocol} for r in self.results],
            "sha256": self.files[0].sha256 if single else None,
            "sha256_prefix": self.files[0].sha256_prefix if single else None,
            "checksum_published": src.checksum,
            "files": [{"url": f.url, "filename": f.filename, "sha256": f.sha256, "sha256_prefix": f.sha256_prefix}
                      for f in self.files],
            "layout": self.layout, "crop_size": list(self.crop_size) if self.crop_size else None,
            "schedule": self.schedule, "config": self.config, "downloadable": self.downloadable,
            "page": src.page, "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "catalogue") -> ModelEntry:
        """An entry from JSON: ``name``, ``source``, ``dataset``, ``num_classes``, ``backbone``, ``depth``,
        ``miou``, ``protocol`` and either ``url`` (+ ``sha256`` / ``sha256_prefix``) or ``files``
        (a list of ``{url, sha256, sha256_prefix}``); optional: ``zoo_dataset``, ``results``,
        ``crop_size``, ``schedule``, ``config``, ``downloadable``, ``base_size``, ``test_crop``, ``notes``."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: each entry must be a JSON object, got {type(d).__name__}")
        try:
            files = d.get("files") or [{"url": d["url"], "sha256": d.get("sha256"),
                                        "sha256_prefix": d.get("sha256_prefix")}]
            results = d.get("results") or [{"miou": d["miou"], "protocol": d["protocol"]}]
            return cls(name=d["name"], source=d["source"], dataset=d["dataset"],
                       zoo_dataset=d.get("zoo_dataset", ""), num_classes=int(d["num_classes"]),
                       backbone=d["backbone"], depth=int(d["depth"]),
                       files=tuple(ZooFile(f["url"], f.get("sha256"), f.get("sha256_prefix"), f.get("filename"))
                                   for f in files),
                       results=tuple(Published(float(r["miou"]), str(r["protocol"])) for r in results),
                       crop_size=tuple(d["crop_size"]) if d.get("crop_size") else None,
                       schedule=d.get("schedule", ""), config=d.get("config", ""),
                       downloadable=bool(d.get("downloadable", True)), base_size=d.get("base_size"),
                       test_crop=d.get("test_crop"), notes=d.get("notes", ""))
        except KeyError as e:
            raise ConfigError(f"{where}: entry {d.get('name', '?')!r} lacks field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: entry {d.get('name', '?')!r}: {e}") from None


# ---------------------------------------------------------------------------------- mmsegmentation
_MMSEG_BASE = "https://download.openmmlab.com/mmsegmentation/v0.5/pspnet/"
_MMSEG_MS = "scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 + flip"
# README section -> (dataset as the README names it, ZOO_DATASETS key, classes)
_MMSEG_DATASETS = {
    "cityscapes": ("Cityscapes", "CityscapesDataset", 19),
    "ade20k": ("ADE20K", "ADE20KDataset", 150),
    "voc12aug": ("Pascal VOC 2012 + Aug", "PascalVOCDataset", 21),
    "pascal_context": ("Pascal Context", "PascalContextDataset", 60),
    "pascal_context_59": ("Pascal Context 59", "PascalContextDataset59", 59),
    "coco-stuff10k": ("COCO-Stuff 10k", "COCOStuffDataset", 171),
    "coco-stuff164k": ("COCO-Stuff 164k", "COCOStuffDataset", 171),
    "loveda": ("LoveDA", "LoveDADataset", 7),
    "potsdam": ("Potsdam", "PotsdamDataset", 6),
    "vaihingen": ("Vaihingen", "ISPRSDataset", 6),
    "isaid": ("iSAID", "iSAIDDataset", 16),
}

# (README section, config name, backbone, crop, iterations, mIoU, mIoU(ms+flip) or None, model path
# under _MMSEG_BASE), in the README's order.
_MMSEG_TABLE = (
    ("cityscapes", "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024", "R-50-D8", "512x1024", 40000, 77.85, 79.18,
     "pspnet_r50-d8_512x1024_40k_cityscapes/pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth"),
    ("cityscapes", "pspnet_r101-d8_4xb2-40k_cityscapes-512x1024", "R-101-D8", "512x1024", 40000, 78.34, 79.74,
     "pspnet_r101-d8_512x1024_40k_cityscapes/pspnet_r101-d8_512x1024_40k_cityscapes_20200604_232751-467e7cf4.pth"),
    ("cityscapes", "pspnet_r50-d8_4xb2-40k_cityscapes-769x769", "R-50-D8", "769x769", 40000, 78.26, 79.88,
     "pspnet_r50-d8_769x769_40k_cityscapes/pspnet_r50-d8_769x769_40k_cityscapes_20200606_112725-86638686.pth"),
    ("cityscapes", "pspnet_r101-d8_4xb2-40k_cityscapes-769x769", "R-101-D8", "769x769", 40000, 79.08, 80.28,
     "pspnet_r101-d8_769x769_40k_cityscapes/pspnet_r101-d8_769x769_40k_cityscapes_20200606_112753-61c6f5be.pth"),
    ("cityscapes", "pspnet_r18-d8_4xb2-80k_cityscapes-512x1024", "R-18-D8", "512x1024", 80000, 74.87, 76.04,
     "pspnet_r18-d8_512x1024_80k_cityscapes/pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth"),
    ("cityscapes", "pspnet_r50-d8_4xb2-80k_cityscapes-512x1024", "R-50-D8", "512x1024", 80000, 78.55, 79.79,
     "pspnet_r50-d8_512x1024_80k_cityscapes/pspnet_r50-d8_512x1024_80k_cityscapes_20200606_112131-2376f12b.pth"),
    ("cityscapes", "pspnet_r50-d8-rsb_4xb2-adamw-80k_cityscapes-512x1024", "R-50b-D8 rsb", "512x1024", 80000, 78.47,
     79.45, "pspnet_r50-d8_512x1024_80k_cityscapes/"
            "pspnet_r50-d8_rsb-pretrain_512x1024_adamw_80k_cityscapes_20220315_123238-588c30be.pth"),
    ("cityscapes", "pspnet_r101-d8_4xb2-80k_cityscapes-512x1024", "R-101-D8", "512x1024", 80000, 79.76, 81.01,
     "pspnet_r101-d8_512x1024_80k_cityscapes/pspnet_r101-d8_512x1024_80k_cityscapes_20200606_112211-e1e1100f.pth"),
    ("cityscapes", "pspnet_r101-d8_4xb2-amp-80k_cityscapes-512x1024", "R-101-D8 (FP16 training)", "512x1024", 80000,
     79.46, None, "pspnet_r101-d8_fp16_512x1024_80k_cityscapes/"
                  "pspnet_r101-d8_fp16_512x1024_80k_cityscapes_20200717_230919-a0875e5c.pth"),
    ("cityscapes", "pspnet_r18-d8_4xb2-80k_cityscapes-769x769", "R-18-D8", "769x769", 80000, 75.90, 77.86,
     "pspnet_r18-d8_769x769_80k_cityscapes/pspnet_r18-d8_769x769_80k_cityscapes_20201225_021458-3deefc62.pth"),
    ("cityscapes", "pspnet_r50-d8_4xb2-80k_cityscapes-769x769", "R-50-D8", "769x769", 80000, 79.59, 80.69,
     "pspnet_r50-d8_769x769_80k_cityscapes/pspnet_r50-d8_769x769_80k_cityscapes_20200606_210121-5ccf03dd.pth"),
    ("cityscapes", "pspnet_r101-d8_4xb2-80k_cityscapes-769x769", "R-101-D8", "769x769", 80000, 79.77, 81.06,
     "pspnet_r101-d8_769x769_80k_cityscapes/pspnet_r101-d8_769x769_80k_cityscapes_20200606_225055-dba412fa.pth"),
    ("cityscapes", "pspnet_r18b-d8_4xb2-80k_cityscapes-512x1024", "R-18b-D8", "512x1024", 80000, 74.23, 75.79,
     "pspnet_r18b-d8_512x1024_80k_cityscapes/pspnet_r18b-d8_512x1024_80k_cityscapes_20201226_063116-26928a60.pth"),
    ("cityscapes", "pspnet_r50b-d8_4xb2-80k_cityscapes-512x1024", "R-50b-D8", "512x1024", 80000, 78.22, 79.46,
     "pspnet_r50b-d8_512x1024_80k_cityscapes/pspnet_r50b-d8_512x1024_80k_cityscapes_20201225_094315-6344287a.pth"),
    ("cityscapes", "pspnet_r101b-d8_4xb2-80k_cityscapes-512x1024", "R-101b-D8", "512x1024", 80000, 79.69, 80.79,
     "pspnet_r101b-d8_512x1024_80k_cityscapes/pspnet_r101b-d8_512x1024_80k_cityscapes_20201226_170012-3a4d38ab.pth"),
    ("cityscapes", "pspnet_r18b-d8_4xb2-80k_cityscapes-769x769", "R-18b-D8", "769x769", 80000, 74.92, 76.90,
     "pspnet_r18b-d8_769x769_80k_cityscapes/pspnet_r18b-d8_769x769_80k_cityscapes_20201226_080942-bf98d186.pth"),
    ("cityscapes", "pspnet_r50b-d8_4xb2-80k_cityscapes-769x769", "R-50b-D8", "769x769", 80000, 78.50, 79.96,
     "pspnet_r50b-d8_769x769_80k_cityscapes/pspnet_r50b-d8_769x769_80k_cityscapes_20201225_094316-4c643cf6.pth"),
    ("cityscapes", "pspnet_r101b-d8_4xb2-80k_cityscapes-769x769", "R-101b-D8", "769x769", 80000, 78.87, 80.04,
     "pspnet_r101b-d8_769x769_80k_cityscapes/pspnet_r101b-d8_769x769_80k_cityscapes_20201226_171823-f0e7c293.pth"),
    ("ade20k", "pspnet_r50-d8_4xb4-80k_ade20k-512x512", "R-50-D8", "512x512", 80000, 41.13, 41.94,
     "pspnet_r50-d8_512x512_80k_ade20k/pspnet_r50-d8_512x512_80k_ade20k_20200615_014128-15a8b914.pth"),
    ("ade20k", "pspnet_r101-d8_4xb4-80k_ade20k-512x512", "R-101-D8", "512x512", 80000, 43.57, 44.35,
     "pspnet_r101-d8_512x512_80k_ade20k/pspnet_r101-d8_512x512_80k_ade20k_20200614_031423-b6e782f0.pth"),
    ("ade20k", "pspnet_r50-d8_4xb4-160k_ade20k-512x512", "R-50-D8", "512x512", 160000, 42.48, 43.44,
     "pspnet_r50-d8_512x512_160k_ade20k/pspnet_r50-d8_512x512_160k_ade20k_20200615_184358-1890b0bd.pth"),
    ("ade20k", "pspnet_r101-d8_4xb4-160k_ade20k-512x512", "R-101-D8", "512x512", 160000, 44.39, 45.35,
     "pspnet_r101-d8_512x512_160k_ade20k/pspnet_r101-d8_512x512_160k_ade20k_20200615_100650-967c316f.pth"),
    ("voc12aug", "pspnet_r50-d8_4xb4-20k_voc12aug-512x512", "R-50-D8", "512x512", 20000, 76.78, 77.61,
     "pspnet_r50-d8_512x512_20k_voc12aug/pspnet_r50-d8_512x512_20k_voc12aug_20200617_101958-ed5dfbd9.pth"),
    ("voc12aug", "pspnet_r101-d8_4xb4-20k_voc12aug-512x512", "R-101-D8", "512x512", 20000, 78.47, 79.25,
     "pspnet_r101-d8_512x512_20k_voc12aug/pspnet_r101-d8_512x512_20k_voc12aug_20200617_102003-4aef3c9a.pth"),
    ("voc12aug", "pspnet_r50-d8_4xb4-40k_voc12aug-512x512", "R-50-D8", "512x512", 40000, 77.29, 78.48,
     "pspnet_r50-d8_512x512_40k_voc12aug/pspnet_r50-d8_512x512_40k_voc12aug_20200613_161222-ae9c1b8c.pth"),
    ("voc12aug", "pspnet_r101-d8_4xb4-40k_voc12aug-512x512", "R-101-D8", "512x512", 40000, 78.52, 79.57,
     "pspnet_r101-d8_512x512_40k_voc12aug/pspnet_r101-d8_512x512_40k_voc12aug_20200613_161222-bc933b18.pth"),
    ("pascal_context", "pspnet_r101-d8_4xb4-40k_pascal-context-480x480", "R-101-D8", "480x480", 40000, 46.60, 47.78,
     "pspnet_r101-d8_480x480_40k_pascal_context/pspnet_r101-d8_480x480_40k_pascal_context_20200911_211210-bf0f5d7c.pth"),
    ("pascal_context", "pspnet_r101-d8_4xb4-80k_pascal-context-480x480", "R-101-D8", "480x480", 80000, 46.03, 47.15,
     "pspnet_r101-d8_480x480_80k_pascal_context/pspnet_r101-d8_480x480_80k_pascal_context_20200911_190530-c86d6233.pth"),
    ("pascal_context_59", "pspnet_r101-d8_4xb4-40k_pascal-context-59-480x480", "R-101-D8", "480x480", 40000, 52.02,
     53.54, "pspnet_r101-d8_480x480_40k_pascal_context_59/"
            "pspnet_r101-d8_480x480_40k_pascal_context_59_20210416_114524-86d44cd4.pth"),
    ("pascal_context_59", "pspnet_r101-d8_4xb4-80k_pascal-context-59-480x480", "R-101-D8", "480x480", 80000, 52.47,
     53.99, "pspnet_r101-d8_480x480_80k_pascal_context_59/"
            "pspnet_r101-d8_480x480_80k_pascal_context_59_20210416_114418-fa6caaa2.pth"),
    ("coco-stuff10k", "pspnet_r50-d8_4xb4-20k_coco-stuff10k-512x512", "R-50-D8", "512x512", 20000, 35.69, 36.62,
     "pspnet_r50-d8_512x512_4x4_20k_coco-stuff10k/pspnet_r50-d8_512x512_4x4_20k_coco-stuff10k_20210820_203258-b88df27f.pth"),
    ("coco-stuff10k", "pspnet_r101-d8_4xb4-20k_coco-stuff10k-512x512", "R-101-D8", "512x512", 20000, 37.26, 38.52,
     "pspnet_r101-d8_512x512_4x4_20k_coco-stuff10k/"
     "pspnet_r101-d8_512x512_4x4_20k_coco-stuff10k_20210820_232135-76aae482.pth"),
    ("coco-stuff10k", "pspnet_r50-d8_4xb4-40k_coco-stuff10k-512x512", "R-50-D8", "512x512", 40000, 36.33, 37.24,
     "pspnet_r50-d8_512x512_4x4_40k_coco-stuff10k/pspnet_r50-d8_512x512_4x4_40k_coco-stuff10k_20210821_030857-92e2902b.pth"),
    ("coco-stuff10k", "pspnet_r101-d8_4xb4-40k_coco-stuff10k-512x512", "R-101-D8", "512x512", 40000, 37.76, 38.86,
     "pspnet_r101-d8_512x512_4x4_40k_coco-stuff10k/"
     "pspnet_r101-d8_512x512_4x4_40k_coco-stuff10k_20210821_014022-831aec95.pth"),
    ("coco-stuff164k", "pspnet_r50-d8_4xb4-80k_coco-stuff164k-512x512", "R-50-D8", "512x512", 80000, 38.80, 39.19,
     "pspnet_r50-d8_512x512_4x4_80k_coco-stuff164k/"
     "pspnet_r50-d8_512x512_4x4_80k_coco-stuff164k_20210707_152034-0e41b2db.pth"),
    ("coco-stuff164k", "pspnet_r101-d8_4xb4-80k_coco-stuff164k-512x512", "R-101-D8", "512x512", 80000, 40.34, 40.79,
     "pspnet_r101-d8_512x512_4x4_80k_coco-stuff164k/"
     "pspnet_r101-d8_512x512_4x4_80k_coco-stuff164k_20210707_152034-7eb41789.pth"),
    ("coco-stuff164k", "pspnet_r50-d8_4xb4-160k_coco-stuff164k-512x512", "R-50-D8", "512x512", 160000, 39.64, 39.97,
     "pspnet_r50-d8_512x512_4x4_160k_coco-stuff164k/"
     "pspnet_r50-d8_512x512_4x4_160k_coco-stuff164k_20210707_152004-51276a57.pth"),
    ("coco-stuff164k", "pspnet_r101-d8_4xb4-160k_coco-stuff164k-512x512", "R-101-D8", "512x512", 160000, 41.28, 41.66,
     "pspnet_r101-d8_512x512_4x4_160k_coco-stuff164k/"
     "pspnet_r101-d8_512x512_4x4_160k_coco-stuff164k_20210707_152004-4af9621b.pth"),
    ("coco-stuff164k", "pspnet_r50-d8_4xb4-320k_coco-stuff164k-512x512", "R-50-D8", "512x512", 320000, 40.53, 40.75,
     "pspnet_r50-d8_512x512_4x4_320k_coco-stuff164k/"
     "pspnet_r50-d8_512x512_4x4_320k_coco-stuff164k_20210707_152004-be9610cc.pth"),
    ("coco-stuff164k", "pspnet_r101-d8_4xb4-320k_coco-stuff164k-512x512", "R-101-D8", "512x512", 320000, 41.95, 42.42,
     "pspnet_r101-d8_512x512_4x4_320k_coco-stuff164k/"
     "pspnet_r101-d8_512x512_4x4_320k_coco-stuff164k_20210707_152004-72220c60.pth"),
    ("loveda", "pspnet_r18-d8_4xb4-80k_loveda-512x512", "R-18-D8", "512x512", 80000, 48.62, 47.57,
     "pspnet_r18-d8_512x512_80k_loveda/pspnet_r18-d8_512x512_80k_loveda_20211105_052100-b97697f1.pth"),
    ("loveda", "pspnet_r50-d8_4xb4-80k_loveda-512x512", "R-50-D8", "512x512", 80000, 50.46, 50.19,
     "pspnet_r50-d8_512x512_80k_loveda/pspnet_r50-d8_512x512_80k_loveda_20211104_155728-88610f9f.pth"),
    ("loveda", "pspnet_r101-d8_4xb4-80k_loveda-512x512", "R-101-D8", "512x512", 80000, 51.86, 51.34,
     "pspnet_r101-d8_512x512_80k_loveda/pspnet_r101-d8_512x512_80k_loveda_20211104_153212-1c06c6a8.pth"),
    ("potsdam", "pspnet_r18-d8_4xb4-80k_potsdam-512x512", "R-18-D8", "512x512", 80000, 77.09, 78.30,
     "pspnet_r18-d8_4x4_512x512_80k_potsdam/pspnet_r18-d8_4x4_512x512_80k_potsdam_20211220_125612-7cd046e1.pth"),
    ("potsdam", "pspnet_r50-d8_4xb4-80k_potsdam-512x512", "R-50-D8", "512x512", 80000, 78.12, 78.98,
     "pspnet_r50-d8_4x4_512x512_80k_potsdam/pspnet_r50-d8_4x4_512x512_80k_potsdam_20211219_043541-2dd5fe67.pth"),
    ("potsdam", "pspnet_r101-d8_4xb4-80k_potsdam-512x512", "R-101-D8", "512x512", 80000, 78.62, 79.47,
     "pspnet_r101-d8_4x4_512x512_80k_potsdam/pspnet_r101-d8_4x4_512x512_80k_potsdam_20211220_125612-aed036c4.pth"),
    ("vaihingen", "pspnet_r18-d8_4xb4-80k_vaihingen-512x512", "R-18-D8", "512x512", 80000, 71.46, 73.36,
     "pspnet_r18-d8_4x4_512x512_80k_vaihingen/pspnet_r18-d8_4x4_512x512_80k_vaihingen_20211228_160355-52a8a6f6.pth"),
    ("vaihingen", "pspnet_r50-d8_4xb4-80k_vaihingen-512x512", "R-50-D8", "512x512", 80000, 72.36, 73.75,
     "pspnet_r50-d8_4x4_512x512_80k_vaihingen/pspnet_r50-d8_4x4_512x512_80k_vaihingen_20211228_160355-382f8f5b.pth"),
    ("vaihingen", "pspnet_r101-d8_4xb4-80k_vaihingen-512x512", "R-101-D8", "512x512", 80000, 72.61, 74.18,
     "pspnet_r101-d8_4x4_512x512_80k_vaihingen/"
     "pspnet_r101-d8_4x4_512x512_80k_vaihingen_20211231_230806-8eba0a09.pth"),
    ("isaid", "pspnet_r18-d8_4xb4-80k_isaid-896x896", "R-18-D8", "896x896", 80000, 60.22, 61.25,
     "pspnet_r18-d8_4x4_896x896_80k_isaid/pspnet_r18-d8_4x4_896x896_80k_isaid_20220110_180526-e84c0b6a.pth"),
    ("isaid", "pspnet_r50-d8_4xb4-80k_isaid-896x896", "R-50-D8", "896x896", 80000, 65.36, 66.48,
     "pspnet_r50-d8_4x4_896x896_80k_isaid/pspnet_r50-d8_4x4_896x896_80k_isaid_20220110_180629-1f21dc32.pth"),
)


def _mmseg_protocol(zoo_dataset: str, crop: str) -> str:
    """How mmsegmentation tested: its dataset config's keep-ratio Resize and the model's test_cfg
    (the same tables :mod:`pspnet.models.zoo` records in converted files)."""
    if crop == "769x769":
        scale, mode = (2049, 1025), "sliding 769x769 windows, stride 513"
    else:
        scale = MMSEG_TEST_SCALE[zoo_dataset]
        slide = MMSEG_SLIDE.get(zoo_dataset)
        mode = (f"sliding {slide[0][0]}x{slide[0][1]} windows, stride {slide[1][0]}" if slide else "whole image")
    return f"{mode}, Resize(scale={scale}, keep_ratio=True)"


def _mmseg_entries() -> list[ModelEntry]:
    out = []
    for section, config, backbone, crop, iters, miou, ms, path in _MMSEG_TABLE:
        dataset, zoo_ds, n = _MMSEG_DATASETS[section]
        prefix = re.search(r"-([0-9a-f]{8})\.pth$", path).group(1)
        how = _mmseg_protocol(zoo_ds, crop)
        results = [Published(miou, f"single scale, {how}")]
        if ms is not None:
            results.append(Published(ms, f"{_MMSEG_MS}, {how}"))
        h, w = (int(v) for v in crop.split("x"))
        out.append(ModelEntry(
            name=f"mmseg-{config}", source="mmsegmentation", dataset=dataset, zoo_dataset=zoo_ds, num_classes=n,
            backbone=backbone, depth=int(re.match(r"R-(\d+)", backbone).group(1)),
            files=(ZooFile(_MMSEG_BASE + path, sha256_prefix=prefix),), results=tuple(results),
            crop_size=(h, w), schedule=f"{iters // 1000}k iterations", config=f"configs/pspnet/{config}.py",
            notes="ResNetV1b (7x7 stem)" if "b-D8" in backbone else ""))
    return out


# ---------------------------------------------------------------------------------- CSAILVision
_CSAIL_BASE = "http://sceneparsing.csail.mit.edu/model/pytorch/"
_CSAIL_MS = ("multi-scale: short side 300, 375, 450, 525, 600 (long side <= 1000, multiple of 8), softmax "
             "averaged, no flip (eval_multipro.py, the config's imgSizes)")
_CSAIL_SS = "single scale (README 'MultiScale Testing: No'; the size is not stated)"
# (config, backbone, depth, epoch, mIoU multi-scale, mIoU single scale): README "Performance"
_CSAIL_TABLE = (
    ("ade20k-resnet18dilated-ppm_deepsup", "ResNet18dilated + PPM_deepsup", 18, 20, 38.81, 38.00),
    ("ade20k-resnet50dilated-ppm_deepsup", "ResNet50dilated + PPM_deepsup", 50, 20, 42.14, 41.26),
    ("ade20k-resnet101dilated-ppm_deepsup", "ResNet101dilated + PPM_deepsup", 101, 25, 42.53, 42.19),
)


def _csail_entries() -> list[ModelEntry]:
    return [ModelEntry(
        name=f"csail-{config}", source="csailvision", dataset="ADE20K",
        zoo_dataset="ADE20KDataset", num_classes=150, backbone=backbone, depth=depth,
        files=(ZooFile(f"{_CSAIL_BASE}{config}/encoder_epoch_{epoch}.pth"),
               ZooFile(f"{_CSAIL_BASE}{config}/decoder_epoch_{epoch}.pth")),
        results=(Published(ms, _CSAIL_MS), Published(ss, _CSAIL_SS)), schedule=f"{epoch} epochs",
        config=f"config/{config}.yaml") for config, backbone, depth, epoch, ms, ss in _CSAIL_TABLE]


# ---------------------------------------------------------------------------------- original release
_SEMSEG_DRIVE = "https://drive.google.com/open?id=15wx9vOM0euyizq-M1uINgN0_wjVRf9J3"
# (dataset dir, dataset, ZOO_DATASETS key, classes, depth, epochs, base_size, test_h, ss, ms): README
# "Performance" (x100; trained on ADE20K train / VOC train_aug / Cityscapes fine_train, tested on val) and
# config/<dir>/<dir>_pspnet<depth>.yaml
_SEMSEG_TABLE = (
    ("ade20k", "ADE20K", "ADE20KDataset", 150, 50, 100, 512, 473, 41.89, 42.84),
    ("ade20k", "ADE20K", "ADE20KDataset", 150, 101, 100, 512, 473, 43.10, 44.15),
    ("voc2012", "PASCAL VOC 2012 + aug", "PascalVOCDataset", 21, 50, 50, 512, 473, 77.05, 78.02),
    ("voc2012", "PASCAL VOC 2012 + aug", "PascalVOCDataset", 21, 101, 50, 512, 473, 79.07, 79.63),
    ("cityscapes", "Cityscapes", "CityscapesDataset", 19, 50, 200, 2048, 713, 77.30, 78.38),
    ("cityscapes", "Cityscapes", "CityscapesDataset", 19, 101, 200, 2048, 713, 78.63, 79.29),
)


def _semseg_entries() -> list[ModelEntry]:
    out = []
    for folder, dataset, zoo_ds, n, depth, epochs, base, crop, ss, ms in _SEMSEG_TABLE:
        how = (f"sliding {crop}x{crop} windows (stride 2/3), flip averaged in each window, long side "
               f"{base} (tool/test.py)")
        model_path = f"exp/{folder}/pspnet{depth}/model/train_epoch_{epochs}.pth"
        out.append(ModelEntry(
            name=f"semseg-{folder}-pspnet{depth}", source="semseg", dataset=dataset, zoo_dataset=zoo_ds,
            num_classes=n, backbone=f"ResNet-{depth} (deep stem)", depth=depth,
            files=(ZooFile(_SEMSEG_DRIVE, filename=Path(model_path).name),),
            results=(Published(ss, f"single scale [1.0], {how}"),
                     Published(ms, f"scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, {how}")),
            crop_size=(crop, crop), schedule=f"{epochs} epochs", config=f"config/{folder}/{folder}_pspnet{depth}.yaml",
            downloadable=False, base_size=base, test_crop=crop,
            notes=f"in the shared Google Drive folder (no direct link): {model_path} of the config"))
    return out


CATALOGUE: tuple[ModelEntry, ...] = tuple(_mmseg_entries() + _csail_entries() + _semseg_entries())
"""Every public PSPNet checkpoint pspnet knows: mmsegmentation, CSAILVision, the original release."""


def _extra_entries(path: str | Path) -> list[ModelEntry]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} (from {CATALOGUE_ENV}): cannot read the catalogue file ({e})") from None
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
