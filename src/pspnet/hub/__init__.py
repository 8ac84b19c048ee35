"""Public PSPNet checkpoints: the catalogue (``pspnet models``) and verified downloads (``pspnet download``).

``pspnet.hub`` uses :mod:`pspnet.models` (conversion) and :mod:`pspnet.errors` only. Names are
imported on first use, so that registering the subcommands (:mod:`pspnet.hub.commands`) does not
import torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "catalogue": ("CATALOGUE", "CATALOGUE_FILE", "SOURCES", "ModelEntry", "Published", "Source", "ZooFile", "catalogue",
                  "find_entry", "read_catalogue_file"),
    "download": ("ChecksumError", "CorruptDownloadError", "DownloadError", "DownloadResult", "HTMLResponseError",
                 "ManualDownloadRequired", "NotFoundError", "TruncatedDownloadError", "cached_weights_path",
                 "download", "fetch_file", "pspnet_home", "resolve_weights", "verify_file"),
}
__all__ = [n for names in _WHERE.values() for n in names]


def __getattr__(name: str):
    for module, names in _WHERE.items():
        if name in names:
            return getattr(importlib.import_module(f".{module}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
