"""What the other public PSPNet zoos' checkpoint files look like, and their keys mapped to ours.

- **mmsegmentation** (``{"meta", "state_dict"}``): ``backbone.stem.{0,1,3,4,6,7}`` (ResNetV1c deep
  stem, widths 32-32-64) or ``backbone.conv1/bn1`` (ResNetV1b, 7x7), ``backbone.layer1..4``,
  ``decode_head.psp_modules.{i}.1.{conv,bn}``, ``decode_head.bottleneck.{conv,bn}``,
  ``decode_head.conv_seg``, ``auxiliary_head.convs.0.{conv,bn}``, ``auxiliary_head.conv_seg``.
- **CSAILVision semantic-segmentation-pytorch**: an encoder file (``conv1..3``, ``bn1..3`` of widths
  64-64-128, ``layer1..4``) and a decoder file (``ppm.{i}.{1,2}``, ``conv_last.{0,1,4}`` and, with deep
  supervision, ``cbr_deepsup.{0,1}``, ``conv_last_deepsup``). Every BatchNorm also stores
  ``_tmp_running_mean``, ``_tmp_running_var`` and ``_running_iter`` (training statistics of its
  synchronised BN); they are dropped.

Recognising a file's layout (and explaining one that is not known, prefix by prefix) and renaming its
keys is all that is here; :mod:`pspnet.models.zoo` builds the config and the test protocol a converted
file carries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import WeightsError
from .weights import strip_module_prefix

__all__ = ["LAYOUT_PATTERNS", "CSAIL_BN_EXTRAS", "layout_report", "check_known_layout", "is_mmseg",
           "is_csail_encoder", "is_csail_decoder", "mmseg_to_pspnet_keys", "csail_to_pspnet_keys"]

CSAIL_BN_EXTRAS = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")

# ------------------------------------------------------------------------------------ layouts
# (layout, pattern of the keys it owns); used to detect files and to explain unknown ones.
LAYOUT_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("pspnet / original release",
     re.compile(r"^(module\.)*(layer[0-4]|ppm\.features\.\d+\.[12]|cls\.[014]|aux\.[014])\.")),
    ("ImageNet ResNet", re.compile(r"^(module\.)*(conv[123]|bn[123]|fc)\.")),
    ("mmsegmentation PSPNet", re.compile(
        r"^backbone\.(stem\.[013467]|conv1|bn1|layer[1-4])\.|"
        r"^decode_head\.(psp_modules\.\d+\.1\.(conv|bn)|bottleneck\.(conv|bn)|conv_seg)\.|"
        r"^auxiliary_head\.(convs\.0\.(conv|bn)|conv_seg)\.")),
    ("CSAILVision decoder (ppm / ppm_deepsup)", re.compile(
        r"^(module\.)*(ppm\.\d+\.[12]|conv_last\.[014]|cbr_deepsup\.[01]|conv_last_deepsup)\.")),
)


def _prefix(key: str) -> str:
    """``decode_head.aspp_modules.0.conv.weight`` -> ``decode_head.aspp_modules``; ``layer1.0.x`` -> ``layer1``."""
    parts = key.split(".")[:-1] or key.split(".")
    out = []
    for p in parts:
        if p.isdigit() or len(out) == 2:
            break
        out.append(p)
    return ".".join(out) or key


def _owner(key: str) -> str | None:
    csail_module = r"^(module\.)*(conv[123]|bn[123]|layer[1-4]|ppm|conv_last|cbr_deepsup)"
    if key.endswith(CSAIL_BN_EXTRAS) and re.match(csail_module, key):
        return "CSAILVision BatchNorm extras (dropped)"
    for name, pattern in LAYOUT_PATTERNS:
        if pattern.match(key):
            return name
    return None


def layout_report(source: str, state: Mapping[str, Any], why: str) -> str:
    """What a file holds, prefix by prefix: the recognised parts (and whose layout) and the rest."""
    seen: dict[str, tuple[str | None, int]] = {}
    for k in state:
        p = _prefix(k)
        owner, n = seen.get(p, (_owner(k), 0))
        seen[p] = (owner if owner == _owner(k) else None, n + 1)
    known = [(p, o, n) for p, (o, n) in seen.items() if o]
    unknown = [(p, n) for p, (o, n) in seen.items() if not o]

    def rows(items):
        shown = items[:30]
        more = [f"    ... and {len(items) - 30} more prefixes"] if len(items) > 30 else []
        return [f"    {p:<40} {n:>5} tensors" + (f"  ({o})" if o else "") for p, o, n in shown] + more
    lines = [f"{source}: {why}",
             "  known layouts: pspnet / the original release (layer0..4, ppm, cls, aux), ImageNet ResNets "
             "(conv1, bn1, layer1..4, fc), mmsegmentation PSPNet (backbone, decode_head.psp_modules / "
             "bottleneck / conv_seg, auxiliary_head), CSAILVision resnet*dilated + ppm / ppm_deepsup "
             "(encoder_epoch_*.pth decoder_epoch_*.pth)",
             f"  recognised: {sum(n for _, _, n in known)} tensors under {len(known)} prefixes"]
    lines += rows(known)
    lines.append(f"  not recognised: {sum(n for _, n in unknown)} tensors under {len(unknown)} prefixes")
    lines += rows([(p, None, n) for p, n in unknown])
    lines.append("  fix: convert a PSPNet checkpoint of one of the known layouts (another architecture, e.g. "
                 "DeepLab or UPerNet, cannot become a PSPNet); a CSAILVision model needs both files: "
                 "pspnet convert ENCODER.pth DECODER.pth OUT.safetensors")
    return "\n".join(lines)


def check_known_layout(source: str, state: Mapping[str, Any]) -> None:
    """Raise a :class:`WeightsError` listing recognised and unrecognised prefixes unless every key of
    ``state`` belongs to our layout, the original release's or an ImageNet ResNet's."""
    owners = {k: _owner(k) for k in state}
    ours = ("pspnet / original release", "ImageNet ResNet")
    if all(o in ours for o in owners.values()) and any(re.match(r"^(module\.)*layer[1-4]\.", k) for k in state):
        return
    raise WeightsError(layout_report(source, state, "not a known PSPNet checkpoint layout"))


def is_mmseg(state: Mapping[str, Any]) -> bool:
    return any(k.startswith(("backbone.", "decode_head.", "auxiliary_head.")) for k in strip_module_prefix(state))


def is_csail_encoder(state: Mapping[str, Any]) -> bool:
    keys = strip_module_prefix(state)
    return "conv3.weight" in keys and "layer1.0.conv1.weight" in keys and any(k.endswith(CSAIL_BN_EXTRAS) for k in keys)


def is_csail_decoder(state: Mapping[str, Any]) -> bool:
    keys = strip_module_prefix(state)
    decoder = re.compile(r"^(ppm\.\d+\.1|conv_last\.0|conv_last\.4|cbr_deepsup\.0|conv_last_deepsup)\.")
    return any(decoder.match(k) for k in keys)


# ------------------------------------------------------------------------------------ key maps
_MMSEG_RULES = (
    (re.compile(r"^backbone\.stem\.([013467])\.(.+)$"), r"layer0.\1.\2"),
    (re.compile(r"^backbone\.conv1\.(.+)$"), r"layer0.0.\1"),
    (re.compile(r"^backbone\.bn1\.(.+)$"), r"layer0.1.\1"),
    (re.compile(r"^backbone\.(layer[1-4]\..+)$"), r"\1"),
    (re.compile(r"^decode_head\.psp_modules\.(\d+)\.1\.conv\.(.+)$"), r"ppm.features.\1.1.\2"),
    (re.compile(r"^decode_head\.psp_modules\.(\d+)\.1\.bn\.(.+)$"), r"ppm.features.\1.2.\2"),
    (re.compile(r"^decode_head\.bottleneck\.conv\.(.+)$"), r"cls.0.\1"),
    (re.compile(r"^decode_head\.bottleneck\.bn\.(.+)$"), r"cls.1.\1"),
    (re.compile(r"^decode_head\.conv_seg\.(.+)$"), r"cls.4.\1"),
    (re.compile(r"^auxiliary_head\.convs\.0\.conv\.(.+)$"), r"aux.0.\1"),
    (re.compile(r"^auxiliary_head\.convs\.0\.bn\.(.+)$"), r"aux.1.\1"),
    (re.compile(r"^auxiliary_head\.conv_seg\.(.+)$"), r"aux.4.\1"),
)

_CSAIL_RULES = (
    (re.compile(r"^conv1\.(.+)$"), r"layer0.0.\1"), (re.compile(r"^bn1\.(.+)$"), r"layer0.1.\1"),
    (re.compile(r"^conv2\.(.+)$"), r"layer0.3.\1"), (re.compile(r"^bn2\.(.+)$"), r"layer0.4.\1"),
    (re.compile(r"^conv3\.(.+)$"), r"layer0.6.\1"), (re.compile(r"^bn3\.(.+)$"), r"layer0.7.\1"),
    (re.compile(r"^(layer[1-4]\..+)$"), r"\1"),
    (re.compile(r"^ppm\.(\d+)\.([12])\.(.+)$"), r"ppm.features.\1.\2.\3"),
    (re.compile(r"^conv_last\.([014])\.(.+)$"), r"cls.\1.\2"),
    (re.compile(r"^cbr_deepsup\.([01])\.(.+)$"), r"aux.\1.\2"),
    (re.compile(r"^conv_last_deepsup\.(.+)$"), r"aux.4.\1"),
)


def _apply_rules(state: Mapping[str, torch.Tensor], rules, drop=()) -> tuple[dict[str, torch.Tensor], list[str]]:
    out, left = {}, []
    for k, v in strip_module_prefix(state).items():
        if k.endswith(drop):
            continue
        for pattern, repl in rules:
            if pattern.match(k):
                out[pattern.sub(repl, k)] = v
                break
        else:
            left.append(k)
    return out, left


def _add_bn_counters(state: dict[str, torch.Tensor]) -> None:
    """Old checkpoints lack BatchNorm's ``num_batches_tracked``; it is unused in eval, so add zeros."""
    for k in [k for k in state if k.endswith(".running_mean")]:
        state.setdefault(k[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))


def mmseg_to_pspnet_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """mmsegmentation PSPNet keys -> ours; returns (mapped, keys no rule knows)."""
    out, left = _apply_rules(state, _MMSEG_RULES)
    _add_bn_counters(out)
    return out, left


def csail_to_pspnet_keys(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor]
                         ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """CSAILVision encoder + decoder keys -> ours (BN extras dropped); returns (mapped, unknown keys)."""
    enc, left_e = _apply_rules(encoder, _CSAIL_RULES[:7], drop=CSAIL_BN_EXTRAS)
    dec, left_d = _apply_rules(decoder, _CSAIL_RULES[7:], drop=CSAIL_BN_EXTRAS)
    out = {**enc, **dec}
    _add_bn_counters(out)
    return out, left_e + left_d

