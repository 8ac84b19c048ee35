"""``pspnet serve`` started as a real process on 127.0.0.1 (a free port), with the packaged model."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def need_serve_extra() -> None:
    """Skip (with the reason) where the serve extra is not installed."""
    for name in ("fastapi", "uvicorn", "multipart"):
        pytest.importorskip(name, reason="pspnet serve needs the serve extra: pip install -e '.[serve]'")

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``pspnet serve`` process; ``request`` talks HTTP/1.1 to it (stdlib only)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.log = io.BytesIO()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        env.pop("PSPNET_SERVE_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "pspnet.cli", "serve", "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pspnet serve exited {self.proc.returncode}: {self.proc.stdout.read().decode()}")
            try:
                if self.request("GET", "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("pspnet serve did not answer /healthz within 180 s")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 120) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def segment(self, image: bytes | None, query: str = "", field: str = "image", headers: dict | None = None,
                timeout: float = 120) -> tuple[int, dict, bytes]:
        body, ctype = multipart({field: image} if image is not None else {})
        return self.request("POST", f"/v1/segment{query}", body, {"Content-Type": ctype, **(headers or {})},
                            timeout=timeout)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.stdout.read().decode(errors="replace")


def multipart(files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files.items():
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\n"
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def scene_png(h: int = 72, w: int = 96, seed: int = 0) -> bytes:
    """A small street-like frame (sky, buildings, road, noise) as PNG bytes."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    img[: h // 3] = (128, 160, 220)
    img[h // 3: 2 * h // 3] = (120, 90, 70)
    img[2 * h // 3:] = (110, 100, 120)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def as_json(body: bytes) -> dict:
    return json.loads(body.decode())


@pytest.fixture(scope="session")
def server():
    need_serve_extra()
    s = Server("--precision", "fp32", "--max-body-mb", "1", "--max-pixels", "1000000", "--queue-size", "2",
               "--body-timeout", "2")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def start_server():
    """``start_server(*args)``: another server process (stop it with ``.stop()``)."""
    need_serve_extra()
    return Server


@pytest.fixture(scope="session")
def png():
    """``png(h, w, seed)``: a small street-like frame's PNG bytes."""
    return scene_png
