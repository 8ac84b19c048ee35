"""Load a weight file for ``pspnet eval``/``predict``/``export``: our files build themselves from the
config they carry; the original release's files are built from a run config's model section."""

from __future__ import annotations

from pathlib import Path

from ..errors import WeightsError
from ..models.pretrained import default_weights_path

__all__ = ["load_for_inference"]


def _has_config(path: Path) -> bool:
    """Whether a weight file carries its model config (safetensors: read from the header only)."""
    from ..models.weights import read_metadata, read_state_dict
    if path.suffix == ".safetensors":
        return "config" in read_metadata(path)
    return "config" in read_state_dict(path)[1]


def _check_recorded_model(path: Path, max_memory: int | None) -> None:
    from ..models.pspnet import PSPNetConfig
    from ..models.weights import check_config_dict, read_metadata
    from .budget import check_model
    cfg = read_metadata(path).get("config")
    if not isinstance(cfg, dict):
        return  # load_weights names the problem
    check_config_dict(cfg, str(path))
    try:
        config = PSPNetConfig.from_dict(dict(cfg))
    except (TypeError, ValueError):
        return
    check_model(config, max_memory, str(path))


def load_for_inference(weights: str | Path | None = None, config=None, device: str | None = None,
                       max_memory: int | None = None):
    """``(model in eval mode on device, metadata)`` for ``pspnet eval/predict/export``.

    ``weights=None`` is the packaged CamVid model. A file that carries its config (ours, our
    checkpoints) builds itself; a file without one (the original release) is built from
    ``config`` (a :class:`pspnet.config.Config`: its model section and dataset's class count).
    ``device``: ``cpu``, ``cuda``, ... (default: CUDA when available). ``max_memory``: the memory
    budget in bytes (default: :func:`~pspnet.inference.budget.default_budget`); a model over it is a
    :class:`~pspnet.errors.MemoryBudgetError` before it is built.
    """
    import torch

    from ..models.pspnet import PSPNet, PSPNetConfig
    from ..models.weights import check_state_fits, load_into, load_weights, read_state_dict
    from .budget import check_model
    path = Path(weights) if weights is not None else default_weights_path()
    from ..models.weights import check_weight_path
    check_weight_path(path)
    if _has_config(path):
        if path.suffix == ".safetensors":  # the config from the header: checked before a model is built
            _check_recorded_model(path, max_memory)
        model, meta = load_weights(path)
    else:
        if config is None:
            raise WeightsError(f"{path}: the file carries no model config; pass --config with the model section it "
                               f"was trained with, or convert it first with 'pspnet convert'")
        from ..data.datasets import dataset_info
        num_classes = config.model.num_classes or len(config.data.class_names or ()) or \
            dataset_info(config.data.dataset).num_classes
        model_config = PSPNetConfig.from_dict(config.model_kwargs(num_classes))
        state, meta = read_state_dict(path)
        check_state_fits(model_config, state, str(path))  # before the model's memory is taken
        check_model(model_config, max_memory, str(path))
        model = PSPNet(model_config)
        load_into(model, state, source=str(path), strict=True)
        meta = {"class_names": None, "palette": None, "config": model.config.to_dict()}
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(dev).eval(), meta
