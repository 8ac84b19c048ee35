"""``pspnet models`` and ``pspnet download``: their parsers and handlers live with the catalogue
(:mod:`pspnet.hub.commands`); this registers them."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..hub.commands import add_hub_commands  # pspnet models, pspnet download
    add_hub_commands(sub)
