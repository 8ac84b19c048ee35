"""``pspnet download``: fetch a catalogued (or any) PSPNet checkpoint, verify it, convert it.

The transfer uses the standard library (``urllib``) with HTTP ``Range`` requests, not pooch:
pooch's ``HTTPDownloader`` (pooch/downloaders.py, 1.x) opens its output with ``"w+b"`` and never
sends a ``Range`` header, so an interrupted 270 MB checkpoint would start again from zero, and it
would add ``requests`` and ``platformdirs`` for no gain here. tqdm (already a dependency) draws the
progress bar.

What can go wrong, and what is left on disk:

- the transfer breaks (connection dropped, timeout, fewer bytes than ``Content-Length``):
  :class:`TruncatedDownloadError`; the bytes so far stay in ``<file>.part`` and the same command
  resumes from there (``Range: bytes=N-``; a server that ignores it sends the whole file again);
- HTTP 404/410: :class:`NotFoundError`; an HTML page (``Content-Type: text/html`` or a body that
  starts with ``<``, e.g. a login or error page served with status 200): :class:`HTMLResponseError`;
- the sha256 (full, or the leading hex digits mmsegmentation puts in its file names) differs:
  :class:`ChecksumError` and the ``.part`` file is deleted;
- the verified file is no checkpoint ``pspnet convert`` can read (corrupt, or a file with no
  published checksum that was cut short): :class:`CorruptDownloadError` and the download is deleted.

Only a verified file is renamed from ``.part`` to its name, and the converted ``.safetensors`` is
written atomically (:func:`pspnet.files.atomic_write`), so nothing that looks finished is
ever half-written or unverified. Checkpoints are untrusted: :func:`pspnet.models.convert.convert`
reads them with ``torch.load(..., weights_only=True)``.

Cache (``$PSPNET_HOME``, default ``~/.cache/pspnet``): ``downloads/<name>/<file>`` (the zoo's
files, kept so a second conversion needs no download) and ``weights/<name>.safetensors``
(what ``--weights <name>`` loads, :func:`resolve_weights`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from ..errors import PSPNetError, UnsafePathError, WeightsError
from ..files import HOME_ENV, path_inside, pspnet_home, safe_file_name
from ..version import __version__
from .catalogue import ModelEntry, ZooFile, catalogue, close_names, entry_for_url, find_entry

__all__ = ["HOME_ENV", "pspnet_home", "cached_weights_path", "resolve_weights", "fetch_file", "verify_file",
           "download", "DownloadResult", "DownloadError", "NotFoundError", "HTMLResponseError",
           "TruncatedDownloadError", "ChecksumError", "CorruptDownloadError", "ManualDownloadRequired"]

CHUNK = 1 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin", ".tar")


# ------------------------------------------------------------------------------------ errors
class DownloadError(PSPNetError, RuntimeError):
    """A checkpoint could not be downloaded, verified or converted."""


class NotFoundError(DownloadError):
    """The server answered 404/410: the file is not (or no longer) there."""


class HTMLResponseError(DownloadError):
    """The server sent a web page instead of a checkpoint."""


class TruncatedDownloadError(DownloadError):
    """The transfer stopped early; the partial file is kept for resuming."""


class ChecksumError(DownloadError):
    """The file's sha256 is not the published one."""


class CorruptDownloadError(DownloadError):
    """The downloaded file is no checkpoint that can be read and converted."""


class ManualDownloadRequired(DownloadError):
    """The source has no direct link; the file must be given with ``--from``."""


# ------------------------------------------------------------------------------------ cache
def cached_weights_path(name: str) -> Path:
    """Where ``pspnet download NAME`` writes the converted file (``name`` reduced to a base name)."""
    folder = pspnet_home() / "weights"
    return path_inside(folder, folder / f"{safe_file_name(name)}.safetensors", "cached weight file")


def _looks_like_a_name(value: str) -> bool:
    return not (os.sep in value or "/" in value or value.lower().endswith(_WEIGHT_SUFFIXES) or _SCHEME.match(value))


