"""The Python API: ``pspnet.load`` a model once, then ``model.predict`` images.

::

    import pspnet
    model = pspnet.load("packaged")          # or a catalogue name, a .safetensors / checkpoint path
    result = model.predict("frame.png")      # a path, a PIL image, an H x W x 3 uint8 RGB array; a list -> a list
    result.labels                            # H x W uint8 class ids (uint16 above 256 classes), at the input's size
    result.probabilities                     # C x H x W float32 softmax, computed when asked
    result.colorize(), result.overlay(0.5)   # PIL images

It is what ``pspnet predict`` and ``pspnet eval`` run: the same loading
(:func:`~pspnet.inference.loading.load_for_inference`, catalogue names through
:func:`~pspnet.hub.resolve_weights`), the same test settings (what the weight file records,
overridable by keyword, resolved by :func:`resolve_settings`), the same precision choice
(:func:`~pspnet.inference.prepare.prepare_model`) and per-image step
(:func:`~pspnet.inference.predict.predict_image`), and the same errors (:class:`pspnet.errors.PSPNetError`
and its family), so its labels equal the CLI's pixel for pixel at the same precision.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from PIL import Image

from .errors import ConfigError, DataError

if TYPE_CHECKING:  # annotations only: importing the config pulls in pydantic
    from .config import Config

__all__ = ["Model", "Prediction", "load", "resolve_settings"]

PACKAGED = "packaged"


def resolve_settings(recorded: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None, *,
                     config_eval=None, crop_default: Sequence[int] | None = None) -> tuple[dict[str, Any], dict]:
    """``(test settings, where each came from)`` for eval/predict: ``overrides`` (keywords, command-line
    flags; ``None`` = not given, ``base_size=0`` = no resize) over the config's eval section (the keys it
    sets) over what the weight file records (``recorded``: :func:`pspnet.config.recorded_test_settings`)
    over the defaults. Sources read ``command line``, ``config``, ``weights`` or ``default``."""
    from .config import TEST_SETTING_KEYS, EvalSection
    recorded, overrides = recorded or {}, overrides or {}
    unknown = sorted(set(overrides) - set(TEST_SETTING_KEYS))
    if unknown:
        raise ConfigError(f"unknown test settings {unknown}; known: {list(TEST_SETTING_KEYS)}")
    given = {k: getattr(config_eval, k) for k in (config_eval.model_fields_set if config_eval is not None else ())}
    defaults = EvalSection()
    out, sources = {}, {}
    for key in TEST_SETTING_KEYS:
        value = overrides.get(key)
        if value is not None:
            out[key], sources[key] = (value or None) if key == "base_size" else value, "command line"
        elif key in given:
            out[key], sources[key] = given[key], "config"
        elif key in recorded:
            out[key], sources[key] = recorded[key], "weights"
        else:
            out[key], sources[key] = getattr(defaults, key), "default"
    if out["mode"] not in ("whole", "sliding"):
        raise ConfigError(f"mode must be 'whole' or 'sliding', got {out['mode']!r}")
    if out["mode"] == "sliding" and out["crop_size"] is None and crop_default is not None:
        out["crop_size"], sources["crop_size"] = crop_default, "config data.crop_size"
    if out["mode"] == "sliding" and out["crop_size"] is None:
        raise ConfigError("--sliding needs --crop-size H W (or eval.crop_size / data.crop_size in the config)")
    out["scales"] = tuple(out["scales"])
    out["crop_size"] = tuple(out["crop_size"]) if out["crop_size"] else None
    return out, sources


class Prediction:
    """One image's segmentation.

    Attributes:
        labels: ``H x W`` class ids at the input's size, ``np.uint8`` (``np.uint16`` above 256 classes): the
            values of ``pspnet predict``'s ``_label.png``.
        image: the input as ``H x W x 3`` uint8 RGB (upright by its EXIF orientation).
        class_names: ``C`` names; ``palette``: ``C x 3`` uint8 RGB colours, one row per class.
    """

    def __init__(self, labels: np.ndarray, image: np.ndarray, class_names: list[str], palette: np.ndarray,
                 probabilities: np.ndarray | None = None, model: Model | None = None) -> None:
        self.labels, self.image, self.class_names, self.palette = labels, image, class_names, palette
        self._probabilities, self._model = probabilities, model

    @property
    def probabilities(self) -> np.ndarray:
        """``C x H x W`` float32 softmax probabilities (their arg-max is ``labels``): kept when ``predict`` was
        called with ``probabilities=True``, else computed now (the image is run again) and kept."""
        if self._probabilities is None:
            if self._model is None:
                raise ConfigError("no probabilities: predict with probabilities=True")
            self._probabilities = self._model._probs(self.image).float().cpu().numpy()
        return self._probabilities

    def colorize(self) -> Image.Image:
        """The classes in their palette colours (RGB PIL image, ``pspnet predict``'s ``_color.png``)."""
        return Image.fromarray(self.palette[self.labels])

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The class colours over the input (RGB PIL image): ``alpha`` of colour, ``1 - alpha`` of image
        (0.5: ``pspnet predict``'s ``_overlay.png``)."""
        from .inference.predict import overlay
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be from 0 to 1, got {alpha}")
        return Image.fromarray(overlay(self.image, self.palette[self.labels], alpha))

    def label_image(self) -> Image.Image:
        """The labels as a greyscale PIL image (mode ``L``; 16-bit above 256 classes): save it as PNG for
        ``pspnet predict``'s ``_label.png``."""
        from .inference.predict import label_image
        return label_image(self.labels, len(self.class_names))

    def counts(self) -> np.ndarray:
        """Pixels per class: ``C`` int64 counts, summing to ``H * W``."""
        return np.bincount(self.labels.ravel(), minlength=len(self.class_names))[:len(self.class_names)]

    def __repr__(self) -> str:
        h, w = self.labels.shape
        return f"Prediction({h}x{w}, {len(np.unique(self.labels))} classes present)"


class Model:
    """A loaded PSPNet with its classes, palette, test settings and precision: made by :func:`load`.

    Attributes:
        weights: what was loaded (``"packaged"``, a catalogue name or a path).
        net: the :class:`~pspnet.models.PSPNet` (eval mode); ``meta``: the weight file's metadata.
        class_names: ``C`` names; ``palette``: ``C x 3`` uint8 RGB.
        settings: the test settings (``mode``, ``base_size``, ``crop_size``, ``stride_rate``, ``scales``,
            ``flip``, ``protocol``); ``sources``: where each came from.
        requested_precision, requested_backend: as asked (``auto``...); ``precision``/``backend``: in use.
    """

    def __init__(self, net, meta: dict, weights: str, settings: dict[str, Any], sources: dict[str, str], *,
                 precision: str, backend: str, max_memory: int | None) -> None:
        from .inference.auto import recorded_int8_agreements
        from .inference.predict import palette_array
        from .labels import default_palette
        n = net.config.num_classes
        self.net, self.meta, self.weights = net, meta, weights
        self.class_names: list[str] = list(meta.get("class_names") or [f"class_{i}" for i in range(n)])
        self.palette: np.ndarray = palette_array(meta.get("palette") or default_palette(n), n)[:n]
        self.settings, self.sources = settings, sources
        self.requested_precision, self.requested_backend, self.max_memory = precision, backend, max_memory
        self.int8_agreement = recorded_int8_agreements(meta)
        self._runner: Any = None
        self._lock = threading.Lock()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def precision(self) -> str:
        """The precision in use (``auto`` until ``auto`` has decided, at the first image where a probe decides)."""
        return getattr(self._runner, "precision", "fp32") if self._runner is not None else self.requested_precision

    @property
    def backend(self) -> str:
        return getattr(self._runner, "backend", "torch") if self._runner is not None else self.requested_backend

    def runner(self):
        """The prepared network (:func:`~pspnet.inference.prepare.prepare_model`), built on first use."""
        if self._runner is None:
            from .inference.prepare import prepare_model
            self._runner, _ = prepare_model(self.net, self.requested_precision, self.requested_backend,
                                            int8_agreement=self.int8_agreement)
        return self._runner

    def settings_line(self) -> str:
        """One line naming each test setting and, when not a default, where it came from."""
        keys = ["protocol", "mode", "base_size", "scales", "flip"] + (
            ["crop_size", "stride_rate"] if self.settings["mode"] == "sliding" else [])
        parts = []
        for k in keys:
            v = self.settings[k]
            v = list(v) if isinstance(v, tuple) else v
            parts.append(f"{k}={v}" + (f" ({self.sources[k]})" if self.sources.get(k, "default") != "default" else ""))
        return (f"test settings: {', '.join(parts)}, precision={self.requested_precision}, "
                f"backend={self.requested_backend}")

    def image_of(self, image, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
        """``image`` (a path, PIL image, ``H x W x 3`` uint8 RGB array or encoded bytes) as H x W x 3 uint8 RGB,
        read as ``pspnet predict`` reads files (EXIF orientation, any mode); a :class:`DataError` otherwise."""
        import io

        from PIL import ImageOps

        from .data.io import MAX_PIXELS, image_array, read_image
        limit = max_pixels or MAX_PIXELS
        if isinstance(image, str | os.PathLike):
            return read_image(image, max_pixels=limit)
        if isinstance(image, bytes | bytearray | memoryview):
            if not len(image):
                raise DataError(f"{name or 'image'}: empty (0 bytes)")
            return read_image(io.BytesIO(bytes(image)), name=name or "image", max_pixels=limit)
        if isinstance(image, Image.Image):
            if image.width * image.height > limit:
                raise DataError(f"{name or 'image'}: {image.width}x{image.height} is over the limit of {limit:,} "
                                f"pixels")
            return image_array(ImageOps.exif_transpose(image), name or "image")
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise DataError(f"{name or 'image'}: an array must be H x W x 3 uint8 RGB, got {image.dtype} "
                                f"{' x '.join(map(str, image.shape))}")
            return np.ascontiguousarray(image)
        raise DataError(f"{name or 'image'}: expected a path, a PIL image, an H x W x 3 uint8 array or bytes, got "
                        f"{type(image).__name__}")

    def _probs(self, image: np.ndarray, name: str = "image"):
        """``C x H x W`` probabilities (a torch tensor) of an H x W x 3 uint8 image: the plan inside the memory
        budget, then :func:`~pspnet.inference.predict.predict_image` (``pspnet predict``'s per-image step)."""
        import logging

        from .inference.budget import plan_image
        from .inference.predict import predict_image
        s = self.settings
        plan = plan_image(self.net.config, *image.shape[:2], self.max_memory, base_size=s["base_size"],
                          scales=s["scales"], mode=s["mode"], crop_size=s["crop_size"],
                          precision=self.requested_precision, name=name)
        if plan.note:
            logging.getLogger("pspnet.predict").warning(plan.note)
        with self._lock:  # one image at a time through the runner (auto decides and calibrates once)
            return predict_image(self.runner(), image, self.num_classes, base_size=s["base_size"],
                                 scales=s["scales"], flip=s["flip"], mode=plan.mode, crop_size=plan.crop_size,
                                 stride_rate=s["stride_rate"], protocol=s["protocol"])

    @overload
    def predict(self, images: list, *, probabilities: bool = False, max_pixels: int | None = None) \
        -> list[Prediction]: ...

    @overload
    def predict(self, images: Any, *, probabilities: bool = False, max_pixels: int | None = None) -> Prediction: ...

    def predict(self, images, *, probabilities: bool = False, max_pixels: int | None = None):
        """Segment one image, or each image of a list (then a list of :class:`Prediction`).

        ``images``: a path, a PIL image, an ``H x W x 3`` uint8 RGB array or an encoded image's bytes.
        ``probabilities=True`` keeps the ``C x H x W`` float32 softmax (else computed when first read).
        ``max_pixels``: refuse larger images (default: :data:`pspnet.data.io.MAX_PIXELS`). Errors: a
        :class:`~pspnet.errors.DataError` for an image that cannot be read, a
        :class:`~pspnet.errors.MemoryBudgetError` for one over the memory budget."""
        if isinstance(images, list | tuple):
            return [self.predict(x, probabilities=probabilities, max_pixels=max_pixels) for x in images]
        name = str(images) if isinstance(images, str | os.PathLike) else "image"
        if isinstance(images, str | os.PathLike):  # the plan from the header, before decoding (as predict)
            from .data.io import image_size
            size = image_size(images)
            if size is not None:
                from .inference.budget import plan_image
                s = self.settings
                plan_image(self.net.config, *size, self.max_memory, base_size=s["base_size"], scales=s["scales"],
                           mode=s["mode"], crop_size=s["crop_size"], precision=self.requested_precision, name=name)
        image = self.image_of(images, max_pixels=max_pixels)
        probs = self._probs(image, name)
        labels = probs.argmax(0).cpu().numpy().astype(np.uint8 if self.num_classes <= 256 else np.uint16)
        kept = probs.float().cpu().numpy() if probabilities else None
        return Prediction(labels, image, self.class_names, self.palette, kept, self)

    # --- what the CLI runs: the same model, settings and precision, many files at once
    def predict_files(self, inputs: Sequence[str | Path], out: str | Path, *, save_probs: bool = False,
                      progress: bool = True):
        """``pspnet predict``'s images: the ``_label/_color/_overlay.png`` files of each input (files, folders,
        globs) in ``out`` (:func:`~pspnet.inference.predict.predict_paths`); the network prepared by an earlier
        :meth:`predict` is reused, else prepared for this job (``auto`` then knows how many images come)."""
        from .inference.predict import predict_paths
        return predict_paths(self.net, inputs, out, class_names=self.class_names, palette=self.palette,
                             progress=progress, save_probs=save_probs, max_memory=self.max_memory,
                             precision=self.requested_precision, backend=self.requested_backend,
                             int8_agreement=self.int8_agreement, runner=self._runner, **self.settings)

    def predict_videos(self, videos, out: str | Path, **kw):
        """``pspnet predict``'s videos (:func:`~pspnet.inference.video.predict_videos`)."""
        from .inference.video import predict_videos
        return predict_videos(self.net, videos, out, class_names=self.class_names, palette=self.palette,
                              max_memory=self.max_memory, precision=self.requested_precision,
                              backend=self.requested_backend, int8_agreement=self.int8_agreement,
                              **self.settings, **kw)

    def evaluate(self, dataset, **kw) -> dict:
        """``pspnet eval``: :func:`~pspnet.inference.evaluate.evaluate` with this model's settings."""
        from .inference.evaluate import evaluate
        return evaluate(self.net, dataset, num_classes=self.net.config.num_classes, max_memory=self.max_memory,
                        precision=self.requested_precision, backend=self.requested_backend,
                        int8_agreement=self.int8_agreement, **self.settings, **kw)

    def __repr__(self) -> str:
        return (f"Model({self.weights!r}, {self.num_classes} classes, precision={self.precision}, "
                f"backend={self.backend})")


def load(weights: str | os.PathLike[str] | None = PACKAGED, *, precision: str = "auto", backend: str = "torch",
         device: str | None = None, max_memory: int | None = None, config: Config | None = None,
         base_size: int | None = None,
         scales: Sequence[float] | None = None, flip: bool | None = None, mode: str | None = None,
         crop_size: Sequence[int] | None = None, stride_rate: float | None = None,
         protocol: str | None = None) -> Model:
    """Load a PSPNet for prediction, as ``pspnet predict --weights WEIGHTS`` does.

    The test settings ``base_size``, ``scales``, ``flip``, ``mode``, ``crop_size``, ``stride_rate`` and
    ``protocol`` override what the weight file records (``None``: the file's, else the default;
    ``base_size=0``: no resize).

    Args:
        weights: ``"packaged"`` (or None: the packaged CamVid model), a catalogue name downloaded with
            ``pspnet download NAME`` (one not downloaded is a :class:`~pspnet.errors.WeightsError` naming the
            command), or a ``.safetensors`` / checkpoint path.
        precision: ``auto`` (the fastest mode that keeps the labels on this CPU), ``fp32``, ``bf16`` or
            ``int8``; one this machine cannot run is an error now. ``backend``: ``torch``, ``onnxruntime``,
            ``openvino``. ``device``: ``cpu``, ``cuda`` (default: CUDA when available).
        max_memory: the memory budget in bytes (default: :func:`~pspnet.inference.budget.default_budget`).
        config: a :class:`pspnet.config.Config` for a file without a recorded model config (the original
            release's); its eval section's settings then apply too.
    """
    import torch

    from .config import recorded_test_settings
    from .inference.loading import load_for_inference
    from .inference.prepare import BACKENDS, PRECISIONS
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    name = PACKAGED if weights in (None, PACKAGED) else str(weights)
    path = None
    if name != PACKAGED:
        from .hub import resolve_weights
        path = resolve_weights(weights)
    net, meta = load_for_inference(path, config, device, max_memory=max_memory)
    overrides = {"base_size": base_size, "scales": tuple(scales) if scales is not None else None, "flip": flip,
                 "mode": mode, "crop_size": tuple(crop_size) if crop_size is not None else None,
                 "stride_rate": stride_rate, "protocol": protocol}
    d = config.data if config is not None else None
    settings, sources = resolve_settings(
        recorded_test_settings(meta, "the packaged model" if name == PACKAGED else name), overrides,
        config_eval=config.eval if config is not None else None, crop_default=d.crop_size if d else None)
    if precision != "auto":  # a precision this machine cannot run: the named error before anything runs
        from .capability import require
        require(precision, backend, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Model(net, meta, name, settings, sources, precision=precision, backend=backend, max_memory=max_memory)
