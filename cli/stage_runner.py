"""One way into every stage: a stage's settings (`params`), paths (`io`) and runtime knobs, as the graph
writes them to `<stage>/config.json`, turned into one call of the stage's function.

`cmkd-pipe run-stage DIR` (what `cmkd-pipe run` and Make execute) reads DIR/config.json and calls
`run(kind, params, io, runtime)`; the stage commands (`features`, `train`, `teacher-logits`, …) build the
same three dicts from their flags and call the same function, so a flag can never reach a stage by one
route and miss it by the other.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

Settings = dict[str, Any]
NO_KD = {"lam": 1.0, "tau": 1.0, "form": "softmax-kl", "tau2_scaling": False, "views": 1}  # plain training


def run_stage_dir(folder: Path) -> Any:
    """Run the stage described by FOLDER/config.json."""
    path = Path(folder) / "config.json"
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the stage config ({error}); rerun `cmkd-pipe plan` or "
                         "`cmkd-pipe run` to rewrite it") from None
    return run(spec["stage"], spec["params"], spec["io"], spec.get("runtime", {}))


def run(kind: str, params: Settings, io: Settings, runtime: Settings) -> Any:
    """Call the stage function of `kind` with its settings."""
    if kind not in RUNNERS:
        raise ValueError(f"unknown stage kind {kind!r}; known: {', '.join(RUNNERS)}")
    return RUNNERS[kind](params, io, runtime)


def manifest(params: Settings, io: Settings, runtime: Settings) -> Any:
    from cmkd_pipe.data_manifests.builders import build_manifest

    built = build_manifest(params["builder"], Path(params["data_root"]), **params.get("options", {}))
    built.save(Path(io["out"]))
    return built


def features(params: Settings, io: Settings, runtime: Settings) -> dict[str, Any]:
    from cmkd_pipe.pipeline.config import FeatureConfig
    from cmkd_pipe.stages.features import run_features

    return run_features(io["manifest"], io["out"], config=FeatureConfig.from_dict(params["features"]),
                        chunk_clips=int(params["chunk_clips"]), scheduler=_scheduler(runtime),
                        n_workers=runtime.get("workers"),
                        max_bad_fraction=float(params.get("max_bad_fraction", 0.05)),
                        **({"min_level": float(params["min_level"])} if "min_level" in params else {}),
                        **({"codec": runtime["codec"]} if runtime.get("codec") else {}),
                        overwrite=bool(runtime.get("overwrite", False)),
                        progress=bool(runtime.get("progress", True)))


def teacher_logits(params: Settings, io: Settings, runtime: Settings) -> dict[str, Any]:
    from cmkd_pipe.stages.teacher_logits import run_teacher_logits

    views = params["views"]
    return run_teacher_logits(io["features"], io["checkpoint"], io["out"], views=int(views["n_views"]),
                              view_seed=int(views["seed"]), freq_mask=int(views["freq_mask"]),
                              time_mask=int(views["time_mask"]), mixup_rate=float(views["mixup_rate"]),
                              mixup_alpha=float(views["alpha"]), time_shift=int(views.get("time_shift", 0)),
                              mask_fill=views.get("mask_fill", "zero"),
                              mix_mode=params["mix_mode"],
                              chunk_clips=params.get("chunk_clips"), batch_size=int(runtime.get("batch_size", 32)),
                              scheduler=_scheduler(runtime), n_workers=runtime.get("workers"),
                              device=runtime.get("device"), overwrite=bool(runtime.get("overwrite", False)),
                              progress=bool(runtime.get("progress", True)))


def import_teacher(params: Settings, io: Settings, runtime: Settings) -> dict[str, Any]:
    """A published checkpoint made a teacher: params {family, overrides, allow_unmapped, preset, preset_overrides}."""
    from cmkd_pipe.stages.import_teacher import run_import_teacher

    return run_import_teacher(io["weights"], io["features"], io["out"], family=params.get("family"),
                              overrides=params.get("overrides", []), labels=io.get("labels"),
                              allow_unmapped=bool(params.get("allow_unmapped")), preset=params.get("preset"),
                              preset_overrides=params.get("preset_overrides"))


def train(params: Settings, io: Settings, runtime: Settings) -> dict[str, Any]:
    """A training run: params {family, config (resolved), teacher: None | logits | checkpoint}."""
    from cmkd_pipe.stages.train import train as train_stage

    teacher = params.get("teacher")
    config = params["config"]
    if config.get("kd") is None:  # a baseline: the task loss alone
        config = {**config, "kd": NO_KD}
    return train_stage(io["features"], params["family"], io["out"], config=config,
                       resume=bool(runtime.get("resume", True)), weights=runtime.get("weights"),
                       new_head=bool(runtime.get("new_head", False)),
                       logits=io["teacher"] if teacher == "logits" else None,
                       teacher=io["teacher"] if teacher == "checkpoint" else None,
                       device=runtime.get("device"), allow_download=bool(runtime.get("pretrained_from_hub")),
                       progress=bool(runtime.get("progress", True)), overwrite=bool(runtime.get("overwrite")),
                       extra={**(runtime.get("extra") or {}), "feature_store": str(Path(io["features"]).resolve())})


def _scheduler(runtime: Settings) -> str | None:
    """The stage's own scheduler, else the cluster its `cmkd-pipe run` shares (stages.graph), else None."""
    return runtime.get("scheduler") or os.environ.get("CMKD_PIPE_SCHEDULER")


def report(params: Settings, io: Settings, runtime: Settings) -> dict[str, Any]:
    from cmkd_pipe.stages.report import build_report

    return build_report(io["run_dir"], io["out"])


RUNNERS: dict[str, Callable[[Settings, Settings, Settings], Any]] = {
    "manifest": manifest, "features": features, "train": train, "train-student": train,
    "teacher-logits": teacher_logits, "import-teacher": import_teacher, "report": report,
}