def resolve_weights(value: str | os.PathLike | None, entries: Iterable[ModelEntry] | None = None):
    """What ``--weights VALUE`` means for ``pspnet predict / eval / export``.

    An existing file is itself; a catalogue name (or the name of another ``pspnet download``) is its
    converted file in the cache; a catalogue name not downloaded yet is a :class:`WeightsError`
    saying to run ``pspnet download NAME``. Anything else is returned unchanged (the loader then
    reports the missing file)."""
    if value is None or Path(value).exists():
        return value
    text = str(value)
    if not _looks_like_a_name(text):
        return value
    entries = list(entries if entries is not None else catalogue())
    entry = find_entry(text, entries)
    name = entry.name if entry else text
    cached = cached_weights_path(name)
    if cached.is_file():
        return cached
    if entry is not None:
        raise WeightsError(f"{text}: catalogue model {entry.name} ({entry.source}, {entry.dataset}) is not downloaded "
                           f"yet (no {cached}); run: pspnet download {entry.name}")
    near = close_names(text, entries)
    raise WeightsError(f"{text}: no such weight file, and not a catalogue model or a downloaded name"
                       + (f"; did you mean {', '.join(near)}?" if near else "")
                       + " ('pspnet models' lists the catalogue)")


# ------------------------------------------------------------------------------------ checksums
def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, sha256: str | None = None, sha256_prefix: str | None = None,
                label: str | None = None) -> str:
    """The file's sha256; :class:`ChecksumError` unless it equals ``sha256`` and starts with
    ``sha256_prefix`` (each checked when given)."""
    digest = sha256_of(path)
    label = label or str(path)
    if sha256 and digest != sha256.lower():
        raise ChecksumError(f"{label}: sha256 {digest} is not the expected {sha256.lower()}; the file is corrupt or "
                            f"not the published one (deleted; run the command again to download it anew)")
    if sha256_prefix and not digest.startswith(sha256_prefix.lower()):
        raise ChecksumError(f"{label}: sha256 {digest} does not start with {sha256_prefix.lower()}, the prefix its "
                            f"publisher put in the file name; the file is corrupt or not the published one (deleted; "
                            f"run the command again to download it anew)")
    return digest


# ------------------------------------------------------------------------------------ transfer
def _content_range(value: str | None) -> tuple[int | None, int | None]:
    m = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


def _is_html(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": f"pspnet/{__version__} (+https://github.com/hszhao/semseg)",
               "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urlopen(Request(url, headers=headers), timeout=timeout)  # noqa: S310 - http(s) / file URLs by design


def fetch_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None, sha256_prefix: str | None = None,
               progress: bool = True, timeout: float = 60.0, say: Callable[[str], Any] = lambda s: None) -> str:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed when present), verify it, rename it.

    Returns the file's sha256. An existing ``dest`` is verified again instead of downloaded."""
    from tqdm import tqdm
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    for p in (dest, part):  # a link planted in the cache must not make us read, write or delete its target
        if p.is_symlink():
            raise UnsafePathError(f"{p}: is a symbolic link (to {os.readlink(p)}); pspnet only uses files it wrote "
                                  f"itself here; remove the link and run the command again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        try:
            digest = verify_file(dest, sha256, sha256_prefix)
            say(f"already downloaded: {dest}")
            return digest
        except ChecksumError:
            dest.unlink()
            say(f"{dest}: the earlier download does not verify; downloading it again")
    offset = part.stat().st_size if part.is_file() else 0
    for _attempt in range(3):
        try:
            resp = _open(url, offset, timeout)
        except HTTPError as e:
            if e.code == 416 and offset:  # nothing left to send: the partial file may be complete
                if sha256 or sha256_prefix:
                    try:
                        digest = verify_file(part, sha256, sha256_prefix, label=url)
                        os.replace(part, dest)
                        return digest
                    except ChecksumError:
                        pass
                part.unlink(missing_ok=True)
                offset = 0
                continue
            if e.code in (404, 410):
                raise NotFoundError(f"{url}: HTTP {e.code} {e.reason}: the file is not on the server (moved or "
                                    f"removed); check the source's page, or give another URL or a local copy with "
                                    f"--from") from None
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"{url}: cannot download ({reason}); check the network or the URL"
                                + (f"; the {offset} bytes so far stay in {part} and the same command resumes"
                                   if offset else "")) from None
        with resp:
            ctype = resp.headers.get("Content-Type", "") or ""
            if _is_html(ctype):
                raise HTMLResponseError(f"{url}: the server sent a web page ({ctype}), not a checkpoint; the link "
                                        f"may need a login or may have moved (open it in a browser)")
            status = getattr(resp, "status", 200)
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if offset and status == 206:
                start, _ = _content_range(resp.headers.get("Content-Range"))
                if start != offset:  # a range we did not ask for: start over without Range
                    part.unlink(missing_ok=True)
                    offset = 0
                    continue
                say(f"resuming {part.name} at {offset / 2**20:.1f} MiB")
            elif offset:
                say(f"{url}: the server does not resume (HTTP {status}); downloading from the start")
                offset = 0
            total = offset + length if length is not None else None
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                       disable=not progress, file=sys.stderr, leave=False)
            got = offset
            try:
                with open(part, "ab" if offset else "wb") as f:
                    first = offset == 0
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        if first:
                            first = False
                            if chunk.lstrip()[:1] == b"<":
                                f.close()
                                part.unlink(missing_ok=True)
                                raise HTMLResponseError(f"{url}: the server sent a web page (the body starts with "
                                                        f"{chunk.lstrip()[:40]!r}), not a checkpoint; the link may "
                                                        f"need a login or may have moved (open it in a browser)")
                        f.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
                raise TruncatedDownloadError(
                    f"{url}: the transfer stopped after {got} of {total if total is not None else '?'} bytes "
                    f"({type(e).__name__}); the bytes so far stay in {part}; run the same command again to "
                    f"resume") from None
            finally:
                bar.close()
        if total is not None and got != total:
            raise TruncatedDownloadError(f"{url}: got {got} of {total} bytes; the bytes so far stay in {part}; run "
                                         f"the same command again to resume")
        break
    else:
        raise DownloadError(f"{url}: the server keeps refusing the byte range of {part}; delete it and try again")
    try:
        digest = verify_file(part, sha256, sha256_prefix, label=url)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return digest


