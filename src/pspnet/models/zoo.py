"""Checkpoints of the other public PSPNet zoos, converted to ours (``pspnet convert``): the keys
(:mod:`pspnet.models.zoo_layouts`, which also describes each zoo's layout), the model config they
imply and the test protocol the zoo published its numbers with.

- **mmsegmentation**: its ResNets contract the dilation of a dilated stage's first block and never
  dilate a BasicBlock's second conv; ``decode_head.channels`` is both the PPM branch and bottleneck
  width. The test protocol is its dataset config's ``Resize(scale, keep_ratio=True)`` and the
  model's ``test_cfg`` (whole image or sliding windows).
- **CSAILVision semantic-segmentation-pytorch**: dilated encoders contract the first block's
  dilation; multi-scale testing over short sides 300..600, softmax averaged.

Both zoos upsample with ``align_corners=False`` (mmsegmentation's 769x769 Cityscapes models: True)
and normalise RGB images with the ImageNet mean/std x 255, as we do.

A checkpoint's ``meta`` is read for facts only: the config text stored in mmsegmentation
checkpoints is parsed as Python syntax (:func:`literal_config`), and only literals, ``dict(...)``
calls and names bound to those are evaluated; nothing in it runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from .weights import _load_pickle, strip_module_prefix

# layouts and key maps, re-exported here where they were first found
from .zoo_layouts import (
    CSAIL_BN_EXTRAS,
    LAYOUT_PATTERNS,
    check_known_layout,
    csail_to_pspnet_keys,
    is_csail_decoder,
    is_csail_encoder,
    is_mmseg,
    layout_report,
    mmseg_to_pspnet_keys,
)

__all__ = ["ZooCheckpoint", "from_zoo", "check_known_layout", "layout_report", "literal_config",
           "mmseg_to_pspnet_keys", "csail_to_pspnet_keys", "CSAIL_BN_EXTRAS", "LAYOUT_PATTERNS"]

IMAGENET_MEAN_255 = [123.675, 116.28, 103.53]
IMAGENET_STD_255 = [58.395, 57.12, 57.375]


# ------------------------------------------------------------------------------------ mmseg config text
class _NotLiteral(Exception):
    pass


def _literal(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_literal(e, env) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotLiteral
        return {_literal(k, env): _literal(v, env) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _literal(node.operand, env)
        if isinstance(v, (int, float)):
            return -v
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
            and not node.args and all(kw.arg for kw in node.keywords)):
        return {kw.arg: _literal(kw.value, env) for kw in node.keywords}
    raise _NotLiteral


def literal_config(text: str) -> dict[str, Any]:
    """Top-level ``name = <literal>`` assignments of an mmsegmentation config text, evaluated without
    running anything (literals, ``dict(...)`` and names bound earlier); the rest is skipped."""
    if not isinstance(text, str) or len(text) > 2_000_000:
        return {}
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return {}
    env: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                env[node.targets[0].id] = _literal(node.value, env)
            except (_NotLiteral, RecursionError, TypeError):
                pass
    return env


def _dig(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _walk_dicts(obj: Any):
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk_dicts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_dicts(v)


# ------------------------------------------------------------------------------------ protocols
MMSEG_TEST_SCALE = {  # test-time Resize(scale=..., keep_ratio=True) of mmsegmentation's dataset configs
    "CityscapesDataset": (2048, 1024), "ADE20KDataset": (2048, 512), "PascalVOCDataset": (2048, 512),
    "PascalContextDataset": (520, 520), "PascalContextDataset59": (520, 520), "COCOStuffDataset": (2048, 512),
    "LoveDADataset": (1024, 1024), "PotsdamDataset": (512, 512), "ISPRSDataset": (512, 512),
    "iSAIDDataset": (896, 896),
}
MMSEG_SLIDE = {"PascalContextDataset": ((480, 480), (320, 320)), "PascalContextDataset59": ((480, 480), (320, 320))}
MMSEG_BY_CLASSES = {19: "CityscapesDataset", 150: "ADE20KDataset", 21: "PascalVOCDataset", 60: "PascalContextDataset",
                    59: "PascalContextDataset59", 171: "COCOStuffDataset", 7: "LoveDADataset", 16: "iSAIDDataset",
                    6: "PotsdamDataset"}
# file-name fragments of mmsegmentation's published checkpoints -> dataset (most specific first)
MMSEG_BY_NAME = (("pascal_context_59", "PascalContextDataset59"), ("pascal-context-59", "PascalContextDataset59"),
                 ("pascal_context", "PascalContextDataset"), ("pascal-context", "PascalContextDataset"),
                 ("cityscapes", "CityscapesDataset"), ("ade20k", "ADE20KDataset"), ("voc12", "PascalVOCDataset"),
                 ("coco-stuff", "COCOStuffDataset"), ("coco_stuff", "COCOStuffDataset"), ("loveda", "LoveDADataset"),
                 ("potsdam", "PotsdamDataset"), ("vaihingen", "ISPRSDataset"), ("isaid", "iSAIDDataset"))
CSAIL_SHORT_SIDES = (300, 375, 450, 525, 600)


def _keep_ratio_settings(scale: Sequence[int]) -> tuple[int, dict[str, Any]]:
    """Our long-side ``base_size`` for mmsegmentation's ``Resize(scale, keep_ratio=True)`` (the image is
    scaled by min(long_max / long, short_max / short)): exact for square scales and for images of the
    scale's own aspect ratio (Cityscapes 2048x1024); for a short-side-bound scale such as (2048, 512)
    it is the long side of a 4:3 image, and ``test_resize`` keeps the exact rule."""
    long_max, short_max = max(scale), min(scale)
    rule = {"rule": "keep_ratio", "scale": [long_max, short_max]}
    if long_max == short_max:
        return long_max, {**rule, "exact_for": "every image (the long side becomes the scale)"}
    if long_max <= 2 * short_max:
        return long_max, {**rule, "exact_for": f"images of aspect ratio {long_max}:{short_max} or wider"}
    return round(short_max * 4 / 3), {**rule, "exact_for": f"4:3 images (base_size is their long side when the "
                                                           f"short side is {short_max})"}


def _test_settings(base_size: int | None, scales=(1.0,), mode: str = "whole", crop=None, stride=None,
                   flip: bool = False) -> dict[str, Any]:
    return {"base_size": base_size, "scales": [float(s) for s in scales], "flip": bool(flip), "mode": mode,
            "crop_size": [int(c) for c in crop] if crop else None,
            # unrounded: the sliding window's stride is ceil(crop * stride_rate), and 513/769 -> 513 exactly
            "stride_rate": (stride[0] / crop[0] if crop and stride else 2 / 3)}


# ------------------------------------------------------------------------------------ conversions
class ZooCheckpoint:
    """A zoo checkpoint mapped to our keys, with the config and metadata it implies."""

    def __init__(self, kind: str, state: dict[str, torch.Tensor], config: dict[str, Any], meta: dict[str, Any],
                 class_names=None, palette=None, notes: list[str] | None = None) -> None:
        self.kind, self.state, self.config, self.meta = kind, state, config, meta
        self.class_names, self.palette, self.notes = class_names, palette, notes or []


def _channels(state: Mapping[str, torch.Tensor], key: str) -> int | None:
    v = state.get(key)
    return int(v.shape[0]) if isinstance(v, torch.Tensor) and v.dim() >= 1 else None


def _common_head_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if "layer0.6.weight" in state:
        cfg["deep_stem"] = True
        cfg["stem_channels"] = [_channels(state, f"layer0.{i}.weight") for i in (0, 3, 6)]
    elif "layer0.0.weight" in state:
        cfg["deep_stem"] = False
        cfg["stem_channels"] = [_channels(state, "layer0.0.weight")]
    n_levels = len({k.split(".")[2] for k in state if k.startswith("ppm.features.")})
    if n_levels:
        cfg["ppm_channels"] = _channels(state, "ppm.features.0.1.weight")
        cfg["bins"] = [1, 2, 3, 6] if n_levels == 4 else None
    if "cls.0.weight" in state:
        cfg["head_channels"] = _channels(state, "cls.0.weight")
    if "cls.4.weight" in state:
        cfg["num_classes"] = _channels(state, "cls.4.weight")
    cfg["aux"] = "aux.4.weight" in state
    if cfg["aux"] and "aux.0.weight" in state:
        cfg["aux_channels"] = _channels(state, "aux.0.weight")
    return {k: v for k, v in cfg.items() if v is not None}


def _mmseg_meta(meta: Any) -> tuple[dict[str, Any], Any, Any]:
    """(config assignments, class names, palette) from an mmsegmentation checkpoint's ``meta``."""
    if not isinstance(meta, dict):
        return {}, None, None
    text = meta.get("config") if isinstance(meta.get("config"), str) else meta.get("cfg")
    env = literal_config(text) if isinstance(text, str) else {}
    ds = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    names = meta.get("CLASSES") or ds.get("classes")
    palette = meta.get("PALETTE") or ds.get("palette")
    return env, names, palette


