"""The checkpoint catalogue (``pspnet models``) and verified downloads (``pspnet download``), issue 14.

Every transfer goes to an ``http.server`` on 127.0.0.1 started here (port 0, shut down after each
test); a guard makes any other connection fail, so nothing touches the internet. The served
checkpoint is a small PSPNet-18 saved in the original release's layout with its real sha256; the
catalogue gains local entries from a JSON file named in ``$PSPNET_CATALOGUE`` and the cache is a
temporary ``$PSPNET_HOME``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlparse

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pspnet.cli import main
from pspnet.hub import catalogue as cat
from pspnet.hub.catalogue import ZooFile
from pspnet.hub.download import (
    ChecksumError,
    CorruptDownloadError,
    HTMLResponseError,
    ManualDownloadRequired,
    NotFoundError,
    TruncatedDownloadError,
    cached_weights_path,
    download,
    fetch_file,
    resolve_weights,
)
from pspnet.models.weights import load_weights, read_state_dict

N_CLASSES = 3


# ------------------------------------------------------------------ no internet
@pytest.fixture(autouse=True)
def _local_only(monkeypatch, tmp_path):
    """Connections to anything but 127.0.0.1 fail; proxies are off; the cache and catalogue are temporary."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to reach {address}")
        return real(address, *args, **kwargs)
    monkeypatch.setattr(socket, "create_connection", guarded)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PSPNET_CATALOGUE", raising=False)


# ------------------------------------------------------------------ a local server
def _handler(files: dict[str, bytes], log: list):
    class Handler(BaseHTTPRequestHandler):
        timeout = 10

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/octet-stream", extra=()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            log.append((self.path, self.headers.get("Range")))
            kind, _, name = self.path.lstrip("/").partition("/")
            if kind == "html":  # a login / quota page with status 200
                return self._send(200, b"<html><body>Sign in to continue</body></html>", "text/html; charset=utf-8")
            if kind == "html-body":  # the same, mislabelled as binary
                return self._send(200, b"\n<!DOCTYPE html><html>quota exceeded</html>")
            data = files.get(name)
            if kind == "missing" or data is None:
                return self.send_error(404, "Not Found")
            if kind == "drop":  # promise the whole file, send half, hang up
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            rng = self.headers.get("Range")
            if kind == "files" and rng:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                if start >= len(data):
                    return self._send(416, b"", extra=[("Content-Range", f"bytes */{len(data)}")])
                content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._send(206, data[start:], extra=[("Content-Range", content_range)])
            return self._send(200, data)  # "files" without Range, and "norange" always
    return Handler


@pytest.fixture
def server():
    files: dict[str, bytes] = {}
    log: list = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files, log))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield base, files, log
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------ a small original-release checkpoint
@pytest.fixture(scope="module")
def release_ckpt(tmp_path_factory, tiny_pspnet):
    """(bytes of a train_epoch_*.pth-style checkpoint, the model it came from)."""
    model = tiny_pspnet(N_CLASSES, head_channels=64, aux_channels=32).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("release") / "train_epoch_1.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path.read_bytes(), model


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_entry(name: str, url: str, **kw) -> dict:
    d = {"name": name, "source": "semseg", "dataset": "tiny", "zoo_dataset": "", "num_classes": N_CLASSES,
         "backbone": "ResNet-18", "depth": 18, "url": url, "miou": 12.5, "protocol": "test protocol",
         "base_size": 64, "test_crop": 64}
    d.update(kw)
    return d


