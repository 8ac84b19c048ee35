"""docs/data.md opens with "Your own data": its commands run here, in order, in one folder, on the data its
Python snippet generates, and what they print is compared with the page, so the page cannot drift from the
tool. Training is shortened to a few iterations (``train.iters=N`` -> :data:`ITERS`): lines with decimal
numbers (losses, metrics, timings) and log lines are not compared after it; everything else is, and the
config the page shows must be the file ``--write-config`` writes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pspnet.version import __version__

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "data.md"
ITERS = 2
_NUMBER = re.compile(r"\d\.\d")
_LOG = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) ")


def section() -> str:
    """The page's "## Your own data" section (up to the next level-2 heading)."""
    text = PAGE.read_text(encoding="utf-8")
    start = text.index("\n## Your own data\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def fences(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]


def sessions(text: str) -> list[tuple[str, list[str]]]:
    """``(command, output lines)`` of the ``$ pspnet ...`` lines in the section's text blocks."""
    out: list[tuple[str, list[str]]] = []
    for lang, body in fences(text):
        if lang != "text":
            continue
        for line in body.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out and line.strip():
                out[-1][1].append(line)
    return out


def test_the_section_opens_the_page_and_holds_the_whole_path():
    text = PAGE.read_text(encoding="utf-8")
    assert next(ln for ln in text.splitlines() if ln.startswith("## ")) == "## Your own data"
    commands = [c for c, _ in sessions(section())]
    for verb in ("data check --data-root my_data --write-config", "train --config my_data.yaml", "eval --weights",
                 "predict "):
        assert any(verb in c for c in commands), (verb, commands)
    for kind in ("0/255", "0/128/255", "colour", "data.label_colors"):
        assert kind in section(), kind


@pytest.mark.slow
def test_the_pages_commands_run_and_print_what_it_shows(tmp_path: Path):
    text = section()
    snippet = next(body for lang, body in fences(text) if lang == "python")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, check=True, timeout=300)
    ran = []
    for command, shown in sessions(text):
        short = re.sub(r"train\.iters=\d+", f"train.iters={ITERS}", command)
        argv = shlex.split(short)
        assert argv[0] == "pspnet", command
        r = subprocess.run([sys.executable, "-m", "pspnet.cli", *argv[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{short!r} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        printed = {ln.rstrip() for ln in (r.stdout + "\n" + r.stderr).splitlines()}
        after_training = any(c.startswith("train ") for c in ran) or argv[1] == "train"
        for line in shown:
            line = line.replace("pspnet 0.9.0", f"pspnet {__version__}")  # the page's outputs name its version
            if line.strip() == "..." or _LOG.match(line) or (after_training and _NUMBER.search(line)):
                continue
            assert line.rstrip() in printed, f"{command!r}: the page shows\n  {line}\nbut it printed:\n{r.stdout}"
        ran.append(" ".join(argv[1:]))
    # the config the page shows is the one --write-config wrote (the version aside)
    shown_yaml = next(body for lang, body in fences(text) if lang == "yaml")
    written = (tmp_path / "my_data.yaml").read_text(encoding="utf-8")
    assert shown_yaml.replace("pspnet 0.9.0", f"pspnet {__version__}") == written
    assert (tmp_path / "runs" / "my_data" / "final.safetensors").is_file()
    assert (tmp_path / "predictions" / "0000_label.png").is_file()
