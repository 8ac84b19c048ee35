"""``pspnet serve``: the model behind an HTTP service and a web page (:mod:`pspnet.serve`)."""

from __future__ import annotations

import argparse
import os

from . import options as opt


def run(args: argparse.Namespace) -> int:
    from ..api import load
    from ..serve import serve
    from ..serve.app import Limits
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                    queue_size=args.queue_size, body_timeout=args.body_timeout)
    # the checks that need no model first: a public --host without a token is refused before loading
    from ..serve import TOKEN_ENV, is_loopback
    if not is_loopback(args.host) and not (args.token or os.environ.get(TOKEN_ENV)):
        from ..errors import ConfigError
        raise ConfigError(f"--host {args.host} makes the model reachable from other machines: give a bearer token "
                          f"with --token or {TOKEN_ENV} (clients send 'Authorization: Bearer <token>'), or keep the "
                          f"default --host 127.0.0.1")
    model = load(args.weights, precision=args.precision, backend=args.backend, device=args.device,
                 max_memory=args.max_memory, base_size=args.base_size, flip=args.flip)
    print(model.settings_line(), flush=True)
    serve(model, host=args.host, port=args.port, token=args.token, limits=limits)
    return 0


def add_parser(sub) -> None:
    sv = sub.add_parser("serve", help="an HTTP service and a web page for one model (needs pip install "
                                      "\"pspnet[serve]\"): POST /v1/segment, GET /v1/model, /healthz, the page at /")
    sv.add_argument("--weights", "-w", help="weight file or catalogue name (default: the packaged CamVid model)")
    sv.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                    help="as pspnet predict's (default auto: the fastest mode that keeps the labels on this CPU)")
    sv.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"],
                    help="as pspnet predict's (default torch)")
    sv.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    sv.add_argument("--base-size", type=opt.base_size,
                    help="resize the long side to this first (0: no resize; default: what the weights record)")
    sv.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                    help="also average the mirrored image (default: what the weights record)")
    sv.add_argument("--max-memory", type=opt.memory_size, metavar="SIZE",
                    help="memory budget, e.g. 4G (default: 3/4 of the available memory); larger images get 413")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1, this machine only; any other needs --token)")
    sv.add_argument("--port", type=opt.int_in(0, 65535), default=8000, help="port (default 8000)")
    sv.add_argument("--token", help="bearer token every /v1/ request must carry (default: $PSPNET_SERVE_TOKEN); "
                                    "required with a --host other than loopback")
    sv.add_argument("--max-body-mb", type=opt.float_in(0, 1024, lo_open=True), default=20.0,
                    help="largest request body in MiB (default 20; 413 beyond, before the rest is read)")
    sv.add_argument("--max-pixels", type=opt.int_in(1, 20_000 * 20_000), default=4096 * 4096,
                    help="largest image in pixels (default 4096x4096; 413 beyond, from the header, before decoding)")
    sv.add_argument("--queue-size", type=opt.int_in(1, 4096), default=32,
                    help="requests that may wait behind the running one (default 32; 503 with Retry-After beyond)")
    sv.add_argument("--body-timeout", type=opt.float_in(0, 3600, lo_open=True), default=30.0,
                    help="seconds a request body may take to arrive (default 30; 408 beyond)")
    sv.set_defaults(func=run)
