"""``pspnet serve``: the model behind an HTTP service and a web page (the ``serve`` extra:
``pip install "pspnet[serve]"``: FastAPI, uvicorn, python-multipart).

:func:`serve` binds 127.0.0.1 by default; any other address needs a bearer token (``--token`` or
``PSPNET_SERVE_TOKEN``), and says so when it starts. The routes and limits: :mod:`pspnet.serve.app`.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from ..errors import ConfigError

__all__ = ["TOKEN_ENV", "is_loopback", "serve"]

log = logging.getLogger("pspnet.serve")
TOKEN_ENV = "PSPNET_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _need_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"pspnet serve needs the serve extra ({e.name} is missing): pip install \"pspnet[serve]\"") \
            from None


def serve(model, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, limits=None,
          log_level: str = "info") -> None:
    """Run the service for ``model`` (a :class:`pspnet.api.Model`) until interrupted.

    ``token`` (default: the ``PSPNET_SERVE_TOKEN`` environment variable): every ``/v1/`` request must carry
    ``Authorization: Bearer <token>``; required when ``host`` is not a loopback address."""
    _need_extra()
    import uvicorn

    from .app import create_app
    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} makes the model reachable from other machines: give a bearer token with "
                          f"--token or {TOKEN_ENV} (clients send 'Authorization: Bearer <token>'), or keep the "
                          f"default --host 127.0.0.1")
    app = create_app(model, limits, token)
    where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(f"pspnet serve: {model.weights} ({model.num_classes} classes, precision {model.requested_precision}, "
          f"backend {model.requested_backend}) on {where}/ (page), {where}/v1/segment (API)", flush=True)
    if token:
        print(f"pspnet serve: {host} {'is not loopback: ' if not is_loopback(host) else ''}requests to /v1/ need "
              f"'Authorization: Bearer <token>' (401 without it)", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5,
                            server_header=False)
    try:
        uvicorn.Server(config).run()
    finally:
        app.state.queue.close()