def convert_mmseg(path: str | Path, state: Mapping[str, torch.Tensor], meta: Any) -> ZooCheckpoint:
    from .zoo_datasets import ZOO_DATASETS
    source = str(path)
    name = Path(path).name.lower()
    mapped, left = mmseg_to_pspnet_keys(state)
    if left or not any(k.startswith("cls.4.") for k in mapped) or not any(k.startswith("ppm.") for k in mapped):
        why = ("an mmsegmentation checkpoint, but not of a PSPNet (ResNet + PSPHead, FCNHead aux with one conv)"
               if left else "an mmsegmentation checkpoint without a PSPHead (no decode_head.psp_modules / conv_seg)")
        raise WeightsError(layout_report(source, strip_module_prefix(state), why))
    env, names, palette = _mmseg_meta(meta)
    model = env.get("model") if isinstance(env.get("model"), dict) else {}
    backbone, head = _dig(model, "backbone") or {}, _dig(model, "decode_head") or {}
    aux_head = _dig(model, "auxiliary_head")
    notes, cfg_from = [], "checkpoint meta" if model else "file name and tensors"
    cfg = _common_head_config(mapped)
    cfg["contract_dilation"] = bool(backbone.get("contract_dilation", True))
    cfg["basic_conv2_dilated"] = False
    if isinstance(head.get("pool_scales"), list):
        cfg["bins"] = [int(b) for b in head["pool_scales"]]
    elif "bins" not in cfg:
        levels = len({k.split(".")[2] for k in mapped if k.startswith("ppm.")})
        raise WeightsError(f"{source}: the PSPHead has {levels} pyramid levels and the checkpoint does not say "
                           "their bins; give --bins")
    dil, strides = backbone.get("dilations"), backbone.get("strides")
    if dil is not None or strides is not None:
        os_table = {((1, 1, 2, 4), (1, 2, 1, 1)): 8, ((1, 1, 1, 2), (1, 2, 2, 1)): 16}
        key = (tuple(dil or (1, 1, 2, 4)), tuple(strides or (1, 2, 1, 1)))
        if key not in os_table:
            raise WeightsError(f"{source}: backbone dilations {list(key[0])} / strides {list(key[1])} (output stride "
                               f"{8 * 2 ** (sum(s == 2 for s in key[1]) - 1)}) are not supported; pspnet builds "
                               f"output stride 8 (dilations 1,1,2,4) or 16 (1,1,1,2)")
        cfg["output_stride"] = os_table[key]
    elif re.search(r"[-_]d32[-_]", name):
        raise WeightsError(f"{source}: the file name says output stride 32 (d32); pspnet builds output stride 8 or 16")
    else:
        cfg["output_stride"] = 8
    if isinstance(head.get("align_corners"), bool):
        cfg["align_corners"] = head["align_corners"]
    else:
        cfg["align_corners"] = "769x769" in name
        if "769x769" in name:
            notes.append("align_corners=True from the file name (769x769 models)")
    if isinstance(aux_head, dict) and isinstance(aux_head.get("align_corners"), bool) \
            and aux_head["align_corners"] != cfg["align_corners"]:
        notes.append("the auxiliary head's align_corners differs from the decode head's; ours follows the decode head")
    # dataset, class names, palette
    dataset = env.get("dataset_type") if isinstance(env.get("dataset_type"), str) else None
    if dataset is None:
        dataset = next((d for frag, d in MMSEG_BY_NAME if frag in name), None)
        if dataset is None or len(ZOO_DATASETS.get(dataset, {}).get("classes", ())) != cfg.get("num_classes"):
            dataset = MMSEG_BY_CLASSES.get(cfg.get("num_classes"))
            if dataset:
                notes.append(f"dataset {dataset} guessed from the class count ({cfg['num_classes']})")
    if dataset == "PotsdamDataset" and "vaihingen" in name:
        dataset = "ISPRSDataset"
    table = ZOO_DATASETS.get(dataset or "", {})
    n = cfg.get("num_classes")
    if not (isinstance(names, (list, tuple)) and len(names) == n and all(isinstance(c, str) for c in names)):
        names = table.get("classes") if len(table.get("classes", ())) == n else None
    else:
        names = [c.strip() for c in names]
    if not (isinstance(palette, (list, tuple)) and len(palette) == n):
        palette = table.get("palette") if len(table.get("palette", ())) == n else None
    else:
        palette = [[int(x) for x in c] for c in palette]
    # test protocol: test_cfg of the model, Resize scale of the test pipeline
    test_cfg = model.get("test_cfg") if isinstance(model.get("test_cfg"), dict) else env.get("test_cfg") or {}
    scale, flip, ratios = None, False, None
    for d in _walk_dicts(env.get("test_pipeline") or _dig(env, "data", "test") or _dig(env, "test_dataloader") or []):
        if d.get("type") == "MultiScaleFlipAug":
            scale, flip, ratios = d.get("img_scale") or scale, bool(d.get("flip", False)), d.get("img_ratios")
        elif d.get("type") == "Resize" and (d.get("scale") or d.get("img_scale")) and scale is None:
            scale = d.get("scale") or d.get("img_scale")
    if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(s, int) for s in scale)):
        scale = [2049, 1025] if "769x769" in name and dataset == "CityscapesDataset" else \
            list(MMSEG_TEST_SCALE.get(dataset or "", (2048, 1024)))
    mode, crop, stride = "whole", None, None
    if test_cfg.get("mode") == "slide":
        mode, crop, stride = "sliding", test_cfg.get("crop_size"), test_cfg.get("stride")
    elif not test_cfg and "769x769" in name:
        mode, crop, stride = "sliding", [769, 769], [513, 513]
    elif not test_cfg and dataset in MMSEG_SLIDE:
        mode, (crop, stride) = "sliding", MMSEG_SLIDE[dataset]
    base, resize = _keep_ratio_settings(scale)
    settings = _test_settings(base, ratios if isinstance(ratios, list) and ratios else (1.0,), mode, crop, stride, flip)
    resize.update({"zoo": "mmsegmentation", "mode": "slide" if mode == "sliding" else "whole",
                   "crop_size": crop, "stride": stride})
    norm = env.get("img_norm_cfg") or _dig(env, "data_preprocessor") or _dig(model, "data_preprocessor") or {}
    mean, std = norm.get("mean", IMAGENET_MEAN_255), norm.get("std", IMAGENET_STD_255)
    rgb = bool(norm.get("to_rgb", norm.get("bgr_to_rgb", True)))
    extra = {"zoo": {"name": "mmsegmentation", "dataset": dataset, "config_from": cfg_from},
             "preprocessing": {"mean": mean, "std": std, "channel_order": "RGB" if rgb else "BGR",
                               "pixel_range": "0-255"},
             "test_settings": settings, "test_resize": resize}
    return ZooCheckpoint("mmsegmentation", mapped, cfg, extra, names, palette, notes)


