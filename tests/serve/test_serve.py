"""``pspnet serve`` as a real process on 127.0.0.1 with the packaged model: segment, every bad body, a
burst of concurrent requests against a small queue, /healthz during and after it, the bearer token."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image

import pspnet


def _json(body: bytes) -> dict:
    return json.loads(body.decode())


def test_health_and_model(server):
    status, _, body = server.request("GET", "/healthz")
    assert status == 200 and _json(body) == {"status": "ok"}
    status, _, body = server.request("GET", "/v1/model")
    info = _json(body)
    assert status == 200 and info["weights"] == "packaged" and len(info["classes"]) == 11
    assert len(info["palette"]) == 11 and info["precision"] == "fp32" and info["backend"] == "torch"
    assert info["limits"]["max_pixels"] == 1_000_000 and info["limits"]["max_body_bytes"] == 2**20
    assert info["auth"] is False
    from pspnet.serve.app import Limits
    assert Limits().queue_size >= 16  # the default queue holds at least 16 waiting requests
    status, headers, body = server.request("GET", "/")
    assert status == 200 and b'id="segment"' in body and headers["content-type"].startswith("text/html")


def test_segment_gives_the_label_png_of_pspnet_predict(server, png, tmp_path):
    data = png(72, 96, 1)
    status, headers, body = server.segment(data)
    assert status == 200 and headers["content-type"] == "image/png", body[:200]
    labels = np.asarray(Image.open(io.BytesIO(body)))
    assert labels.shape == (72, 96) and labels.dtype == np.uint8
    frame = tmp_path / "frame.png"
    frame.write_bytes(data)
    expected = pspnet.load(precision="fp32").predict(frame).labels  # = pspnet predict's (tests/test_api.py)
    np.testing.assert_array_equal(labels, expected)
    for fmt, mode in (("overlay", "RGB"), ("color", "RGB")):
        status, headers, body = server.segment(data, f"?format={fmt}")
        assert status == 200 and Image.open(io.BytesIO(body)).mode == mode
    status, headers, body = server.segment(data, "?format=json")
    out = _json(body)
    assert status == 200 and out["width"] == 96 and out["height"] == 72
    assert sum(c["pixels"] for c in out["classes"]) == 72 * 96
    assert abs(sum(c["share"] for c in out["classes"]) - 1) < 1e-4
    inline = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["label_png"]))))
    np.testing.assert_array_equal(inline, expected)
    assert {c["id"] for c in out["classes"]} == set(np.unique(expected).tolist())


def _raw(port: int, head: bytes, body: bytes = b"", close_write: bool = False, timeout: float = 20) -> bytes:
    """Send ``head`` + ``body`` on a socket and return what comes back before the server closes or stops
    sending (or ``timeout`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"}" in chunks[-1]:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def test_every_bad_body_gets_a_4xx_json_error(server, png):
    data = png()
    cases = {
        "no image field": (server.segment(data, field="photo"), 400),
        "empty body": (server.request("POST", "/v1/segment", b"",
                                      {"Content-Type": "multipart/form-data; boundary=x"}), 400),
        "not multipart": (server.request("POST", "/v1/segment", data, {"Content-Type": "image/png"}), 400),
        "empty image": (server.segment(b""), 400),
        "not an image": (server.segment(b"hello, this is text and not a picture" * 10), 422),
        "truncated image": (server.segment(data[: len(data) // 2]), 422),
        "bad format": (server.segment(data, "?format=jpeg"), 400),
    }
    bomb = io.BytesIO()
    Image.new("L", (4000, 4000)).save(bomb, format="PNG")  # 16 M pixels in about 16 kB: over --max-pixels 1M
    assert len(bomb.getvalue()) < 2**20
    cases["decompression bomb"] = (server.segment(bomb.getvalue()), 413)
    cases["body over the limit"] = (server.segment(b"\0" * (2**20 + 1)), 413)
    for what, ((status, headers, body), expected) in cases.items():
        assert status == expected, (what, status, body[:300])
        assert headers["content-type"] == "application/json" and _json(body)["error"], what
    # a huge Content-Length: refused from the header, nothing of the body is read (none is sent)
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {10**10}\r\n\r\n").encode()
    start = time.monotonic()
    reply = _raw(server.port, head)
    assert reply.startswith(b"HTTP/1.1 413") and b'"error"' in reply and time.monotonic() - start < 10, reply[:300]
    # a body that stops arriving: 408 after --body-timeout (2 s), not a hang
    head = (b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 5000\r\n\r\n")
    start = time.monotonic()
    reply = _raw(server.port, head, b"--x\r\n")
    assert reply.startswith(b"HTTP/1.1 408") and b'"error"' in reply and time.monotonic() - start < 15, reply[:300]
    # a body cut short (the client closes): the server carries on
    _raw(server.port, head, b"--x\r\n", close_write=True)
    status, _, body = server.segment(data)
    assert status == 200 and body.startswith(b"\x89PNG")
    assert server.request("GET", "/healthz")[0] == 200


def test_a_burst_is_queued_or_refused_with_retry_after_and_health_stays_fast(server, png):
    data = png(96, 128, 2)
    results: list[tuple[int, dict, bytes]] = []
    lock = threading.Lock()

    def one() -> None:
        r = server.segment(data, timeout=120)
        with lock:
            results.append(r)
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    health = []
    while any(t.is_alive() for t in threads):  # /healthz answers while inference runs
        start = time.monotonic()
        status = server.request("GET", "/healthz", timeout=10)[0]
        health.append((status, time.monotonic() - start))
        time.sleep(0.1)
    for t in threads:
        t.join(120)
    statuses = sorted(r[0] for r in results)
    assert len(results) == 8 and set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 3, statuses  # the running one and the two --queue-size places
    for status, headers, body in results:
        if status == 503:
            assert int(headers["retry-after"]) >= 1 and "busy" in _json(body)["error"]
        else:
            assert body.startswith(b"\x89PNG")
    assert health and all(s == 200 for s, _ in health) and max(t for _, t in health) < 2.0, health
    # after the burst: healthy, and serving
    assert server.request("GET", "/healthz")[0] == 200
    assert server.segment(data)[0] == 200


def test_bearer_token(start_server, png):
    s = start_server("--precision", "fp32", "--token", "s3cret")
    try:
        assert s.request("GET", "/healthz")[0] == 200  # open: for the load balancer's checks
        status, headers, body = s.request("GET", "/v1/model")
        assert status == 401 and "Bearer" in _json(body)["error"] and headers["www-authenticate"] == "Bearer"
        assert s.segment(png())[0] == 401
        assert s.segment(png(), headers={"Authorization": "Bearer wrong"})[0] == 401
        assert s.request("GET", "/v1/model", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert s.segment(png(), headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        out = s.stop()
    assert "need 'Authorization: Bearer <token>'" in out


def test_a_public_host_needs_a_token():
    out = subprocess.run([sys.executable, "-m", "pspnet.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                         capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PSPNET_SERVE_TOKEN": ""})
    assert out.returncode == 2 and "--token or PSPNET_SERVE_TOKEN" in out.stderr, out.stderr