# ------------------------------------------------------------------------------------ download + convert
@dataclass
class DownloadResult:
    name: str
    weights: Path                       # the converted .safetensors
    files: list[Path]                   # the zoo's file(s) it was converted from
    sha256: list[str]
    checked: list[str]                  # how each file was verified
    entry: ModelEntry | None = None
    report: dict[str, Any] = field(default_factory=dict)


def _check_text(f: ZooFile, digest: str) -> str:
    if f.sha256:
        return f"sha256 {digest[:16]}... matches the expected full sha256"
    if f.sha256_prefix:
        return f"sha256 {digest[:16]}... starts with {f.sha256_prefix}, the prefix in the published file name"
    return f"sha256 {digest[:16]}... (no checksum published; not verified against one)"


def _url_entry_files(url: str) -> tuple[str, list[ZooFile]]:
    parsed = urlparse(url)
    fname = safe_file_name(parsed.path, default="download.pth")
    name = re.sub(r"\.(pth|pt|ckpt|bin|tar)$", "", fname)
    prefix = None
    m = re.search(r"-([0-9a-f]{8})\.pth$", fname)
    if m and parsed.hostname == "download.openmmlab.com":  # mmsegmentation's file-name convention
        prefix = m.group(1)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", name):
        name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip("._-") or "download"
    return name, [ZooFile(url, sha256_prefix=prefix)]