def convert_csail(paths: Sequence[str | Path], encoder: Mapping[str, torch.Tensor],
                  decoder: Mapping[str, torch.Tensor]) -> ZooCheckpoint:
    from .zoo_datasets import ZOO_DATASETS
    mapped, left = csail_to_pspnet_keys(encoder, decoder)
    if left:
        why = "CSAILVision files, but not resnet*dilated + ppm / ppm_deepsup (e.g. UPerNet, C1, HRNet, MobileNet)"
        raise WeightsError(layout_report(" + ".join(map(str, paths)), {**strip_module_prefix(encoder),
                                                                      **strip_module_prefix(decoder)}, why))
    if not any(k.startswith("cls.4.") for k in mapped) or not any(k.startswith("ppm.") for k in mapped):
        raise WeightsError(f"{paths[1]}: the CSAILVision decoder has no PPM or no conv_last; only ppm and "
                           f"ppm_deepsup decoders are PSPNets")
    cfg = _common_head_config(mapped)
    cfg.update({"contract_dilation": True, "basic_conv2_dilated": True, "align_corners": False, "output_stride": 8,
                "bins": [1, 2, 3, 6]})
    names = palette = None
    notes = []
    if cfg.get("num_classes") == 150:
        names, palette = ZOO_DATASETS["ADE20KDataset"]["classes"], ZOO_DATASETS["ADE20KDataset"]["palette"]
    base = round(max(CSAIL_SHORT_SIDES) * 4 / 3)
    settings = _test_settings(base, [s / max(CSAIL_SHORT_SIDES) for s in CSAIL_SHORT_SIDES])
    resize = {"zoo": "csailvision", "rule": "short_side", "short_sides": list(CSAIL_SHORT_SIDES), "max_long_side": 1000,
              "size_multiple": 8, "average": "softmax", "mode": "whole",
              "exact_for": "4:3 images (base_size is the long side when the short side is 600)"}
    extra = {"zoo": {"name": "csailvision", "dataset": "ADE20K SceneParsing" if names else None,
                     "config_from": "tensors (resnet*dilated + ppm decoders are fixed in the zoo's code)"},
             "preprocessing": {"mean": IMAGENET_MEAN_255, "std": IMAGENET_STD_255, "channel_order": "RGB",
                               "pixel_range": "0-255"},
             "test_settings": settings, "test_resize": resize}
    return ZooCheckpoint("csailvision", mapped, cfg, extra, names, palette, notes)


