"""Demo recipe search and the 3-group CMKD comparison on the built-in demo corpus (issue #9).

Two commands, both rerunnable (finished trainings are read back, not redone):

  search  Train candidate recipes of both baselines and print VALIDATION accuracy only. Group k holds
          out test fold k and validation fold k+1 (wrapping); a search run trains on the other folds and
          is validated *and* evaluated on fold k+1, so no test clip is ever scored while choosing.
  cmkd    With one chosen recipe, run the whole comparison for each group: baselines (teachers), cached
          teacher logits with K views, the four students, one online-teacher student; then the report.

Every training runs in its own process with torch.set_num_threads(1), `--jobs` at a time, so the
seconds per training are single-core seconds (inflated when other work shares the machine).

  PYTHONPATH=$PWD python benchmarks/demo_recipe.py search --candidates cnn-gn,ast-ov8 --groups 1,2,3
  PYTHONPATH=$PWD python benchmarks/demo_recipe.py cmkd --recipe chosen --groups 1,2,3
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

N_FOLDS = 5
WORK = Path("runs/demo-recipe")

# ------------------------------------------------------------------------------------- candidates
# name → (family, --set overrides on the demo preset). Data splits are added per group.
_CNN_GN = ["model.cnn.arch=timm:test_efficientnet_gn"]
_COSINE = ["schedule.kind=cosine", "schedule.min_lr_ratio=0.02"]
_NO_AUG = ["augment.freq_mask=0", "augment.time_mask=0"]


def _epochs(n: int, wa_last: int | None = None) -> list[str]:
    wa = max(1, n // 4) if wa_last is None else wa_last
    return [f"train.epochs={n}", f"average.wa_start_epoch={n - wa + 1}", f"average.wa_end_epoch={n}"]


def _ast(stride_f: int, stride_t: int, dim: int = 64, depth: int = 2) -> list[str]:
    return [f"model.ast.fstride={stride_f}", f"model.ast.tstride={stride_t}", f"model.ast.embed_dim={dim}",
            f"model.ast.depth={depth}"]


CANDIDATES: dict[str, tuple[str, list[str]]] = {
    # today's demo preset (BatchNorm test_efficientnet; AST 16x16 patches without overlap), only longer
    "cnn-today-20": ("cnn", _epochs(20)),
    "ast-today-20": ("ast", _epochs(20)),
    # GroupNorm EfficientNet (no batch statistics to go stale on tiny data), cosine schedule
    "cnn-gn-20": ("cnn", _CNN_GN + _COSINE + _epochs(20)),
    "cnn-gn-20-mix": ("cnn", _CNN_GN + _COSINE + _epochs(20) + ["augment.mixup_rate=0.5"]),
    # AST with overlapping patches (stride 8 of 16): 7 x 24 = 168 patches
    "ast-ov8-20": ("ast", _ast(8, 8) + _COSINE + _epochs(20)),
    "ast-ov8-20-mix": ("ast", _ast(8, 8) + _COSINE + _epochs(20) + ["augment.mixup_rate=0.5"]),
    # AST with time overlap only: 4 x 24 = 96 patches (half the cost)
    "ast-t8-20": ("ast", _ast(16, 8) + _COSINE + _epochs(20)),
    # does the AST leave its plateau given many more epochs? (16x16 patches are 4x cheaper than overlap 8)
    "ast16-cos-60": ("ast", _ast(16, 16) + _COSINE + _epochs(60)),
    "ast-ov8-cos-60": ("ast", _ast(8, 8) + _COSINE + _epochs(60)),
    # BatchNorm EfficientNet with the cosine schedule (the chosen CNN)
    "cnn-bn-cos-16": ("cnn", _COSINE + _epochs(16)),
    # is the AST held back by augmentation, lr or batch size? (12 epochs each)
    "ast-ov8-noaug-12": ("ast", _ast(8, 8) + _COSINE + _epochs(12, 3) + _NO_AUG),
    "ast-ov8-noaug-lr3-12": ("ast", _ast(8, 8) + _COSINE + _epochs(12, 3) + _NO_AUG + ["optim.lr.ast=3.0e-3"]),
    "ast-ov8-halfaug-12": ("ast", _ast(8, 8) + _COSINE + _epochs(12, 3) + ["augment.freq_mask=6", "augment.time_mask=20"]),
    "ast-ov8-noaug-bs8-12": ("ast", _ast(8, 8) + _COSINE + _epochs(12, 3) + _NO_AUG
                             + ["data.batch_size=8", "schedule.warmup_steps=40"]),
}
# extra candidates may be given on the command line as NAME=FAMILY:override;override;...


def parse_candidate(text: str) -> tuple[str, tuple[str, list[str]]]:
    name, spec = text.split("=", 1)
    fam, overrides = spec.split(":", 1)
    return name, (fam, [item for item in overrides.split(";") if item])


# ------------------------------------------------------------------------------------------- data
def corpus(work: Path, clips_per_class: int) -> Path:
    """The demo corpus and its feature store (built once); returns the feature store path."""
    from cmkd_pipe.data_manifests.demo import make_demo_corpus
    from cmkd_pipe.pipeline.config import FeatureConfig
    from cmkd_pipe.stages.features import run_features

    root = work / f"corpus-{clips_per_class}"
    store = root / "features.zarr"
    if not (root / "manifest").is_dir():
        make_demo_corpus(root, clips_per_class=clips_per_class)
    if not (store / "zarr.json").is_file() or not _store_complete(store):
        run_features(root / "manifest", store, config=FeatureConfig(num_mel_bins=64, target_frames=200),
                     chunk_clips=32, n_workers=2, progress=False)
    return store


def _store_complete(store: Path) -> bool:
    return bool(json.loads((store / "zarr.json").read_text()).get("attributes", {}).get("complete"))


def val_fold(test: int) -> int:
    return test % N_FOLDS + 1


def search_splits(test: int) -> list[str]:
    """Train on every fold but test and validation; validate and evaluate on the validation fold."""
    val = val_fold(test)
    return [f"data.train=fold!={test}&fold!={val}", f"data.val=fold=={val}", f"data.test=fold=={val}"]


def cmkd_splits(test: int) -> list[str]:
    val = val_fold(test)
    return [f"data.train=fold!={test}&fold!={val}", f"data.val=fold=={val}", f"data.test=fold=={test}"]


# -------------------------------------------------------------------------------------- one job
def _job(job: dict[str, Any]) -> dict[str, Any]:
    """One training or teacher-logits run in this (fresh) process, single-threaded."""
    import torch

    torch.set_num_threads(1)
    out = Path(job["out"])
    started = time.perf_counter()
    if job["kind"] == "logits":
        from cmkd_pipe.stages.teacher_logits import run_teacher_logits

        if not (out / "zarr.json").is_file() or not _store_complete(out):
            run_teacher_logits(job["features"], job["checkpoint"], out, scheduler=None, n_workers=1,
                               progress=False, **job["views"])
        return {"out": str(out), "seconds": time.perf_counter() - started}
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text()) | {"reused": True}
    from cmkd_pipe.stages.train import train

    results = train(job["features"], job["family"], out, preset="demo", overrides=job["overrides"],
                    logits=job.get("logits"), teacher=job.get("teacher"), resume=True, progress=False)
    results["seconds"] = time.perf_counter() - started
    path = out / "results.json"
    path.write_text(json.dumps(results))  # the engine's results plus the wall time of this run
    return results


def run_jobs(jobs: list[dict[str, Any]], n_jobs: int) -> list[dict[str, Any]]:
    if not jobs:
        return []
    with mp.get_context("spawn").Pool(n_jobs, maxtasksperchild=1) as pool:
        return pool.map(_job, jobs, chunksize=1)


# ----------------------------------------------------------------------------------------- search
def curve(out: Path, column: str) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [float(row[column]) for row in rows]


def plateau(values: list[float], n_eval: int) -> tuple[float, float]:
    """(change over the last quarter from a least-squares line, binomial SE of one accuracy)."""
    quarter = values[-max(2, len(values) // 4):]
    slope = np.polyfit(np.arange(len(quarter)), quarter, 1)[0]
    p = float(np.mean(quarter))
    return float(slope * (len(quarter) - 1)), float(np.sqrt(p * (1 - p) / n_eval))


def search(args: argparse.Namespace) -> None:
    store = corpus(args.work, args.clips_per_class)
    candidates = dict(CANDIDATES)
    candidates.update(dict(parse_candidate(text) for text in args.extra))
    names = args.candidates.split(",") if args.candidates else list(candidates)
    groups = [int(g) for g in args.groups.split(",")]
    jobs = []
    for name in names:
        fam, overrides = candidates[name]
        for test in groups:
            out = args.work / f"search-{args.clips_per_class}" / name / f"val-{val_fold(test)}"
            jobs.append({"kind": "train", "family": fam, "features": str(store), "out": str(out),
                         "overrides": overrides + search_splits(test)})
    if not args.table_only:
        run_jobs(jobs, args.jobs)
    print(f"\nVALIDATION accuracy (corpus {args.clips_per_class} clips/class; group k: val fold k+1; "
          "single = last epoch, mean ± sample std over groups)")
    print(f"{'candidate':22s} {'single':>15s} {'WA':>15s} {'best-epoch':>15s} {'Δlast¼':>7s} {'SE':>5s} "
          f"{'s/train':>7s} {'epochs':>6s}")
    for name in names:
        rows = []
        for test in groups:
            out = args.work / f"search-{args.clips_per_class}" / name / f"val-{val_fold(test)}"
            if not (out / "results.json").is_file():
                continue  # --table-only: not trained (or interrupted)
            results = json.loads((out / "results.json").read_text())
            values = curve(out, "val_accuracy")
            change, se = plateau(values, results["n_test"])
            rows.append((results["last"]["accuracy"], (results.get("wa") or results["last"])["accuracy"],
                         results["best"]["accuracy"], change, se, results.get("seconds", float("nan")),
                         results["epochs"]))
        if not rows:
            continue
        a = np.array(rows, dtype=np.float64)
        cell = lambda col: (f"{a[:, col].mean():.3f} ± {a[:, col].std(ddof=1):.3f}" if len(a) > 1  # noqa: E731
                            else f"{a[0, col]:.3f} (n=1)")
        print(f"{name:22s} {cell(0):>15s} {cell(1):>15s} {cell(2):>15s} {a[:, 3].mean():+7.3f} "
              f"{a[:, 4].mean():5.3f} {a[:, 5].mean():7.1f} {int(a[0, 6]):6d}")


# ------------------------------------------------------------------------------------------- cmkd
def cmkd(args: argparse.Namespace) -> None:
    store = corpus(args.work, args.clips_per_class)
    recipe = json.loads(Path(args.recipe).read_text())  # {"cnn": [...], "ast": [...], "views": {...}}
    groups = [int(g) for g in args.groups.split(",")]
    run = args.work / f"cmkd-{args.clips_per_class}"

    def train_job(group: int, name: str, fam: str, **teacher: str) -> dict[str, Any]:
        overrides = recipe[fam] + cmkd_splits(group)
        if teacher and args.student_epochs:
            overrides += _epochs(args.student_epochs)
        return {"kind": "train", "family": fam, "features": str(store), "out": str(run / f"fold-{group}" / name),
                "overrides": overrides, **teacher}

    run_jobs([train_job(g, f"train-{fam}", fam) for g in groups for fam in ("cnn", "ast")], args.jobs)
    for g in groups:  # here, not in the pool: its daemonic workers cannot start the stage's Dask worker
        for t in ("cnn", "ast"):
            done = _job({"kind": "logits", "features": str(store), "views": recipe["views"][t],
                         "checkpoint": str(run / f"fold-{g}" / f"train-{t}" / "final.pt"),
                         "out": str(run / f"fold-{g}" / f"logits-{t}" / "logits.zarr")})
            print(f"fold-{g}/logits-{t}: {done['seconds']:.1f} s", flush=True)
    # cross-model students of every group first, then the same-model controls, then the online students
    pairs = [("cnn", "ast"), ("ast", "cnn"), ("cnn", "cnn"), ("ast", "ast")]
    students = [train_job(g, f"student-{s}-from-{t}", s,
                          logits=str(run / f"fold-{g}" / f"logits-{t}" / "logits.zarr"))
                for s, t in pairs for g in groups]
    s, t = args.online.split("-from-")
    students += [train_job(g, f"student-{s}-from-{t}-online", s,
                           teacher=str(run / f"fold-{g}" / f"train-{t}" / "final.pt")) for g in groups]
    run_jobs(students, args.jobs)
    from cmkd_pipe.stages.report import build_report

    report = build_report(run, run / "report")
    print((run / "report" / "report.md").read_text().split("## Missing runs")[0])
    print(f"report: {run / 'report'} ({len(report['rows'])} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("search", "cmkd"):
        p = sub.add_parser(name)
        p.add_argument("--work", type=Path, default=WORK)
        p.add_argument("--clips-per-class", type=int, default=40)
        p.add_argument("--groups", default="1,2,3", help="test folds; validation fold = test fold + 1")
        p.add_argument("--jobs", type=int, default=2, help="trainings at a time, one thread each")
    sub.choices["search"].add_argument("--candidates", default="", help="comma list (default: all)")
    sub.choices["search"].add_argument("--extra", nargs="*", default=[], help="NAME=FAMILY:k=v;k=v ...")
    sub.choices["search"].add_argument("--table-only", action="store_true", help="print finished runs, train nothing")
    sub.choices["cmkd"].add_argument("--recipe", required=True, help="JSON: {cnn: [..], ast: [..], views: {..}}")
    sub.choices["cmkd"].add_argument("--online", default="ast-from-cnn", help="online-teacher student S-from-T")
    sub.choices["cmkd"].add_argument("--student-epochs", type=int, default=None)
    args = parser.parse_args()
    {"search": search, "cmkd": cmkd}[args.command](args)


if __name__ == "__main__":
    main()
