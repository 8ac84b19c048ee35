"""Weight files: our safetensors format, the original release's checkpoints, ImageNet backbones.

Our format is a ``.safetensors`` file whose metadata holds the model config, class names and
palette (JSON), so a weight file is all ``pspnet predict`` needs. Anything else is loaded with
``torch.load(..., weights_only=True)``: a checkpoint is untrusted input and never runs code.

Recognised inputs (:func:`read_state_dict` + :func:`to_pspnet_keys`):
- the original release (``train_epoch_*.pth``): ``{"state_dict": {"module.layer0.0.weight": ...}}``;
- ImageNet ResNets in torchvision layout (``conv1, bn1, layer1..4, fc``; 7x7 stem) or in the original
  release's deep-stem layout (``conv1, bn1, conv2, bn2, conv3, bn3, ...``), mapped to ``layer0.*``;
- our own files and training checkpoints (``{"model": ...}``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from ..files import atomic_write
from .pspnet import CONFIG_FIELDS, PSPNet, PSPNetConfig
from .schema import problems

log = logging.getLogger(__name__)

FORMAT = "pspnet-weights-v1"
CLASSIFIER_KEYS = ("cls.4.", "aux.4.")
DEEP_STEM_MAP = {"conv1.": "layer0.0.", "bn1.": "layer0.1.", "conv2.": "layer0.3.", "bn2.": "layer0.4.",
                 "conv3.": "layer0.6.", "bn3.": "layer0.7."}
SHALLOW_STEM_MAP = {"conv1.": "layer0.0.", "bn1.": "layer0.1."}
INT8_SCALE_SUFFIX = ".int8_scale"


# ----------------------------------------------------------------------------------------- writing
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``weight ~= q * scale[:, None, ...]``."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    scale = w.abs().amax(1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale


def dequantize_int8(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Inverse of the ``storage="int8"`` layout: float32 tensors, scale entries removed."""
    out = {}
    for k, v in state.items():
        if k.endswith(INT8_SCALE_SUFFIX):
            continue
        scale = state.get(k + INT8_SCALE_SUFFIX)
        if scale is None:
            if v.dtype == torch.int8:
                raise WeightsError(f"{source}: int8 tensor {k!r} has no {k + INT8_SCALE_SUFFIX!r} entry")
            out[k] = v
            continue
        if v.dtype != torch.int8 or v.dim() < 1 or scale.shape != (v.shape[0],) or not scale.is_floating_point():
            raise WeightsError(f"{source}: int8 tensor {k!r} {tuple(v.shape)} {v.dtype} does not fit its scale "
                               f"{tuple(scale.shape)} {scale.dtype}")
        out[k] = v.float() * scale.float().view(-1, *([1] * (v.dim() - 1)))
    return out


def save_weights(model: PSPNet, path: str | Path, class_names=None, palette=None, dtype: torch.dtype | None = None,
                 extra: Mapping[str, Any] | None = None, storage: str | None = None,
                 include_aux: bool = True) -> None:
    """Save model weights + config + class names + palette as one safetensors file (atomically).

    ``storage="int8"`` stores convolution weights as int8 with one float scale per output channel
    (and everything else in ``dtype`` or fp16): about half the size of fp16, dequantised to float on
    load. ``include_aux=False`` drops the auxiliary head (unused at inference); the saved config
    then says ``aux: false``.
    """
    from safetensors.torch import save_file
    model = unwrap(model)
    if storage not in (None, "int8"):
        raise ValueError(f"storage must be None or 'int8', got {storage!r}")
    config = model.config.to_dict()
    state = {}
    for k, v in model.state_dict().items():
        if not include_aux and k.startswith("aux."):
            continue
        v = v.detach().cpu()
        if storage == "int8" and v.is_floating_point() and v.dim() == 4:
            state[k], state[k + INT8_SCALE_SUFFIX] = quantize_int8(v)
            continue
        if v.is_floating_point() and (dtype is not None or storage == "int8"):
            v = v.to(dtype or torch.float16)
        state[k] = v.contiguous()
    if not include_aux:
        config["aux"] = False
    meta = {"format": FORMAT, "config": json.dumps(config)}
    if storage:
        meta["storage"] = json.dumps(storage)
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    if palette is not None:
        meta["palette"] = json.dumps([list(map(int, c)) for c in palette])
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def update_metadata(path: str | Path, entries: Mapping[str, Any]) -> None:
    """Add or replace metadata entries (JSON values) of one of our safetensors files, tensors
    untouched (int8 storage stays int8), atomically."""
    from safetensors.torch import save_file
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: only .safetensors files carry metadata; convert it first with 'pspnet convert'")
    state, meta = _load_safetensors(path)
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a pspnet weight file (metadata format {meta.get('format')!r})")
    meta = {**meta, **{k: json.dumps(v) for k, v in entries.items()}}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------------------- reading