def use_catalogue(monkeypatch, tmp_path, entries: list[dict]) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setenv("PSPNET_CATALOGUE", str(path))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------ the catalogue
def test_models_json_has_20_entries_from_the_three_zoos_with_urls_mious_and_checksums(capsys):
    assert main(["models", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert len(entries) >= 20
    assert len({e["name"] for e in entries}) == len(entries)
    by_source = {s: [e for e in entries if e["source"] == s] for s in ("semseg", "mmsegmentation", "csailvision")}
    assert all(by_source.values()), {s: len(v) for s, v in by_source.items()}
    assert sum(map(len, by_source.values())) == len(entries)
    for e in entries:
        assert {"name", "source", "dataset", "url", "miou", "protocol"} <= set(e)
        assert urlparse(e["url"]).hostname == cat.SOURCES[e["source"]].host, e["url"]
        assert isinstance(e["miou"], float) and 10 < e["miou"] < 100 and e["protocol"]
        for f in e["files"]:
            assert urlparse(f["url"]).hostname == cat.SOURCES[e["source"]].host
        if e["source"] == "mmsegmentation":  # file name ends in the first 8 hex digits of its sha256
            assert re.fullmatch(r"[0-9a-f]{8}", e["sha256_prefix"])
            assert e["url"].endswith(f"-{e['sha256_prefix']}.pth") and e["sha256"] is None
        else:  # neither CSAILVision nor the original release publishes a checksum
            assert e["sha256"] is None and e["sha256_prefix"] is None
        if e["source"] == "csailvision":
            assert [Path(urlparse(f["url"]).path).name.split("_")[0] for f in e["files"]] == ["encoder", "decoder"]
    # a few numbers as the zoos' own tables state them
    got = {e["name"]: e["miou"] for e in entries}
    assert got["mmseg-pspnet_r50-d8_4xb2-40k_cityscapes-512x1024"] == 77.85
    assert got["csail-ade20k-resnet50dilated-ppm_deepsup"] == 42.14
    assert got["semseg-cityscapes-pspnet101"] == 78.63
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert all(e["name"] in text for e in entries) and "2966598c" in text


def test_catalogue_entries_convert_with_the_zoo_layouts_they_name():
    for e in cat.CATALOGUE:
        assert e.layout == {"mmsegmentation": "mmsegmentation", "csailvision": "csailvision",
                            "semseg": "original-release"}[e.source]
        assert e.classes is not None and len(e.classes) == e.num_classes, e.name
        assert e.palette is not None and len(e.palette) == e.num_classes
        assert "-d32" not in e.url  # output stride 32 is not built
    release = cat.find_entry("semseg-cityscapes-pspnet50")
    assert release.release_test_settings() == {"mode": "sliding", "base_size": 2048, "crop_size": [713, 713],
                                               "stride_rate": 2 / 3, "scales": [1.0], "flip": True,
                                               "protocol": "release"}
    assert cat.find_entry("csail-ade20k-resnet101dilated-ppm_deepsup").files[1].filename == "decoder_epoch_25.pth"
    csail = cat.find_entry("csail-ade20k-resnet101dilated-ppm_deepsup")
    assert cat.entry_for_url(csail.files[1].url) is csail  # a URL of either half downloads the pair


# ------------------------------------------------------------------ good file -> converted -> --weights NAME
def test_good_file_downloads_converts_and_predicts_with_weights_name(server, release_ckpt, monkeypatch, tmp_path,
                                                                    capsys):
    base, files, log = server
    data, model = release_ckpt
    files["train_epoch_1.pth"] = data
    use_catalogue(monkeypatch, tmp_path, [local_entry("tiny-release", f"{base}/files/train_epoch_1.pth",
                                                      sha256=sha(data))])
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    # before the download: a clear error naming the command that fixes it
    assert main(["predict", str(image), "--weights", "tiny-release", "--out", str(tmp_path / "p0")]) == 2
    assert "pspnet download tiny-release" in capsys.readouterr().err

    assert main(["download", "tiny-release", "--no-progress"]) == 0
    out = capsys.readouterr().out
    weights = cached_weights_path("tiny-release")
    assert f"wrote {weights}" in out and "matches the expected full sha256" in out
    home = tmp_path / "home"
    assert [p.relative_to(home).as_posix() for p in files_under(home)] == [
        "downloads/tiny-release/train_epoch_1.pth", "weights/tiny-release.safetensors"]
    assert (home / "downloads/tiny-release/train_epoch_1.pth").read_bytes() == data
    # the converted model is the served one, and carries the release protocol and where it came from
    converted, meta = load_weights(weights)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-5)
    assert meta["test_settings"]["mode"] == "sliding" and meta["test_settings"]["crop_size"] == [64, 64]
    assert meta["catalogue"]["name"] == "tiny-release" and meta["catalogue"]["sha256"] == [sha(data)]

    assert main(["predict", str(image), "--weights", "tiny-release", "--out", str(tmp_path / "p1"),
                 "--no-progress", "--device", "cpu", "--precision", "fp32"]) == 0
    assert "(weights)" in capsys.readouterr().out  # the recorded test settings were used
    label = np.array(Image.open(tmp_path / "p1" / "img_label.png"))
    assert label.shape == (48, 64) and label.max() < N_CLASSES
    # eval and export resolve the name the same way (one function, called before every command)
    seen = []

    def fake_load(weights, *a, **k):
        seen.append(Path(weights))
        raise SystemExit(0)
    monkeypatch.setattr("pspnet.inference.loading.load_for_inference", fake_load)
    for argv in (["eval", "--weights", "tiny-release", "--dataset", "camvid", "--data-root", str(tmp_path)],
                 ["export", "--weights", "tiny-release", "--out", str(tmp_path / "m.onnx")]):
        with pytest.raises(SystemExit):
            main(argv)
    assert seen == [weights, weights]
    # a second download reuses the verified file; --out writes elsewhere
    n = len(log)
    assert main(["download", "tiny-release", "--no-progress", "--out", str(tmp_path / "copy.safetensors")]) == 0
    assert len(log) == n and "already downloaded" in capsys.readouterr().out
    assert (tmp_path / "copy.safetensors").is_file()


def test_wrong_checksum_is_refused_and_leaves_nothing(server, release_ckpt, monkeypatch, tmp_path, capsys):
    base, files, _ = server
    files["train_epoch_1.pth"] = release_ckpt[0]
    use_catalogue(monkeypatch, tmp_path, [local_entry("tiny-bad", f"{base}/files/train_epoch_1.pth",
                                                      sha256=sha(b"another file"))])
    with pytest.raises(ChecksumError, match="is not the expected"):
        download("tiny-bad", progress=False, say=lambda s: None)
    assert files_under(tmp_path / "home") == []
    assert main(["download", "tiny-bad", "--no-progress"]) == 2
    assert "is not the expected" in capsys.readouterr().err
    assert files_under(tmp_path / "home") == []
    with pytest.raises(Exception, match="not downloaded yet"):
        resolve_weights("tiny-bad")


def test_mmseg_style_sha256_prefix_is_verified(server, monkeypatch, tmp_path):
    """mmsegmentation's file names end in the first 8 hex digits of the file's sha256."""
    base, files, _ = server
    data = b"\x80\x02not a real checkpoint" * 100
    good, bad = sha(data)[:8], "00000000" if not sha(data).startswith("00000000") else "11111111"
    files[f"pspnet_x-{good}.pth"] = files[f"pspnet_x-{bad}.pth"] = data
    use_catalogue(monkeypatch, tmp_path, [
        local_entry("mm-good", f"{base}/files/pspnet_x-{good}.pth", source="mmsegmentation", sha256_prefix=good),
        local_entry("mm-bad", f"{base}/files/pspnet_x-{bad}.pth", source="mmsegmentation", sha256_prefix=bad)])
    with pytest.raises(ChecksumError, match=f"does not start with {bad}"):
        download("mm-bad", progress=False, say=lambda s: None)
    assert files_under(tmp_path / "home") == []
    # the right prefix passes the check; the bytes are then no checkpoint: a named error, nothing kept
    with pytest.raises(CorruptDownloadError, match="not a checkpoint pspnet can convert"):
        download("mm-good", progress=False, say=lambda s: None)
    assert files_under(tmp_path / "home") == []


def test_resume_continues_an_interrupted_transfer_from_the_partial_file(server, release_ckpt, monkeypatch, tmp_path):
    base, files, log = server
    data = release_ckpt[0]
    files["train_epoch_1.pth"] = data
    use_catalogue(monkeypatch, tmp_path, [local_entry("tiny-resume", f"{base}/drop/train_epoch_1.pth",
                                                      sha256=sha(data))])
    with pytest.raises(TruncatedDownloadError, match="run the same command again to resume"):
        download("tiny-resume", progress=False, say=lambda s: None)
    home = tmp_path / "home"
    part = home / "downloads/tiny-resume/train_epoch_1.pth.part"
    assert files_under(home) == [part] and part.stat().st_size == len(data) // 2
    # the same download from a server that completes it (a mirror given with --from): Range from the partial file
    said = []
    res = download("tiny-resume", sources=[f"{base}/files/train_epoch_1.pth"], progress=False, say=said.append)
    assert log[-1] == ("/files/train_epoch_1.pth", f"bytes={len(data) // 2}-")
    assert any(s.startswith("resuming train_epoch_1.pth.part") for s in said)
    assert res.sha256 == [sha(data)] and (home / "downloads/tiny-resume/train_epoch_1.pth").read_bytes() == data
    assert not part.exists() and cached_weights_path("tiny-resume").is_file()


def test_server_that_ignores_range_sends_the_whole_file_again(server, tmp_path):
    base, files, log = server
    data = bytes(range(256)) * 64
    files["blob.bin"] = data
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)  # not even a prefix of the file
    assert fetch_file(f"{base}/norange/blob.bin", dest, sha256=sha(data), progress=False) == sha(data)
    assert log[-1][1] == "bytes=1000-" and dest.read_bytes() == data


