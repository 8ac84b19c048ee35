"""Crashes: a real ``pspnet train`` process killed with SIGKILL at several points (once in the middle
of a checkpoint write), interrupted with SIGINT, and resumed each time from ``last.pt``, ends with
exactly the weights of an uninterrupted run; no corrupt or temporary file is left behind. A failed
checkpoint write (disk full) keeps the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pspnet.config import load_config
from pspnet.errors import TrainingError
from pspnet.training.state import load_checkpoint
from pspnet.training.trainer import Trainer, train

ITERS = 12  # 6 images, batch 2: 3 iterations per epoch, so the legs cross epoch boundaries
# on top of the tiny run (conftest): dropout on, so the RNG state must be restored too
CRASHY = ["data.val_split=''", "model.dropout=0.1", f"train.iters={ITERS}", "train.threads=1", "train.ckpt_every=2",
          "train.lr=0.01", "train.warmup_iters=1"]


# The child runs ``pspnet train`` with one hook that stops it (SIGSTOP, to itself) at an exact point:
# right after it logs iteration N ("iter:N"), or in the middle of its first checkpoint write, its
# temporary file written half ("checkpoint"). The test waits for that stop (waitpid), then kills or
# signals the process there: no polling, no sleeping, and every leg is cut where it says.
STOP_ENV = "PSPNET_TEST_STOP_AT"
STOPPER = f"""
import os, runpy, signal, sys
from pspnet.training import runlog, state

how, _, at = os.environ[{STOP_ENV!r}].partition(":")

def stop():
    os.kill(os.getpid(), signal.SIGSTOP)

if how == "iter":
    write = runlog.RunLogger.write

    def write_then_stop(self, record):
        write(self, record)
        if record.get("kind") == "train" and record.get("iter") == int(at):
            stop()
    runlog.RunLogger.write = write_then_stop
