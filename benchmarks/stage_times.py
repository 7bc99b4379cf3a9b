"""Wall time per stage of one `cmkd-pipe run` (read from the stages' completion records), as a Markdown table.

    python -m benchmarks.stage_times runs/demo [--out benchmarks/DEMO_STAGE_TIMES.md] [--total SECONDS]

Rows are in plan order with each stage's seconds (from stage.json: start to record), then the sum by stage
kind. With `--jobs N` stages overlap, so the sum of stage times exceeds the wall time of the whole run;
`--total` adds the measured wall time of the run (e.g. of `make demo`) for comparison.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def stage_rows(run_dir: Path) -> list[tuple[str, str, float, str]]:
    """(stage name, kind, seconds, start time) of every recorded stage, by start time."""
    rows = []
    for record in run_dir.rglob("stage.json"):
        if "previous" in record.parts:
            continue
        data = json.loads(record.read_text())
        rows.append((str(record.parent.relative_to(run_dir)), data["stage"], float(data["seconds"]), data["started"]))
    return sorted(rows, key=lambda row: row[3])


def markdown(run_dir: Path, total: float | None = None) -> str:
    rows = stage_rows(run_dir)
    lines = [f"Stage wall times of `{run_dir}` (from the completion records)", "",
             "| stage | kind | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {kind} | {seconds:.1f} |" for name, kind, seconds, _ in rows]
    by_kind: dict[str, float] = defaultdict(float)
    for _, kind, seconds, _ in rows:
        by_kind[kind] += seconds
    lines += ["", "| kind | stages | seconds (sum) |", "|---|---|---|"]
    lines += [f"| {kind} | {sum(1 for r in rows if r[1] == kind)} | {value:.1f} |" for kind, value in by_kind.items()]
    lines += ["", f"Sum over stages: {sum(by_kind.values()):.1f} s" +
              (f"; wall time of the whole run: {total:.1f} s" if total is not None else "")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--total", type=float, help="measured wall time of the whole run, seconds")
    args = parser.parse_args(argv)
    text = markdown(args.run_dir, args.total)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