@pytest.mark.parametrize("route, error, match", [
    ("missing/train_epoch_1.pth", NotFoundError, "HTTP 404"),
    ("html/train_epoch_1.pth", HTMLResponseError, r"web page \(text/html"),
    ("html-body/train_epoch_1.pth", HTMLResponseError, "body starts with"),
])
def test_404_and_html_pages_are_named_errors_and_leave_nothing(server, monkeypatch, tmp_path, route, error, match):
    base, _, _ = server
    use_catalogue(monkeypatch, tmp_path, [local_entry("tiny-web", f"{base}/{route}")])
    with pytest.raises(error, match=match):
        download("tiny-web", progress=False, say=lambda s: None)
    assert files_under(tmp_path / "home") == []


def test_truncated_file_without_a_published_checksum_is_a_corrupt_download(server, release_ckpt, monkeypatch,
                                                                            tmp_path):
    """A server that closes early *without* a Content-Length: only the checkpoint reader can tell."""
    base, files, _ = server
    files["train_epoch_1.pth"] = release_ckpt[0][: len(release_ckpt[0]) // 3]
    use_catalogue(monkeypatch, tmp_path, [local_entry("tiny-cut", f"{base}/files/train_epoch_1.pth")])
    with pytest.raises(CorruptDownloadError, match="deleted"):
        download("tiny-cut", progress=False, say=lambda s: None)
    assert files_under(tmp_path / "home") == []


def test_a_source_without_direct_links_needs_the_file_given_with_from(release_ckpt, monkeypatch, tmp_path):
    data, model = release_ckpt
    local = tmp_path / "train_epoch_1.pth"
    local.write_bytes(data)
    use_catalogue(monkeypatch, tmp_path, [local_entry("tiny-drive", "https://drive.google.com/open?id=x",
                                                      downloadable=False, files=[{
                                                          "url": "https://drive.google.com/open?id=x",
                                                          "filename": "train_epoch_1.pth", "sha256": sha(data)}])])
    with pytest.raises(ManualDownloadRequired, match="--from train_epoch_1.pth"):
        download("tiny-drive", progress=False, say=lambda s: None)
    with pytest.raises(ManualDownloadRequired):  # the real original-release entries too
        download("semseg-ade20k-pspnet50", progress=False, say=lambda s: None)
    res = download("tiny-drive", sources=[str(local)], progress=False, say=lambda s: None)
    state, _ = read_state_dict(res.weights)
    assert torch.equal(state["cls.4.weight"], model.state_dict()["cls.4.weight"])
    assert local.read_bytes() == data  # the user's file is used in place, untouched


def test_csailvision_entry_downloads_and_converts_the_encoder_decoder_pair(server, monkeypatch, tmp_path, tiny_pspnet,
                                                                          csail_checkpoints):
    base, files, _ = server
    # CSAIL's ResNet-18 variant (stem widths, contracted dilation, dilated BasicBlock conv2, PPM width)
    model = tiny_pspnet(N_CLASSES, seed=1, stem_channels=(64, 64, 128), contract_dilation=True,
                        basic_conv2_dilated=True, ppm_channels=64, head_channels=64, aux_channels=32,
                        align_corners=False).eval()
    for path in csail_checkpoints(model, tmp_path):
        files[path.name] = path.read_bytes()
    use_catalogue(monkeypatch, tmp_path, [local_entry("tiny-csail", "", source="csailvision", files=[
        {"url": f"{base}/files/encoder_epoch_20.pth", "sha256": sha(files["encoder_epoch_20.pth"])},
        {"url": f"{base}/files/decoder_epoch_20.pth"}])])
    res = download(f"{base}/files/decoder_epoch_20.pth", progress=False, say=lambda s: None)  # either URL: the pair
    assert res.name == "tiny-csail" and [p.name for p in res.files] == ["encoder_epoch_20.pth", "decoder_epoch_20.pth"]
    converted, meta = load_weights(res.weights)
    x = torch.randn(1, 3, 57, 57)
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-5)
    assert meta["source_kind"] == "csailvision" and len(meta["catalogue"]["sha256"]) == 2