elif how == "checkpoint":
    atomic_write = state.atomic_write

    def half_written_then_stop(path, write_fn):
        def write_half(tmp):
            write_fn(tmp)
            os.truncate(tmp, os.path.getsize(tmp) // 2)
            stop()
        atomic_write(path, write_half)
    state.atomic_write = half_written_then_stop
sys.argv = ["pspnet", *sys.argv[1:]]
runpy.run_module("pspnet.cli", run_name="__main__")
"""


class Leg:
    """One ``pspnet train`` process writing to ``out``, which stops itself at ``stop_at`` (see STOPPER;
    None: runs to its end); watches its ``log.jsonl``."""

    def __init__(self, cfg_file: Path, out: Path, overrides: list[str], resume: bool, name: str,
                 stop_at: str | None = None) -> None:
        self.out, self.name = out, name
        self.log = out / "log.jsonl"
        self.started = time.time()
        self.stderr_path = out.parent / f"{name}.stderr"
        cmd = [sys.executable, "-c", STOPPER, "train", "-c", str(cfg_file), *overrides, "--no-progress"]
        if resume:
            cmd += ["--resume", str(out / "last.pt")]
        self.stderr = open(self.stderr_path, "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1", STOP_ENV: stop_at or "none"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr, env=env)

    def logged_iters(self) -> list[int]:
        """Iterations this process has logged (a resumed run rewrites the log to its checkpoint's history,
        so records are told apart by their time stamp)."""
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return []
        records = [json.loads(ln) for ln in text.split("\n")[:-1] if ln.strip()]  # last piece: may be partial
        return [r["iter"] for r in records if r.get("kind") == "train" and r.get("time", 0) >= self.started]

    def wait_stopped(self, what: str, timeout: float = 120.0) -> None:
        """Block until the process has stopped itself (at ``what``); a process that ends first, or hangs
        (killed after ``timeout`` s), fails the test."""
        watchdog = threading.Timer(timeout, self.proc.kill)
        watchdog.start()
        try:
            _, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        finally:
            watchdog.cancel()
        if not os.WIFSTOPPED(status):
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            pytest.fail(f"{self.name}: the process ended (rc {self.proc.returncode}) before {what}:\n"
                        + self.stderr_path.read_text()[-3000:])

    def finish(self, timeout: float = 120.0) -> int:
        rc = self.proc.wait(timeout)
        self.stderr.close()
        return rc

    def text(self) -> str:
        return self.stderr_path.read_text()


def tmp_files(out: Path) -> list[Path]:
    return sorted(out.glob(".*.tmp"))


def assert_checkpoint_ok(out: Path, at_most: int) -> int:
    ckpt = load_checkpoint(out / "last.pt")  # raises if the file is corrupt
    assert ckpt["iteration"] % 2 == 0 or ckpt["iteration"] == at_most, ckpt["iteration"]
    assert 0 < ckpt["iteration"] <= at_most
    return int(ckpt["iteration"])


def test_sigkill_and_sigint_resume_to_the_same_weights(tmp_path, folder_dataset, tiny_run_overrides):
    data = folder_dataset(tmp_path / "data", size=(40, 48))
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("{}\n")
    out = tmp_path / "crashy"
    out.mkdir()
    run = tiny_run_overrides(data, out, *CRASHY)

    # leg 1: killed right after iteration 3 was logged (checkpoint 2 exists)
    leg = Leg(cfg_file, out, run, resume=False, name="leg1", stop_at="iter:3")
    leg.wait_stopped("iteration 3")
    leg.proc.send_signal(signal.SIGKILL)
    assert leg.finish() == -signal.SIGKILL
    assert max(leg.logged_iters()) == 3
    assert assert_checkpoint_ok(out, ITERS) == 2

    # leg 2: killed in the middle of a checkpoint write: its temporary file holds half a checkpoint
    leg = Leg(cfg_file, out, run, resume=True, name="leg2", stop_at="checkpoint")
    leg.wait_stopped("a checkpoint write in progress")
    assert len(tmp_files(out)) == 1, tmp_files(out)
    leg.proc.send_signal(signal.SIGKILL)
    assert leg.finish() == -signal.SIGKILL
    assert tmp_files(out), "the killed write's temporary file is the crash this leg makes"
    assert assert_checkpoint_ok(out, ITERS) == 2  # the previous checkpoint survived the interrupted write

    # leg 3: killed right after iteration 8 was logged, before its checkpoint (the step logs first);
    # it starts beside leg 2's half-written temporary file, which it removes
    leg = Leg(cfg_file, out, run, resume=True, name="leg3", stop_at="iter:8")
    leg.wait_stopped("iteration 8")
    assert not tmp_files(out), f"a stale temporary file was left: {tmp_files(out)}"
    leg.proc.send_signal(signal.SIGKILL)
    assert leg.finish() == -signal.SIGKILL
    assert assert_checkpoint_ok(out, ITERS) == 6

    # leg 4: SIGINT (Ctrl-C) right after iteration 10 was logged: the step finishes, a checkpoint is
    # saved, exit code 130
    leg = Leg(cfg_file, out, run, resume=True, name="leg4", stop_at="iter:10")
    leg.wait_stopped("iteration 10")
    leg.proc.send_signal(signal.SIGINT)  # delivered when the process continues
    leg.proc.send_signal(signal.SIGCONT)
    rc = leg.finish()
    assert rc == 130, leg.text()[-3000:]
    assert "Traceback" not in leg.text(), leg.text()[-3000:]
    last_logged = max(leg.logged_iters())
    stopped_at = int(load_checkpoint(out / "last.pt")["iteration"])
    assert stopped_at == last_logged == 10, "SIGINT must save the iteration it stopped at, not an older checkpoint"
    assert not (out / "final.safetensors").exists() or stopped_at == ITERS

    # leg 5: a stale temporary file from a crashed writer is cleaned; the run completes
    stale = out / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    leg = Leg(cfg_file, out, run, resume=True, name="leg5")
    assert leg.finish(timeout=180) == 0, leg.text()[-3000:]
    assert not tmp_files(out), f"temporary files left behind: {tmp_files(out)}"
    assert load_checkpoint(out / "last.pt")["iteration"] == ITERS

    # the uninterrupted reference, in this process with the same config
    ref_out = tmp_path / "reference"
    cfg = load_config(cfg_file, tiny_run_overrides(data, ref_out, *CRASHY))
    train(cfg, progress=False)
    a, b = load_file(str(ref_out / "final.safetensors")), load_file(str(out / "final.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:5]}"


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, folder_dataset, tiny_run_config):
    data = folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    trainer = Trainer(tiny_run_config(data, tmp_path / "run", *CRASHY, "data.crop_size=[16,16]"), progress=False)
    trainer.iteration = 4
    path = trainer.save_checkpoint()
    before = path.read_bytes()
    real_save = torch.save

    def save_then_fail(obj, f, *a, **k):  # write part of the file, then the disk is full
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(fh.seek(0, 2) // 3)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    trainer.iteration = 6
    with pytest.raises(TrainingError, match="No space left") as e:
        trainer.save_checkpoint()
    assert str(path) in str(e.value)
    assert path.read_bytes() == before, "the previous checkpoint was modified"
    assert load_checkpoint(path)["iteration"] == 4
    assert not tmp_files(path.parent), "a partial temporary file was left behind"

    # the same for the exported weights (safetensors)
    monkeypatch.setattr(torch, "save", real_save)
    weights = trainer.export_weights("final.safetensors")
    good = weights.read_bytes()
    import safetensors.torch as st

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", fail)
    with pytest.raises((TrainingError, OSError)):
        trainer.export_weights("final.safetensors")
    assert weights.read_bytes() == good and not tmp_files(weights.parent)
