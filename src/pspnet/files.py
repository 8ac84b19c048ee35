"""Files that are never half-written: write to a temporary file beside the target, then rename.

A crash (or Ctrl-C) leaves either the old file or the new one, never a truncated file that looks
finished. Used for weights, checkpoints, logs, metrics and downloads.

Also where pspnet keeps its caches (downloads, ``auto``'s probe): :func:`pspnet_home`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .errors import OutputError, UnsafePathError

__all__ = ["HOME_ENV", "pspnet_home", "atomic_write", "remove_stale_temp_files", "read_json_cache",
           "write_json_cache", "safe_file_name", "path_inside", "write_output", "write_text_output"]

HOME_ENV = "PSPNET_HOME"


def pspnet_home() -> Path:
    """pspnet's cache folder: ``$PSPNET_HOME``, else ``~/.cache/pspnet``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "pspnet").expanduser()


def safe_file_name(text: str, default: str = "download", max_length: int = 200) -> str:
    """A plain base name made from outside data (a URL's last part, a catalogue's file name).

    Percent-escapes are decoded and Unicode is folded (NFKC: a fullwidth solidus becomes ``/``)
    *before* the last ``/`` or ``\\`` is taken, so ``%2F``, ``..%2F``, ``..\\`` and look-alikes
    cannot climb out; then anything but ASCII letters, digits and ``. _ + -`` becomes ``_`` and
    leading dots go (no ``.``, ``..`` or hidden names). What is left is never a path."""
    name = unicodedata.normalize("NFKC", unquote(str(text)))
    name = re.split(r"[/\\]", name)[-1]
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".")[:max_length]
    return name or default


def path_inside(folder: str | Path, path: str | Path, what: str = "file") -> Path:
    """``path`` if it lies inside ``folder`` once both are resolved (symlinks followed), else
    :class:`~pspnet.errors.UnsafePathError`; call it before anything at ``path`` is read, written
    or deleted."""
    root = Path(folder).resolve()
    resolved = Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePathError(f"{path}: the {what} would lie outside {root} (it resolves to {resolved}); refused")
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_output(path: str | Path, write_fn) -> Path:
    """:func:`atomic_write` for a user's output (a PNG, ``.npz``, JSON, CSV, figure): a full disk or a
    read-only folder leaves no truncated file and becomes an :class:`~pspnet.errors.OutputError` naming
    the file. ``write_fn(tmp)`` must name the format itself (the temporary name ends in ``.tmp``)."""
    try:
        atomic_write(path, write_fn)
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise OutputError(f"{path}: could not write it ({reason}); nothing half-written was left; free disk space "
                          f"or write somewhere else") from None
    return Path(path)


def write_text_output(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` through :func:`write_output`."""
    return write_output(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_stale_temp_files(folder: str | Path, names) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files that :func:`atomic_write` left when its process was killed
    (SIGKILL, power loss) mid-write; call it when a writer of ``folder/<name>`` starts."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def read_json_cache(path: str | Path) -> dict[str, Any]:
    """The entries of a JSON cache file (one object); empty where there is no cache yet, or a damaged
    one: the caller measures again and rewrites it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_cache(path: str | Path, key: str, value: Any) -> None:
    """Set ``key`` in the JSON cache at ``path``, keeping its other entries, atomically; raises
    ``OSError`` where it cannot be written (a read-only home)."""
    data = read_json_cache(path)
    data[key] = value
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