def _load_safetensors(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, raw metadata); ``tensors=False`` reads the header only (no tensor is loaded)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file ({e})") from None
    return state, meta


def _decoded_metadata(path: Path, raw: Mapping[str, str]) -> dict[str, Any]:
    """Our metadata values are JSON (``format`` is a plain string)."""
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v) if k != "format" else v
        except json.JSONDecodeError:
            raise WeightsError(f"{path}: metadata entry {k!r} is not valid JSON") from None
    return meta


def check_weight_path(path: Path) -> None:
    """:class:`WeightsError` unless ``path`` is a regular file, saying what it is instead: a link to
    ``/dev/zero`` or a FIFO would be read forever, and is not 'not found' either."""
    if path.is_file():
        return
    if not path.exists():
        what = "a broken symbolic link" if path.is_symlink() else "not found"
        raise WeightsError(f"{path}: weight file {what}")
    kind = "a folder" if path.is_dir() else "a device, FIFO or socket"
    raise WeightsError(f"{path}: is {kind}, not a regular file; give a weight file (.safetensors, .pth, .pt)")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A safetensors weight file's metadata (config, class names, test settings, ...), read from the
    header alone."""
    path = Path(path)
    check_weight_path(path)
    return _decoded_metadata(path, _load_safetensors(path, tensors=False)[1])


def _reason(e: BaseException) -> str:
    """The informative line of an exception (torch's weights-only errors bury it in prose)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        return " ".join(detail.split())[:300] or "unsupported pickle content"
    for line in text.splitlines():  # torch >= 2.6 zip checkpoints: "Trying to load unsupported GLOBAL posix.system ..."
        if "unsupported GLOBAL" in line:
            return line.strip()[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0][:300] if lines else "") or type(e).__name__


def _load_pickle(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file."""
    import pickle
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _reason(e)
        if "global" in reason.lower():  # a class or function reference: code would run on load
            raise WeightsError(
                f"{path}: refused to load: the checkpoint references Python code, not only tensors "
                f"({reason.split('. Please use')[0]}). pspnet loads checkpoints with weights_only=True because "
                f"unpickling can run arbitrary code; if you trust the file, re-save its state_dict alone "
                f"(torch.save(model.state_dict(), ...)) and load that") from None
        raise WeightsError(f"{path}: cannot read checkpoint: not a PyTorch checkpoint or corrupt ({reason})") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types (EOFError, RuntimeError, KeyError...)
        raise WeightsError(f"{path}: cannot read checkpoint ({_reason(e)}); is it truncated or not a "
                           f"PyTorch file?") from None


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read any supported weight file safely; returns (flat state dict, metadata)."""
    path = Path(path)
    check_weight_path(path)
    if path.suffix == ".safetensors":
        state, raw_meta = _load_safetensors(path)
        meta = _decoded_metadata(path, raw_meta)
        if meta.get("storage") == "int8" or any(k.endswith(INT8_SCALE_SUFFIX) for k in state):
            state = dequantize_int8(state, str(path))
        return state, meta
    obj = _load_pickle(path)
    meta = {}
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):  # our training checkpoint
        meta = {k: obj[k] for k in ("config", "class_names", "palette") if k in obj}
        obj = obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{path}: expected a state_dict (mapping of names to tensors), got {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError(f"{path}: the file holds no tensors")
    return state, meta


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the ``module.`` prefixes that (nested) DataParallel/DDP wrappers add."""
    out = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def to_pspnet_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` prefixes and map ImageNet ResNet keys (either stem) to PSPNet's ``layer0``."""
    out = strip_module_prefix(state)
    if any(k.startswith("layer0.") for k in out):
        return out
    if any(k.startswith(("conv1.", "bn1.")) for k in out):  # an ImageNet backbone
        stem = DEEP_STEM_MAP if any(k.startswith("conv3.") for k in out) else SHALLOW_STEM_MAP
        mapped = {}
        for k, v in out.items():
            if k.startswith("fc."):
                continue  # ImageNet classifier: not part of PSPNet
            for old, new in stem.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            mapped[k] = v
        return mapped
    return out


def compare_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrongly shaped) keys of ``state`` against ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, shape


def _mismatch_message(source: str, missing, unexpected, shape) -> str:
    def block(title, items):
        if not items:
            return ""
        more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
        return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:20]) + more
    return (f"{source}: weights do not fit the model" + block("missing keys", missing)
            + block("unexpected keys", unexpected) + block("wrongly shaped keys", shape))