def _raw_meta(path: str | Path) -> Any:
    """The ``meta`` entry of a pickled checkpoint (read again with weights_only=True), or None."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return None
    obj = _load_pickle(path)
    return obj.get("meta") if isinstance(obj, dict) else None


def from_zoo(paths: Sequence[str | Path], states: Sequence[Mapping[str, torch.Tensor]]) -> ZooCheckpoint | None:
    """The zoo checkpoint in ``paths`` (one mmsegmentation file, or a CSAILVision encoder + decoder in
    either order), or None for a single file of another layout."""
    if len(paths) == 2:
        a, b = states
        if is_csail_encoder(a) and is_csail_decoder(b):
            return convert_csail(paths, a, b)
        if is_csail_encoder(b) and is_csail_decoder(a):
            return convert_csail([paths[1], paths[0]], b, a)
        roles = [("a CSAILVision encoder" if is_csail_encoder(s) else "a CSAILVision decoder" if is_csail_decoder(s)
                  else "neither a CSAILVision encoder nor decoder") for s in states]
        raise WeightsError(f"two inputs are a CSAILVision encoder + decoder pair, but {paths[0]} is {roles[0]} and "
                           f"{paths[1]} is {roles[1]}; give encoder_epoch_N.pth decoder_epoch_N.pth of one model "
                           f"(other checkpoints are converted one file at a time)")
    (state,) = states
    if is_mmseg(state):
        return convert_mmseg(paths[0], state, _raw_meta(paths[0]))
    if is_csail_encoder(state):
        raise WeightsError(f"{paths[0]}: a CSAILVision encoder (conv1..3 + layer1..4 with _tmp_running_mean); give its "
                           f"decoder too: pspnet convert {paths[0]} DECODER_epoch_N.pth OUT.safetensors")
    if is_csail_decoder(state):
        raise WeightsError(f"{paths[0]}: a CSAILVision decoder (ppm / conv_last); give its encoder too: "
                           f"pspnet convert ENCODER_epoch_N.pth {paths[0]} OUT.safetensors")
    return None
