"""Recipe search: run a queue of ``pspnet train`` jobs, several at a time on one GPU, and collect the
final validation mIoU of each into a JSON-lines file.

It ran the second CamVid recipe search (docs/results.md) on an H100 with 16 cores, five or six jobs at a
time; the chosen recipe is then trained on the CPU. Each line of the queue is a job::

    {"name": "ohem-loso", "fold": "loso", "args": ["train.loss=ohem"]}

``fold`` picks the split pair: ``val`` trains on train and scores val; ``loso`` trains on train without
the sequence 0006R0 and scores that sequence (lists in docs/results/camvid_loso/), a sequence the model
never saw, like the test split's Seq05VD. Jobs already in the results file are skipped, so a search
that was cut off starts again where it stopped::

    python bench/recipe_search.py docs/results/camvid_search_gpu/jobs_round1.jsonl \\
        --data-root ../shared/data/camvid --results runs/search/results.jsonl --parallel 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LOSO = Path(__file__).resolve().parent.parent / "docs" / "results" / "camvid_loso"
FOLDS = {
    "val": [],
    "loso": [f"data.train_list={LOSO / 'train_without_0006R0.txt'}", f"data.val_list={LOSO / 'heldout_0006R0.txt'}"],
}


def _command(job: dict, args: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, "-m", "pspnet.cli", "train", "-c", args.config, "--no-progress", "--device", args.device,
            f"data.root={args.data_root}", f"data.workers={args.workers}", "train.val_every=0",
            "train.ckpt_every=1000", f"train.output_dir={out}", *FOLDS[job["fold"]], *job.get("args", [])]


def _record(job: dict, out: Path, seconds: float, rc: int) -> dict:
    rec = {"name": job["name"], "fold": job["fold"], "args": job.get("args", []), "rc": rc,
           "wall_s": round(seconds, 1)}
    log = out / "log.jsonl"
    vals = [json.loads(line) for line in log.read_text().splitlines() if '"kind": "val"' in line] \
        if log.exists() else []
    if vals:
        rec.update(mIoU=vals[-1]["mIoU"], per_class_iou=vals[-1]["per_class_iou"], iter=vals[-1]["iter"])
    else:
        rec["error"] = f"no validation record in {log} (see {out}.log)"
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("queue", type=Path, help="JSON-lines file of jobs")
    p.add_argument("--data-root", required=True)
    p.add_argument("--results", type=Path, default=Path("runs/search/results.jsonl"))
    p.add_argument("--config", default="camvid/pspnet_r18_cpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--parallel", type=int, default=4, help="jobs at a time")
    p.add_argument("--workers", type=int, default=3, help="data-loading workers per job")
    args = p.parse_args()

    jobs = [json.loads(line) for line in args.queue.read_text().splitlines() if line.strip()]
    unknown = {j["fold"] for j in jobs} - set(FOLDS)
    if unknown:
        sys.exit(f"{args.queue}: unknown fold(s) {sorted(unknown)}; use one of {sorted(FOLDS)}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["name"] for line in args.results.read_text().splitlines() if line.strip()} \
        if args.results.exists() else set()
    pending = [j for j in jobs if j["name"] not in done]
    running: dict[str, tuple[dict, subprocess.Popen, float, Path]] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            job = pending.pop(0)
            out = args.results.parent / job["name"]
            with open(f"{out}.log", "w") as log:
                proc = subprocess.Popen(_command(job, args, out), stdout=log, stderr=subprocess.STDOUT)
            running[job["name"]] = (job, proc, time.time(), out)
        time.sleep(2)
        for name, (job, proc, t0, out) in list(running.items()):
            if proc.poll() is not None:
                rec = _record(job, out, time.time() - t0, proc.returncode)
                with args.results.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name}: mIoU {rec.get('mIoU', float('nan')):.4f} in {rec['wall_s']:.0f} s", flush=True)
                del running[name]


if __name__ == "__main__":
    main()