def _hint(model: PSPNet, state: Mapping[str, torch.Tensor]) -> str:
    """A likely cause of a mismatch (wrong stem or depth) in words."""
    stem = state.get("layer0.0.weight")
    if stem is not None and stem.dim() == 4 and stem.shape[-1] in (3, 7):
        file_deep = stem.shape[-1] == 3
        if file_deep != model.config.deep_stem:
            return (f"\n  hint: the file has a {'deep 3x3' if file_deep else '7x7'} stem but the model was built "
                    f"with deep_stem={model.config.deep_stem}; use "
                    f"{'--deep-stem' if file_deep else '--no-deep-stem'} (model.deep_stem={file_deep})")
    own_blocks = {k.split(".")[1] for k in model.state_dict() if k.startswith("layer3.")}
    file_blocks = {k.split(".")[1] for k in state if k.startswith("layer3.")}
    if file_blocks and len(file_blocks) != len(own_blocks):
        return (f"\n  hint: layer3 has {len(file_blocks)} blocks in the file but {len(own_blocks)} in the model "
                f"(ResNet-{model.config.depth}); pick the depth the file was trained with")
    return ""


def load_into(model: PSPNet, state: Mapping[str, torch.Tensor], *, source: str = "weights",
              strict: bool = True, backbone_only: bool = False,
              reinit_classifier: bool = False) -> dict[str, list[str]]:
    """Load a (converted) state dict into ``model``.

    ``strict``: every key must match in name and shape. Classifier layers (``cls.4``, ``aux.4``) of
    another class count are an error naming both counts, unless ``reinit_classifier`` (training or
    converting for a new dataset, asked for explicitly), which re-initialises them with a warning.
    Inference never does: it must not run a classifier it did not load. ``backbone_only``: load
    ``layer0..4`` and report the rest as new.
    """
    model = unwrap(model)
    state = dict(to_pspnet_keys(state))
    own = model.state_dict()
    for k, v in state.items():
        if k in own and v.is_floating_point() and own[k].is_floating_point() and v.dtype != own[k].dtype:
            state[k] = v.to(own[k].dtype)
        elif k in own and v.dtype != own[k].dtype:
            raise WeightsError(f"{source}: tensor {k!r} has dtype {v.dtype}, expected {own[k].dtype}")
        if k in own and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise WeightsError(f"{source}: tensor {k!r} holds {int((~torch.isfinite(v)).sum())} NaN/inf values; "
                               f"the weight file is corrupt or comes from a diverged training run")
    if backbone_only:
        backbone = ("layer0.", "layer1.", "layer2.", "layer3.", "layer4.")
        state = {k: v for k, v in state.items() if k.startswith(backbone)}
    missing, unexpected, shape = compare_state(model, state)
    # Only a classifier whose shape differs (another class count) is re-initialised; a classifier
    # that is absent from a file meant to be complete stays a missing key.
    reinit = [k for k in own if k.startswith(CLASSIFIER_KEYS) and any(s.startswith(k + ":") for s in shape)]
    if reinit and not reinit_classifier:
        file_classes = int(state[reinit[0]].shape[0])
        raise WeightsError(
            f"{source}: the weights' classifier predicts {file_classes} classes but the model was built for "
            f"{model.config.num_classes}; evaluate or predict with the config / dataset of those "
            f"{file_classes} classes, or fine-tune for {model.config.num_classes} classes (pspnet train with "
            f"train.pretrained={source}, or pspnet convert {source} OUT --num-classes "
            f"{model.config.num_classes} to re-initialise the classifier explicitly)")
    shape = [s for s in shape if s.split(":")[0] not in reinit]
    if backbone_only:
        missing = [k for k in missing if k.startswith(("layer0.", "layer1.", "layer2.", "layer3.", "layer4."))]
    if not model.config.aux:
        unexpected = [k for k in unexpected if not k.startswith("aux.")]
    if shape or unexpected or (strict and missing):
        raise WeightsError(_mismatch_message(source, missing, unexpected, shape) + _hint(model, state))
    loadable = {k: v for k, v in state.items() if k in own and k not in reinit and v.shape == own[k].shape}
    model.load_state_dict(loadable, strict=False)
    if reinit:
        log.warning("%s: class count differs; re-initialised classifier layers %s and kept every other "
                    "matching tensor", source, sorted({k.rsplit(".", 1)[0] for k in reinit}))
    new = [k for k in own if k not in loadable]
    return {"loaded": sorted(loadable), "reinitialised": reinit, "new": new}


