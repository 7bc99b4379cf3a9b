"""KD sweep stage: one student per (τ, λ) against the same cached teacher, selected on the validation split.

Inputs:  a complete feature store, a complete logits store of it (teacher-logits stage output), a preset.
Outputs: OUT/tau-<τ>_lam-<λ>/ (one student run folder per grid point, as `train-student` writes it);
         OUT/sweep.json: per point τ, λ, the validation metric of the run's best epoch (the epoch best.pt
         holds, data.val of the preset), the test metric (data.test) of that epoch's model and of the
         exported final.pt, and the best point by the validation metric (ties: the first in grid order);
         OUT/sweep.md: the same as a Markdown table, the best row marked.
Resume:  a grid point whose folder holds results.json is kept (refused when its config.yaml is not this
         sweep's config for that point); an interrupted point resumes from its checkpoints/last.pt.
The student runs are made by the train stage's `train` function, passed in by the caller (the CLI):
a stage never imports another stage.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from cmkd_pipe.pipeline.config import dump_config
from cmkd_pipe.pipeline.records import write_json_atomic, write_text_atomic
from cmkd_pipe.pipeline.training.logs import load_metrics
from cmkd_pipe.pipeline.models.registry import family_of_arch
from cmkd_pipe.pipeline.training.engine import TrainRun
from cmkd_pipe.pipeline.training.presets import resolve_config, select_family


def point_name(tau: float, lam: float) -> str:
    """Run folder of one grid point, e.g. tau-2.5_lam-0.5."""
    return f"tau-{tau:g}_lam-{lam:g}"


def run_kd_sweep(train: TrainRun, features: str | os.PathLike, logits: str | os.PathLike, arch: str,
                 out: str | os.PathLike, *, preset: str, taus: list[float], lams: list[float],
                 overrides: list[str] | None = None, progress: bool = True, **train_options: Any) -> dict[str, Any]:
    """Train the (τ, λ) grid (skipping finished points), write sweep.json and sweep.md, return the summary.

    train_options go to `train` (device, weights, new_head, allow_download).
    """
    out = Path(out)
    taus, lams = _unique(taus, "tau"), _unique(lams, "lam")
    bad = [f"tau {t:g} (must be > 0)" for t in taus if not t > 0]
    bad += [f"lam {lam:g} (must be in [0, 1])" for lam in lams if not 0.0 <= lam <= 1.0]
    if bad:
        raise ValueError(f"kd sweep: invalid grid values: {', '.join(bad)}")
    base = list(overrides or [])
    # fails early on a bad preset or override
    config = select_family(resolve_config(preset, base), family_of_arch(arch).name)
    points = []
    for tau in taus:
        for lam in lams:
            settings = [*base, f"kd.tau={_yaml(tau)}", f"kd.lam={_yaml(lam)}"]
            folder = out / point_name(tau, lam)
            done = folder / "results.json"
            if done.is_file():
                _check_same_config(folder, resolve_config(preset, settings))
                results = json.loads(done.read_text())
            else:
                results = train(features, arch, folder, preset=preset, overrides=settings, resume=True,
                                logits=str(logits), progress=progress, **train_options)
            points.append(_point(tau, lam, folder, results))
    summary = {"metric": config["eval"]["metric"], "arch": arch, "preset": preset, "logits": str(logits),
               "val_split": config["data"]["val"], "test_split": config["data"]["test"],
               "selection_on_test_split": config["data"]["val"] == config["data"]["test"],
               "points": points, "best": _best(points)}
    write_json_atomic(out / "sweep.json", summary)
    write_text_atomic(out / "sweep.md", markdown_table(summary))
    return summary


def _unique(values: list[float], name: str) -> list[float]:
    if not values:
        raise ValueError(f"kd sweep: give at least one {name} value")
    return list(dict.fromkeys(float(v) for v in values))


def _yaml(value: float) -> str:
    """A float as YAML text that reads back as the same float (overrides are parsed as YAML)."""
    return yaml.safe_dump(value).split("\n")[0]


def _check_same_config(folder: Path, config: dict[str, Any]) -> None:
    recorded = folder / "config.yaml"
    if not recorded.is_file() or recorded.read_text() != dump_config(config):
        raise ValueError(f"{folder}: finished with another config than this sweep's for that point; "
                         "delete the folder or choose another --out")


def _point(tau: float, lam: float, folder: Path, results: dict[str, Any]) -> dict[str, Any]:
    """One grid point's row: validation metric of the best epoch, test metric then and of final.pt."""
    metric = results["metric"]
    epoch = results["best"]["epoch"]
    rows = {row["epoch"]: row for row in load_metrics(folder)}
    val = rows[epoch].get(f"val_{metric}") if epoch in rows else None
    return {"tau": tau, "lam": lam, "run": folder.name, "best_epoch": epoch, "val": val,
            "test": results["best"].get(metric), "final": results["final"],
            "final_test": results[results["final"]].get(metric)}


def _best(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [p for p in points if p["val"] is not None and math.isfinite(p["val"])]
    return max(scored, key=lambda p: p["val"]) if scored else None  # max keeps the first of equals


def markdown_table(summary: dict[str, Any]) -> str:
    """sweep.md: one row per grid point, the selected one in bold with a marker."""
    metric, best = summary["metric"], summary["best"]
    lines = [f"# KD sweep: {summary['arch']} student, preset {summary['preset']}", "",
             f"Selected on data.val = `{summary['val_split']}` by {metric}; test = `{summary['test_split']}`.", ""]
    if summary["selection_on_test_split"]:
        lines += ["**Warning:** the validation split is the test split, so the selection is tuned on test data; "
                  "set data.val to a held-out split for an unbiased choice.", ""]
    lines += [f"| τ | λ | val {metric} (epoch) | test {metric} at that epoch | test {metric} of final.pt | run |",
              "|---|---|---|---|---|---|"]
    for p in summary["points"]:
        mark = best is not None and p["run"] == best["run"]
        cells = [f"{p['tau']:g}", f"{p['lam']:g}", f"{_fmt(p['val'])} ({p['best_epoch']})", _fmt(p["test"]),
                 f"{_fmt(p['final_test'])} ({p['final']})", p["run"] + (" ← best" if mark else "")]
        if mark:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
