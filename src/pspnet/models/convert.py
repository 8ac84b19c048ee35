"""``pspnet convert``: any supported weight file (ours, the original release, an ImageNet backbone,
an mmsegmentation or CSAILVision checkpoint) into our safetensors format, the model config read
from the file's metadata, its tensors or its zoo's conventions (:mod:`pspnet.models.zoo`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from ..labels import default_palette
from .pspnet import PSPNet, PSPNetConfig
from .weights import load_into, read_state_dict, save_weights, to_pspnet_keys
from .zoo import from_zoo
from .zoo_layouts import check_known_layout

__all__ = ["convert", "infer_config"]


def infer_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a state dict tells about the model it came from: depth, stem, classes, head widths.

    Works on the original release, ImageNet backbones (either stem) and our own files; a field that
    cannot be read from the tensors (output stride, PPM bins) is left out.
    """
    from .resnet import RESNET_LAYERS, Bottleneck
    state = to_pspnet_keys(state)
    out: dict[str, Any] = {}
    stem = state.get("layer0.0.weight")
    if stem is not None and stem.dim() == 4:
        out["deep_stem"] = "layer0.6.weight" in state or stem.shape[-1] == 3
    bottleneck = "layer1.0.conv3.weight" in state
    counts = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    for depth, (block, blocks) in RESNET_LAYERS.items():
        if tuple(blocks) == counts and (block is Bottleneck) == bottleneck:
            out["depth"] = depth
    if "cls.4.weight" in state:
        out["num_classes"] = int(state["cls.4.weight"].shape[0])
        out["head_channels"] = int(state["cls.4.weight"].shape[1])
        out["aux"] = "aux.4.weight" in state
        if out["aux"]:
            out["aux_channels"] = int(state["aux.4.weight"].shape[1])
    return out


CARRIED_METADATA = ("test_settings", "eval_base_size", "trained_on", "recipe")
"""Metadata of our own files that a conversion keeps. ``int8_agreement`` is not among them: it was
measured on the source's tensors, and new storage changes them."""


def convert(src: str | Path | list, dst: str | Path, *, class_names=None, palette=None,
            dtype: torch.dtype | None = None, storage: str | None = None, include_aux: bool = True,
            **overrides: Any) -> dict[str, Any]:
    """Any supported weight file -> our safetensors format (``pspnet convert``).

    The model config is taken from the file's metadata (our files and checkpoints) or read from its
    tensors (:func:`infer_config`); ``overrides`` (``depth``, ``num_classes``, ``deep_stem``,
    ``output_stride``, ...) win over both. A full model (it has ``cls.*``) must fit exactly, apart
    from classifiers of a different class count, which are re-initialised; an ImageNet backbone fills
    ``layer0..4`` and the PPM and heads start from their initialisation. Returns a report with the
    config and the loaded / new / re-initialised keys.

    ``src`` may also be an mmsegmentation PSPNet checkpoint, or a list of two files, a CSAILVision
    encoder and decoder (:mod:`pspnet.models.zoo`); their conventions (stem widths, contracted
    dilation, head widths, align_corners), class names, palette, preprocessing and test protocol
    (``test_settings``) go into the written file. A file of no known layout is refused with a list
    of the key prefixes that were recognised and those that were not.

    From one of our own files the test settings and training record travel along
    (:data:`CARRIED_METADATA`); ``storage="int8"`` and ``include_aux=False`` make the small
    inference file the packaged model is (:func:`~pspnet.models.weights.save_weights`).
    """
    paths = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    if not 1 <= len(paths) <= 2:
        raise WeightsError("convert takes one checkpoint, or a CSAILVision encoder + decoder pair; "
                           f"got {len(paths)} files")
    src = paths[0] if len(paths) == 1 else " + ".join(map(str, paths))
    loaded = [read_state_dict(p) for p in paths]
    zoo = from_zoo(paths, [st for st, _ in loaded])
    if zoo is not None:
        state, meta, zoo_cfg = zoo.state, {}, zoo.config
    else:
        state, meta = loaded[0]
        check_known_layout(str(src), state)
        state, zoo_cfg = to_pspnet_keys(state), {}
    inferred = infer_config(state)
    base = dict(meta["config"]) if isinstance(meta.get("config"), dict) else {}
    cfg = {**inferred, **base, **zoo_cfg, **{k: v for k, v in overrides.items() if v is not None}}
    full_model = any(k.startswith("cls.") for k in state)
    if "num_classes" not in cfg:
        raise WeightsError(f"{src}: the file has no classifier (an ImageNet backbone?); give the number of "
                           f"classes of the model to build (--num-classes K)")
    if "depth" not in cfg:
        raise WeightsError(f"{src}: cannot tell the ResNet depth from the tensors; give --depth")
    try:
        config = PSPNetConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{src}: cannot build the model: {e}") from None
    model = PSPNet(config)
    report = load_into(model, state, source=str(src), strict=full_model, backbone_only=not full_model,
                       reinit_classifier=overrides.get("num_classes") is not None)
    if class_names is None and isinstance(meta.get("class_names"), list) \
            and len(meta["class_names"]) == config.num_classes:
        class_names = meta["class_names"]
    if zoo is not None and class_names is None and zoo.class_names and len(zoo.class_names) == config.num_classes:
        class_names = zoo.class_names
    if zoo is not None and palette is None and zoo.palette and len(zoo.palette) == config.num_classes:
        palette = zoo.palette
    if class_names is not None and len(class_names) != config.num_classes:
        raise WeightsError(f"{len(class_names)} class names given for a model with {config.num_classes} classes")
    if palette is None and isinstance(meta.get("palette"), list) and len(meta["palette"]) == config.num_classes:
        palette = meta["palette"]
    if palette is None:
        palette = default_palette(config.num_classes)
    kind = (zoo.kind if zoo is not None else "pspnet" if meta.get("config") else "original-release" if full_model
            else "imagenet-deep-stem" if config.deep_stem else "imagenet-torchvision")
    carried = {k: meta[k] for k in CARRIED_METADATA if k in meta}
    save_weights(model, dst, class_names=class_names, palette=palette, dtype=dtype, storage=storage,
                 include_aux=include_aux,
                 extra={**carried, "converted_from": " + ".join(Path(p).name for p in paths), "source_kind": kind,
                        **(zoo.meta if zoo is not None else {})})
    return {"config": config.to_dict(), "source_kind": kind, "inferred": inferred,
            "notes": zoo.notes if zoo is not None else [], **report}
