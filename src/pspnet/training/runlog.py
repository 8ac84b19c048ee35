"""A run's logs, written by rank 0: ``log.jsonl`` (every field of every record), ``log.csv`` (the
scalar columns, for a spreadsheet) and, optionally, TensorBoard scalars.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

CSV_COLUMNS = ("kind", "iter", "epoch", "loss", "loss_main", "loss_aux", "lr", "mIoU", "mAcc", "allAcc", "time")


class RunLogger:
    """Appends records to the run's logs; does nothing on ranks other than 0 (``enabled=False``)."""

    def __init__(self, out: Path, *, enabled: bool, tensorboard: bool) -> None:
        self.out, self.enabled, self.writer = out, enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError(f"train.tensorboard=true needs the 'tensorboard' package ({e}); install it with "
                                  f"'pip install tensorboard' or set train.tensorboard=false (log.jsonl, log.csv "
                                  f"and curves.png are written either way)") from None
            self.writer = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        csv_path = self.out / "log.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(CSV_COLUMNS)
            w.writerow(["" if record.get(c) is None else record.get(c) for c in CSV_COLUMNS])
        if self.writer is not None:
            step = record["iter"]
            for k, v in record.items():
                if k not in ("kind", "iter", "epoch", "time") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{record['kind']}/{k}", v, step)
            self.writer.flush()

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """On resume: the logs hold exactly the checkpoint's history (drops records written after it;
        TensorBoard, append-only, is left as it is)."""
        if not self.enabled:
            return
        for name in ("log.jsonl", "log.csv"):
            (self.out / name).unlink(missing_ok=True)
        writer, self.writer = self.writer, None
        for record in history:
            self.write(record)
        self.writer = writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
