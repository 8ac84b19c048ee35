"""Load benchmark of ``pspnet serve``: images per second and p50/p99 latency at 1, 4 and 16 concurrent
clients against the packaged model on 127.0.0.1, the server's peak RSS before and after, and
``pspnet predict``'s images per second on the same images (the same model, precision and settings,
``Model.predict_files``: what the command runs once its model is loaded) for comparison.

    python bench/serve_load.py --images ../shared/data/camvid/val --count 8 --out docs/results/serve_load_DATE.txt

Bounded: ``--requests`` per client level (default 24), every request to 127.0.0.1, the server stopped at
the end. Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def post(port: int, data: bytes) -> tuple[int, float]:
    body, ctype = multipart(data)
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/segment", body=body, headers={"Content-Type": ctype})
        r = conn.getresponse()
        r.read()
        return r.status, time.perf_counter() - start
    finally:
        conn.close()


def get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def level(port: int, images: list[bytes], clients: int, requests: int) -> dict:
    """``requests`` requests from ``clients`` threads, each sending one image after another."""
    lat: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        for i in counter:  # shared: the clients take the next request number until none is left
            status, t = post(port, images[i % len(images)])
            with lock:
                statuses.append(status)
                lat.append(t)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat.sort()
    ok = statuses.count(200)
    return {"clients": clients, "requests": requests, "ok": ok, "wall": wall, "ips": ok / wall,
            "p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", help="a folder of images (default: generated 360x480 street-like frames)")
    ap.add_argument("--count", type=int, default=8, help="images used (default 8)")
    ap.add_argument("--requests", type=int, default=24, help="requests per client level (default 24)")
    ap.add_argument("--levels", default="1,4,16", help="concurrent clients (default 1,4,16)")
    ap.add_argument("--precision", default="auto", help="as pspnet serve's (default auto)")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args()
    sys.path.insert(0, str(SRC))
    import numpy as np
    from PIL import Image

    import pspnet
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    if args.images:
        files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg"))[:args.count]
    else:
        rng = np.random.default_rng(0)
        files = []
        for i in range(args.count):
            img = np.zeros((360, 480, 3), np.float32)
            img[:120], img[120:240], img[240:] = (128, 160, 220), (120, 90, 70), (110, 100, 120)
            f = tmp / f"frame{i}.png"
            Image.fromarray(np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)).save(f)
            files.append(f)
    datas = [f.read_bytes() for f in files]
    lines = [f"pspnet serve load benchmark, {time.strftime('%Y-%m-%d %H:%M')}, pspnet {pspnet.__version__}",
             f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s): {cpu_name()}",
             f"images: {len(files)} from {args.images or 'generated 360x480 frames'}; precision {args.precision}"]

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "pspnet.cli", "serve", "--port", str(port), "--precision",
                             args.precision], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("pspnet serve did not start") from None
                time.sleep(0.5)
        post(port, datas[0])  # warm-up: auto decides, the graph is built
        info = json.loads(get(port, "/v1/model"))
        precision, backend = info["precision"], info["backend"]
        lines.append(f"server: {precision}/{backend} (asked: {args.precision})")
        # pspnet predict on the same images, asked as the server was: the model loaded and prepared once
        # (one image first, as the server's warm-up request), then what the command runs (Model.predict_files)
        model = pspnet.load(precision=args.precision)  # decides as the server did (no job length known)
        model.predict(files[0])
        lines.append(f"pspnet predict's mode here: {model.precision}/{model.backend}")

        def predict_rate() -> float:
            start = time.perf_counter()
            model.predict_files(files, tmp / "predict", progress=False)
            return len(files) / (time.perf_counter() - start)
        predict_ips = predict_rate()
        lines.append(f"pspnet predict (Model.predict_files, writes 3 PNGs per image): {predict_ips:.3f} images/s "
                     f"({model.settings_line()})")
        rss, peak = rss_kib(proc.pid)
        lines.append(f"server after loading and one request: RSS {rss / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB")
        lines.append(f"{'clients':>7} {'requests':>8} {'ok':>4} {'images/s':>9} {'p50 s':>7} {'p99 s':>7} "
                     f"{'vs predict':>10} {'peak RSS MiB':>12}")
        for n in (int(x) for x in args.levels.split(",")):
            r = last = level(port, datas, n, args.requests)
            peak = rss_kib(proc.pid)[1]
            lines.append(f"{r['clients']:>7} {r['requests']:>8} {r['ok']:>4} {r['ips']:>9.3f} {r['p50']:>7.3f} "
                         f"{r['p99']:>7.3f} {r['ips'] / predict_ips:>9.1%} {peak / 1024:>12.0f}")
            print(lines[-1], flush=True)
        rss, peak = rss_kib(proc.pid)
        lines.append(f"server at the end: RSS {rss / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB")
        again = predict_rate()  # the machine may have changed meanwhile (shared cores): measured again
        lines.append(f"pspnet predict again after the load: {again:.3f} images/s; the service at "
                     f"{args.levels.split(',')[-1]} clients / the mean of both predict runs: "
                     f"{last['ips'] / ((predict_ips + again) / 2):.1%}")
    finally:
        proc.terminate()
        proc.wait(30)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
