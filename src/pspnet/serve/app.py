"""``pspnet serve``'s HTTP application (FastAPI on uvicorn): one model, loaded once, behind a bounded queue.

Routes:

- ``GET /healthz`` -> ``{"status": "ok"}`` (the app exists once the model is loaded; never waits for inference);
- ``GET /v1/model`` -> weights, classes, palette, precision and backend in use, test settings, limits;
- ``POST /v1/segment`` (multipart field ``image``) -> the label PNG (class ids, ``pspnet predict``'s
  ``_label.png``); ``?format=overlay`` / ``color``: those PNGs; ``?format=json``: size, per-class pixel
  counts and the label PNG inline (base64; ``&overlay=1`` adds the overlay PNG, as the page asks);
- ``GET /``: the page (:mod:`pspnet.serve` ``page.html``).

Every refusal is a 4xx JSON ``{"error": "..."}``: a body over ``max_body_bytes`` (413, from
``Content-Length`` before anything is read, or as soon as the streamed body passes it), a body that
stops arriving (408 after ``body_timeout`` s), no ``image`` field, an empty or undecodable image (400 /
422), an image over ``max_pixels`` (413, from its header, before decoding: decompression bombs), one
over the memory budget (413), a full queue (503 with ``Retry-After``), a missing or wrong bearer token
(401) where a token is set.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import logging
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..api import Model
from ..errors import MemoryBudgetError, PSPNetError
from .worker import Busy, InferenceQueue

__all__ = ["Limits", "create_app"]

log = logging.getLogger("pspnet.serve")
FORMATS = ("label", "overlay", "color", "json")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service."""
    max_body_bytes: int = 20 * 2**20  # a 20 MiB upload: a 12 MP JPEG fits, a PNG of a 4K frame fits
    max_pixels: int = 4096 * 4096  # 16.8 M pixels decoded (about 50 MB of RGB); larger ones are refused unread
    queue_size: int = 32  # requests that may wait behind the running one (503 beyond)
    body_timeout: float = 30.0  # seconds for a body to arrive in full (a stalled upload gets 408)


class Refusal(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refused (413) past the size limit before the rest is read, 408 when it stalls."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refusal(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limits.max_body_bytes:
            raise Refusal(413, f"the body is {int(declared):,} bytes, over the limit of {limits.max_body_bytes:,}")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limits.max_body_bytes:
                raise Refusal(413, f"the body is over the limit of {limits.max_body_bytes:,} bytes")
    try:
        await asyncio.wait_for(collect(), limits.body_timeout)
    except asyncio.TimeoutError:
        raise Refusal(408, f"the body did not arrive within {limits.body_timeout:g} s") from None
    if declared is not None and len(body) != int(declared):
        raise Refusal(400, f"the body is truncated: {len(body):,} of {int(declared):,} bytes")
    return bytes(body)


async def _image_field(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart field ``image`` (400 when the form or the field is missing or empty)."""
    if not body:
        raise Refusal(400, "the body is empty; send multipart/form-data with an 'image' file field")
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise Refusal(400, "send multipart/form-data with an 'image' file field (curl -F image=@frame.png)")
    sent = False

    async def replay() -> dict[str, Any]:  # the body already read, handed to the form parser once
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as e:  # noqa: BLE001 - python-multipart's errors on a malformed or truncated form
        raise Refusal(400, f"cannot parse the multipart form ({type(e).__name__}: {e})") from None
    field = form.get("image")
    if field is None or isinstance(field, str):
        raise Refusal(400, "no 'image' file field in the form (curl -F image=@frame.png)")
    data = await field.read()
    await form.close()
    if not data:
        raise Refusal(400, "the 'image' field is empty (0 bytes)")
    return data


def _check_pixels(data: bytes, limit: int) -> None:
    """413 for an image whose header declares more than ``limit`` pixels, before a pixel is decoded."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - not an image: the decoder names it next
        return
    if w * h > limit:
        raise Refusal(413, f"the image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,}")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fast: the bytes go over a local network
    return buf.getvalue()


def _segment(model: Model, limits: Limits, data: bytes, fmt: str, with_overlay: bool) -> tuple[bytes | dict, str]:
    """Decode, predict and encode one image (on the worker thread)."""
    _check_pixels(data, limits.max_pixels)
    try:
        pred = model.predict(data, max_pixels=limits.max_pixels)
    except MemoryBudgetError as e:
        raise Refusal(413, str(e)) from None
    except PSPNetError as e:  # DataError: not an image, truncated, zero size, a bad mode
        raise Refusal(422, str(e)) from None
    if fmt == "label":
        return _png(pred.label_image()), "image/png"
    if fmt == "overlay":
        return _png(pred.overlay()), "image/png"
    if fmt == "color":
        return _png(pred.colorize()), "image/png"
    counts = pred.counts()
    total = int(counts.sum())
    out: dict[str, Any] = {
        "width": int(pred.labels.shape[1]), "height": int(pred.labels.shape[0]),
        "classes": [{"id": i, "name": pred.class_names[i], "color": [int(c) for c in pred.palette[i]],
                     "pixels": int(n), "share": round(int(n) / total, 6)} for i, n in enumerate(counts) if n],
        "label_png": base64.b64encode(_png(pred.label_image())).decode("ascii"),
        "precision": model.precision, "backend": model.backend}
    if with_overlay:
        out["overlay_png"] = base64.b64encode(_png(pred.overlay())).decode("ascii")
    return out, "application/json"


def create_app(model: Model, limits: Limits | None = None, token: str | None = None) -> FastAPI:
    """The service for ``model`` (already loaded). ``token``: every ``/v1/`` request must carry
    ``Authorization: Bearer <token>`` (401 otherwise); ``/healthz`` and the page stay open."""
    from ..version import __version__
    limits = limits or Limits()
    queue = InferenceQueue(limits.queue_size)
    app = FastAPI(title="pspnet serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model, app.state.limits, app.state.queue = model, limits, queue
    page = resources.files("pspnet.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "; ".join(str(e.get("msg")) for e in exc.errors()) or "bad request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # logged, never a bare 500 page
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__})")

    @app.middleware("http")
    async def bearer_token(request: Request, call_next):
        if token is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
                return _error(401, "this server needs 'Authorization: Bearer <token>' (its --token)",
                              {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return {"weights": model.weights, "classes": model.class_names,
                "palette": [[int(c) for c in row] for row in model.palette],
                "precision": model.precision, "backend": model.backend,
                "requested_precision": model.requested_precision, "requested_backend": model.requested_backend,
                "test_settings": {k: list(v) if isinstance(v, tuple) else v for k, v in model.settings.items()},
                "limits": asdict(limits), "queue": queue.stats(), "auth": token is not None,
                "version": __version__}

    @app.post("/v1/segment")
    async def segment(request: Request) -> Response:
        fmt = request.query_params.get("format", "label")
        if fmt not in FORMATS:
            return _error(400, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        try:
            queue.admit()  # before the body is read: a full queue costs no memory
        except Busy as e:
            return _error(503, str(e), {"Retry-After": str(e.retry_after)})
        try:
            body = await _read_body(request, limits)
            data = await _image_field(request, body)
            del body
            out, media = await queue.run(_segment, model, limits, data, fmt,
                                         request.query_params.get("overlay") in ("1", "true"))
        except Refusal as e:
            return _error(e.status, e.message, e.headers)
        except ClientDisconnect:
            return _error(400, "the client closed the connection before the body arrived")
        finally:
            queue.release()
        if isinstance(out, dict):
            return JSONResponse(out)
        return Response(out, media_type=media)

    return app