def test_unknown_names_suggest_close_ones(capsys):
    assert main(["download", "mmseg-pspnet_r50-d8_4xb2-40k_cityscapes-512x1025", "--no-progress"]) == 2
    assert "did you mean mmseg-pspnet_r50-d8_4xb2-40k_cityscapes-512x1024" in capsys.readouterr().err
    with pytest.raises(Exception, match="not a catalogue model or a downloaded name"):
        resolve_weights("no-such-model")
    assert resolve_weights("runs/x/final.safetensors") == "runs/x/final.safetensors"  # paths pass through


# ------------------------------------------------------------------ hostile file names (issue 41)
def _victim(tmp_path: Path) -> Path:
    """A file of the user's outside the cache that no download may read, write or delete."""
    victim = tmp_path / "elsewhere" / "v.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("the user's notes")
    return victim


@pytest.mark.parametrize("tail", [
    "ABSOLUTE",                                             # %2Ftmp%2F...%2Fv.txt: an absolute path
    "..%2F..%2F..%2Felsewhere%2Fv.txt",                      # climbs from downloads/<name>/ to tmp_path
    "%2e%2e%2F%2e%2e%2F%2e%2e%2Felsewhere%2Fv.txt",
    "..%5C..%5C..%5Celsewhere%5Cv.txt",                      # backslashes
    "%EF%BC%8E%EF%BC%8E%EF%BC%8F%EF%BC%8E%EF%BC%8E%EF%BC%8F%EF%BC%8E%EF%BC%8E%EF%BC%8Felsewhere%EF%BC%8Fv.txt",
])                                                          # fullwidth dots and solidus (NFKC: ../)
def test_a_crafted_url_cannot_delete_a_file_outside_the_cache(tail, tmp_path, capsys):
    """Issue 41 (critical): the URL's decoded name joined the cache folder, the user's file counted as
    'already downloaded', failed to convert and was deleted, with no server listening (port 9)."""
    victim = _victim(tmp_path)
    if tail == "ABSOLUTE":
        tail = quote(str(victim), safe="")
    assert main(["download", f"http://127.0.0.1:9/x/{tail}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert victim.read_text() == "the user's notes", err
    assert "Traceback" not in err and "cannot download" in err
    assert [p.name for p in files_under(tmp_path / "elsewhere")] == ["v.txt"]


def test_a_crafted_url_cannot_write_outside_the_cache(server, release_ckpt, tmp_path):
    """``..%2F`` forms wrote the downloaded file (or its .part) outside the cache."""
    base, files, _ = server
    name = "..%2F..%2F..%2Fescaped.pth"
    files[name] = release_ckpt[0]
    res = download(f"{base}/files/{name}", progress=False, say=lambda s: None)
    assert not (tmp_path / "escaped.pth").exists() and not (tmp_path / "escaped.pth.part").exists()
    home = (tmp_path / "home").resolve()
    assert all(home in p.resolve().parents for p in [res.weights, *res.files])
    assert res.files[0].name == "escaped.pth"


def test_symlinks_in_the_cache_are_not_followed_outside_it(tmp_path, capsys):
    victim = _victim(tmp_path)
    downloads = tmp_path / "home" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "v.txt").symlink_to(victim.parent, target_is_directory=True)  # the folder of URL .../v.txt
    assert main(["download", "http://127.0.0.1:9/x/v.txt", "--no-progress"]) == 2
    assert "outside" in capsys.readouterr().err and victim.read_text() == "the user's notes"
    (downloads / "v.txt").unlink()
    (downloads / "v.txt").mkdir()
    (downloads / "v.txt" / "v.txt").symlink_to(victim)                           # a link as the file itself
    assert main(["download", "http://127.0.0.1:9/x/v.txt", "--no-progress", "--sha256", "0" * 64]) == 2
    assert "outside" in capsys.readouterr().err and victim.read_text() == "the user's notes"
    assert (downloads / "v.txt" / "v.txt").is_symlink()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.text(), st.lists(st.sampled_from(["..", ".", "%2F", "%2f", "%2e", "%5C", "/", "\\", "\x00",
                                                      "\uff0f", "\uff0e", "\u2024", "\u2215", "\ufe52", "a", "~",
                                                      "%252F", "C:", "%00"]), max_size=12).map("".join)))
def test_url_file_names_are_plain_base_names(text):
    """Whatever the URL or catalogue says, the file name stays a plain name inside its folder."""
    name = ZooFile(f"http://127.0.0.1:9/x/{text}").filename
    assert name and "/" not in name and "\\" not in name and not name.startswith(".")
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", name)
    folder = Path("/nonexistent-cache/downloads/m")
    assert (folder / name).parent == folder
    given_name = ZooFile("http://127.0.0.1:9/drive", filename=text).filename
    assert re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*", given_name) and (folder / given_name).parent == folder