def model_skeleton(config: PSPNetConfig) -> PSPNet:
    """The model built on the ``meta`` device: every parameter's name and shape, no memory and no
    initialisation; what a weight file is checked against before the real model is built."""
    with torch.device("meta"):
        return PSPNet(config)


def parameter_bytes(config: PSPNetConfig) -> int:
    """Bytes of the model's parameters and buffers in float32 (from its skeleton)."""
    model = model_skeleton(config)
    return sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()))


def check_state_fits(config: PSPNetConfig, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict that lacks tensors of the model ``config`` describes, has others, or others'
    shapes, *before* that model is built: a file of a few hundred bytes whose metadata names the
    largest config the limits allow (and no tensors) made ``load_weights`` allocate 40 GB first and
    fail after. A classifier of another class count is left to :func:`load_into`, which names both."""
    if not state:
        raise WeightsError(f"{source}: the file holds no tensors (only metadata); it is not a weight file")
    model = model_skeleton(config)
    state = to_pspnet_keys(state)
    missing, unexpected, shape = compare_state(model, state)
    shape = [s for s in shape if not s.startswith(CLASSIFIER_KEYS)]
    if not config.aux:
        unexpected = [k for k in unexpected if not k.startswith("aux.")]
    if missing or unexpected or shape:
        raise WeightsError(_mismatch_message(source, missing, unexpected, shape) + _hint(model, state))


def check_config_dict(cfg: Mapping[str, Any], source: str) -> None:
    """Raise :class:`WeightsError` unless ``cfg`` has only known keys with values of the right type and range.

    A weight file's config is untrusted: it is checked field by field against the model's schema
    (:data:`~pspnet.models.pspnet.CONFIG_FIELDS`, strict types) before a model is built from it, so
    that e.g. ``head_channels=10**9`` cannot make us allocate terabytes.
    """
    found = problems(CONFIG_FIELDS, cfg)
    if found:
        raise WeightsError(f"{source}: invalid model config in metadata: " + "; ".join(found))


def load_weights(path: str | Path, num_classes: int | None = None, **config_overrides: Any
                 ) -> tuple[PSPNet, dict[str, Any]]:
    """Build a PSPNet from a weight file that carries its config (ours, or our checkpoints).

    Returns the model in eval mode and metadata (``class_names``, ``palette``, ...). For files
    without a config (the original release), build the model yourself and use :func:`load_into`.
    """
    state, meta = read_state_dict(path)
    if "config" not in meta:
        raise WeightsError(f"{path}: the file carries no model config; build the model (e.g. "
                           f"pspnet_resnet50(num_classes=...)) and call load_into(), or convert it with "
                           f"'pspnet convert {path} OUT.safetensors --depth 50 --num-classes N'")
    cfg_dict = dict(meta["config"]) if isinstance(meta["config"], dict) else None
    if cfg_dict is None:
        raise WeightsError(f"{path}: metadata 'config' must be a JSON object")
    cfg_dict.update(config_overrides)
    if num_classes is not None:
        cfg_dict["num_classes"] = num_classes
    check_config_dict(cfg_dict, str(path))
    try:
        config = PSPNetConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: invalid model config in metadata: {e}") from None
    names, palette = meta.get("class_names"), meta.get("palette")
    if names is not None and isinstance(names, list) and not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{path}: metadata class_names must be a list of strings")
    if names is not None and (not isinstance(names, list) or len(names) != config.num_classes):
        if num_classes is None:
            raise WeightsError(f"{path}: metadata has {len(names) if isinstance(names, list) else names!r} class "
                               f"names for {config.num_classes} classes")
        names = None
    if palette is not None and not (isinstance(palette, list) and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(x, int) and 0 <= x <= 255 for x in c)
            for c in palette)):
        raise WeightsError(f"{path}: metadata palette must be a list of [r, g, b] integers 0-255")
    own_cls = state.get("cls.4.weight", state.get("module.cls.4.weight"))
    if num_classes is None and own_cls is not None and own_cls.shape[0] != config.num_classes:
        raise WeightsError(f"{path}: metadata config says {config.num_classes} classes but tensor 'cls.4.weight' "
                           f"has shape {tuple(own_cls.shape)}; the file is inconsistent")
    check_state_fits(config, state, str(path))
    model = PSPNet(config)
    load_into(model, state, source=str(path), strict=True, reinit_classifier=num_classes is not None)
    model.eval()
    return model, {"class_names": names, "palette": [tuple(c) for c in palette] if palette else None,
                   "config": config.to_dict(), **{k: v for k, v in meta.items()
                                                  if k not in ("config", "class_names", "palette")}}
