"""The README and docs/ run: every ```python block, and every `pspnet ...` line of a ```bash block marked
runnable, so no page can drift from the tool.

- A ```python block runs in a fresh namespace, in a temporary folder. One that needs data or takes long
  is skipped where the line right before its fence is ``<!-- skip-test -->`` (keep that rare).
- A ```bash block whose fence follows ``<!-- test-shell -->`` is meant to run in seconds: each of its
  lines that starts with ``pspnet `` runs with this project's CLI (``python -m pspnet.cli``) in a
  temporary folder and must exit 0.

docs/archive/ is the dated record of earlier releases, kept as written: its snippets are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = "<!-- skip-test -->"
SHELL = "<!-- test-shell -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w+-]*)[^`]*$")


def doc_files() -> list[Path]:
    """README.md and every page under docs/ but the archive."""
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if "archive" not in p.relative_to(ROOT / "docs").parts)
    return [ROOT / "README.md", *docs]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    marker: str | None  # the HTML comment on the last non-blank line before the fence, if any
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented ones inside lists too, dedented)."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m["indent"], m["ticks"], m["lang"].lower()
        prev = next((s.strip() for s in reversed(lines[:i]) if s.strip()), "")
        marker = prev if prev.startswith("<!--") and prev.endswith("-->") else None
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(ticks) and set(lines[j].strip()) == {"`"}):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        out.append(Block(path, i + 1, lang, marker, "\n".join(body) + "\n"))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in doc_files() for b in blocks(p)]


def shell_commands(block: Block) -> list[str]:
    """The ``pspnet ...`` lines of a bash block, continuation lines (a trailing backslash) joined."""
    joined: list[str] = []
    pending = ""
    for raw in block.code.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line.startswith("pspnet "):
            joined.append(line)
    return joined


def python_cases() -> list:
    cases = []
    for b in all_blocks():
        if b.lang not in ("python", "py"):
            continue
        marks = [pytest.mark.skip(reason=f"{SKIP} in the docs")] if b.marker == SKIP else []
        cases.append(pytest.param(b, id=b.where, marks=marks))
    return cases


def shell_cases() -> list:
    return [pytest.param(cmd, id=f"{b.where}: {cmd.split('#')[0].strip()}")
            for b in all_blocks() if b.lang in ("bash", "sh", "shell", "console") and b.marker == SHELL
            for cmd in shell_commands(b)]


PYTHON = python_cases()
SHELL_COMMANDS = shell_cases()


def test_the_collector_finds_the_snippets():
    """It cannot pass by collecting nothing: the pages hold Python snippets and runnable commands."""
    assert len(PYTHON) >= 3, [p.id for p in PYTHON]
    assert len(SHELL_COMMANDS) >= 5, [p.id for p in SHELL_COMMANDS]
    assert {"pspnet --help", "pspnet configs", "pspnet info --json", "pspnet models"} <= \
        {c.values[0].split("#")[0].strip() for c in SHELL_COMMANDS}


def test_markers_sit_right_before_a_fence_they_fit():
    """A marker that is not right before a fence, or on the wrong kind of block, would silently do nothing."""
    bad = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        marked = {b.line for b in blocks(path) if b.marker in (SKIP, SHELL)
                  and ((b.marker == SKIP and b.lang in ("python", "py"))
                       or (b.marker == SHELL and b.lang in ("bash", "sh", "shell", "console") and shell_commands(b)))}
        for i, line in enumerate(lines, 1):
            if line.strip() in (SKIP, SHELL):
                nxt = next((k for k in range(i + 1, len(lines) + 1) if lines[k - 1].strip()), None)
                if nxt not in marked:
                    bad.append(f"{path.relative_to(ROOT)}:{i}")
    assert not bad, f"markers not followed by a fitting code block: {bad}"


def test_the_collector_reads_fences(tmp_path):
    """Indented fences (inside a list) are dedented, the marker is the line before, the language is read."""
    sample = tmp_path / "sample.md"
    sample.write_text("intro\n\n<!-- test-shell -->\n```bash\npspnet configs \\\n    --help\nls\n```\n\n"
                      "- item\n\n  ```python\n  x = 1\n  ```\n", encoding="utf-8")
    found = blocks(sample)
    assert [(b.lang, b.marker, b.line) for b in found] == [("bash", SHELL, 4), ("python", None, 12)]
    assert shell_commands(found[0]) == ["pspnet configs --help"]
    assert found[1].code == "x = 1\n"


@pytest.mark.parametrize("block", PYTHON)
def test_python_snippet_runs(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(block.code, block.where, "exec")
    exec(code, {"__name__": "__docs__"})  # a fresh namespace per snippet


@pytest.mark.parametrize("command", SHELL_COMMANDS)
def test_shell_command_runs(command: str, tmp_path):
    argv = shlex.split(command, comments=True)
    assert argv[0] == "pspnet"
    env = dict(os.environ)  # PSPNET_HOME: the suite's private cache (conftest)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, "-m", "pspnet.cli", *argv[1:]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{command!r} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert r.stdout.strip(), f"{command!r} printed nothing"
