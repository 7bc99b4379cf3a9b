"""Per-epoch run log: metrics.jsonl + metrics.csv (rewritten atomically), TensorBoard scalars, a PNG.

Resume-safe: reopening a run folder keeps its rows, and logging epoch k drops every row with
epoch >= k first (they belong to the run that was interrupted), so a rerun of epoch k replaces row k.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from cmkd_pipe.pipeline.records import atomic_path, write_text_atomic

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


def load_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of `out_dir/metrics.jsonl` in epoch order; [] when the run has logged nothing yet."""
    path = Path(out_dir) / METRICS_JSONL
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}); delete the line or the file") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise ValueError(f"{path}:{number}: expected an object with an integer 'epoch'")
        rows.append(row)
    return sorted(rows, key=lambda r: r["epoch"])


class RunLogger:
    """Writes one row of metrics per epoch into `out_dir` (see module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rows = load_metrics(self.out_dir)
        self.tensorboard = tensorboard
        self._writer = None

    def log(self, epoch_metrics: dict[str, Any]) -> None:
        """Record one epoch: `epoch_metrics` needs an integer 'epoch'; values are numbers, str, bool or None."""
        row = {key: _plain(key, value) for key, value in epoch_metrics.items()}
        epoch = row.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"run log: metrics need an integer 'epoch', got {epoch!r}")
        row = {"epoch": epoch, **{k: v for k, v in row.items() if k != "epoch"}}
        earlier = [r for r in self.rows if r["epoch"] < epoch]
        rerun = len(earlier) < len(self.rows)
        self.rows = earlier + [row]
        write_text_atomic(self.out_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in self.rows))
        write_text_atomic(self.out_dir / METRICS_CSV, _to_csv(self.rows))
        if self.tensorboard:
            self._tensorboard_scalars(row, purge=rerun)

    def _tensorboard_scalars(self, row: dict[str, Any], purge: bool) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a crashed run wrote at or after the epoch now being redone; TensorBoard
            # applies it only to files that sort before this one, so this file must sort last
            folder = self.out_dir / TENSORBOARD_DIR
            _wait_for_a_later_second(folder)
            self._writer = SummaryWriter(str(folder), purge_step=row["epoch"] if purge else None)
        for key, value in row.items():
            if key != "epoch" and _is_number(value):
                self._writer.add_scalar(key, value, global_step=row["epoch"])
        self._writer.flush()

    def plot_curves(self, path_png: str | os.PathLike, metric: str) -> Path:
        """PNG of every '*loss*' column (left) and every column naming `metric` (right) per epoch."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not self.rows:
            raise ValueError(f"run log {self.out_dir}: no epochs logged yet, nothing to plot")
        columns = list(dict.fromkeys(k for r in self.rows for k in r if k != "epoch"))
        panels = [("loss", [c for c in columns if "loss" in c]), (metric, [c for c in columns if metric in c])]
        figure = Figure(figsize=(11, 4), layout="constrained")
        FigureCanvasAgg(figure)
        for position, (title, names) in enumerate(panels, start=1):
            axes = figure.add_subplot(1, 2, position)
            for name in names:
                points = [(r["epoch"], r[name]) for r in self.rows if _is_number(r.get(name))]
                if points:
                    axes.plot(*zip(*points), marker="o", label=name)
            axes.set_xlabel("epoch")
            axes.set_title(title)
            axes.grid(alpha=0.3)
            if axes.lines:
                axes.legend(fontsize="small")
        path = Path(path_png)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(key: str, value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars and one-element tensors become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, str):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise ValueError(f"run log: metric {key!r} holds several values; log one number per metric") from None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"run log: metric {key!r} is a {type(value).__name__}; log numbers, strings, bools or None")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _to_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _wait_for_a_later_second(folder: Path) -> None:
    """Event files are named events.out.tfevents.<unix second>.<host>.<pid>.<counter> and read in name order,
    so a writer opened in the same second as an earlier file of this process can sort before it (counter
    10 < 9 as text). Waiting for the next second keeps a resumed run's file last (runs are minutes apart;
    only a test opens two in one second)."""
    import time

    stamps = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
              if p.name.split(".")[3].isdigit()] if folder.is_dir() else []
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)