def _add_metadata(src: Path, dst: Path, extra: dict[str, Any]) -> None:
    """Copy the safetensors file ``src`` to ``dst`` (atomically) with ``extra`` added to its metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..files import atomic_write
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in extra.items():
        meta[k] = json.dumps(v)
    atomic_write(dst, lambda tmp: save_file(state, tmp, metadata=meta))


def download(target: str, *, sha256: Sequence[str] | None = None, out: str | os.PathLike | None = None,
             sources: Sequence[str] | None = None, progress: bool = True, timeout: float = 60.0,
             say: Callable[[str], Any] = print, entries: Iterable[ModelEntry] | None = None) -> DownloadResult:
    """``pspnet download TARGET``: a catalogue name or a URL -> verified file(s) -> our ``.safetensors``.

    ``sha256``: one full hex digest per file (overrides the catalogue's). ``sources``: local paths or
    URLs to use instead of the entry's URLs (a mirror, or the original release's files fetched by
    hand from its Google Drive folder). ``out``: where to write the converted file (default: the
    cache, so that ``--weights NAME`` finds it)."""
    from ..files import remove_stale_temp_files
    from ..models.convert import convert
    entries = list(entries if entries is not None else catalogue())
    entry = find_entry(target, entries)
    is_url = bool(_SCHEME.match(target))
    if entry is None and is_url:
        entry = entry_for_url(target, entries)
    if entry is None and not is_url:
        near = close_names(target, entries)
        raise DownloadError(f"{target}: not a catalogue model" + (f"; did you mean {', '.join(near)}?" if near else "")
                            + " ('pspnet models' lists them; a URL works too)")
    if entry is not None:
        name, files = entry.name, list(entry.files)
    else:
        name, files = _url_entry_files(target)
    if sha256:
        bad = [h for h in sha256 if not re.fullmatch(r"[0-9a-fA-F]{64}", h)]
        if bad or len(sha256) != len(files):
            raise DownloadError(f"--sha256 takes {len(files)} full sha256 digest(s) (64 hex digits, one per file of "
                                f"{name}); got {list(sha256)}")
        files = [replace(f, sha256=h.lower()) for f, h in zip(files, sha256)]
    if sources:
        if len(sources) != len(files):
            raise DownloadError(f"{name} is {len(files)} file(s) ({', '.join(f.filename for f in files)}); --from gave "
                                f"{len(sources)}")
    elif entry is not None and not entry.downloadable:
        raise ManualDownloadRequired(
            f"{name}: {entry.notes or 'no direct download link'} ({entry.url}); download "
            f"{', '.join(f.filename for f in files)} there yourself, then run: pspnet download {name} --from "
            f"{' '.join(f.filename for f in files)}")
    downloads = pspnet_home() / "downloads"
    folder = downloads / safe_file_name(name)
    raw: list[Path] = []
    fetched: list[bool] = []
    digests, checked = [], []
    for i, f in enumerate(files):
        src = sources[i] if sources else None
        if src is not None and not _SCHEME.match(src):
            path = Path(src).expanduser()
            if not path.is_file():
                raise DownloadError(f"--from {src}: no such file")
            say(f"using {path} for {f.filename}")
            digest = verify_file(path, f.sha256, f.sha256_prefix)
            raw.append(path)
            fetched.append(False)
        else:
            url = src or f.url
            # f.filename is a base name already (ZooFile); checked again, resolved, so that neither a
            # name nor a symlinked folder in the cache can reach a file elsewhere
            dest = path_inside(downloads, folder / safe_file_name(f.filename or ""), "download")
            path_inside(downloads, dest.with_name(dest.name + ".part"), "partial download")
            say(f"downloading {url}\n  -> {dest}")
            digest = fetch_file(url, dest, sha256=f.sha256, sha256_prefix=f.sha256_prefix, progress=progress,
                                timeout=timeout, say=say)
            raw.append(dest)
            fetched.append(True)
        digests.append(digest)
        checked.append(_check_text(f, digest))
        say(f"{raw[-1].name}: {checked[-1]}")
    dst = Path(out) if out else cached_weights_path(name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    stage = dst.with_name(f".{dst.name}.converting")
    remove_stale_temp_files(dst.parent, [dst.name, stage.name])
    layout_kw: dict[str, Any] = {}
    if entry is not None and entry.layout == "original-release":
        layout_kw = {"class_names": entry.classes, "palette": entry.palette}
    try:
        report = convert(raw[0] if len(raw) == 1 else raw, stage, **layout_kw)
        extra: dict[str, Any] = {"catalogue": {
            "name": name, "source": entry.source if entry else None, "dataset": entry.dataset if entry else None,
            "urls": [sources[i] if sources else f.url for i, f in enumerate(files)], "sha256": digests,
            "miou": entry.miou if entry else None, "protocol": entry.protocol if entry else None}}
        if entry is not None and entry.release_test_settings():
            extra["test_settings"] = entry.release_test_settings()
        _add_metadata(stage, dst, extra)
    except WeightsError as e:
        for path, ours in zip(raw, fetched):
            if ours and not path.is_symlink():  # only the cache's own files (checked inside it above)
                path_inside(downloads, path, "download")
                path.unlink(missing_ok=True)
        raise CorruptDownloadError(f"{' + '.join(map(str, raw))}: not a checkpoint pspnet can convert"
                                   + (" (deleted)" if any(fetched) else "") + f": {e}") from None
    finally:
        stage.unlink(missing_ok=True)
    return DownloadResult(name, dst, raw, digests, checked, entry, report)
