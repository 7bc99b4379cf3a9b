"""Report stage: the CMKD comparison table and figures, built from the run folders of `cmkd-pipe cmkd`.

Inputs:  RUN_DIR/<group>/<run>/results.json, metrics.jsonl and test_predictions.npz, as the training
         engine writes them, and the stage records (stage.json, or config.json before a stage ran) the
         stage graph writes beside them. A group is one CV fold (`fold-1`) or `main`; the runs are the
         baselines `train-cnn`, `train-ast` (also the teachers), the students
         `student-<arch>-from-<teacher>`, the online-teacher students `student-<arch>-from-<teacher>-online`
         and the KD-form variants `student-<arch>-from-<teacher>-<form>` (form: softmax-kl, sigmoid-kl, bce).
         A folder is a run when its stage record says it is a training stage; without a record, when
         its name is one of those above or it holds results.json or a failure note.
Statistics: every cell is the mean ± sample standard deviation (ddof=1) over groups. A comparison
         A − B pairs the groups where both ran; its spread is the std of those per-group differences,
         and the gain counts as larger than noise when mean Δ > 2 SE (SE = std / √n, n >= 3 groups).
Outputs: OUT (default RUN_DIR/report)/ report.md, learning_curves.png, per_class.png, agreement.png and
         report.json, each written atomically (temporary file, then rename), report.json last.
Record:  none; the report is cheap and rebuilt from the run folders on every call. A run without
         results.json (failed, unfinished or never started) is listed as missing.
"""
from __future__ import annotations

import json
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmkd_pipe.pipeline.metrics import average_precision
from cmkd_pipe.pipeline.models.registry import family_of_arch
from cmkd_pipe.pipeline.records import atomic_path, read_failure, write_json_atomic, write_text_atomic
from cmkd_pipe.pipeline.training.logs import load_metrics
from cmkd_pipe.pipeline.version import code_version

SCHEMA = "cmkd-pipe/report/1"
RESULTS = "results.json"
PREDICTIONS = "test_predictions.npz"
EXPECTED_RUNS = ("train-cnn", "train-ast", "student-cnn-from-ast", "student-ast-from-cnn",
                 "student-cnn-from-cnn", "student-ast-from-ast")
VARIANTS = {"single": "last", "best": "best", "wa": "wa", "ensemble": "ensemble"}  # column → results key
FIGURES = {"learning_curves": "learning_curves.png", "per_class": "per_class.png", "agreement": "agreement.png"}
AGREEMENT = "teacher_agreement"
KD_FORMS = ("softmax-kl", "sigmoid-kl", "bce")
# \w+: a model family name (no '-'); an optional suffix marks the online reference or a KD-form student
RUN_NAME = re.compile(r"(?:train-(\w+)|student-(\w+)-from-(\w+)(?:-(online|softmax-kl|sigmoid-kl|bce))?)")
TRAINING_STAGES = ("train", "train-student")
RECORD, PLANNED, RUN_CONFIG = "stage.json", "config.json", "config.yaml"
MIN_GROUPS = 3  # fewer paired groups: no verdict on noise
NOISE_RULE = (f"gain larger than noise: mean paired Δ > 2 SE, SE = sample std (ddof=1) of the per-group Δ / √n, "
              f"decided only with n >= {MIN_GROUPS} paired groups (else n/a)")


class ReportError(ValueError):
    """The run folders cannot be reported on (nothing to report, or a malformed file)."""


@dataclass(frozen=True)
class Run:
    group: str
    name: str
    path: Path
    results: dict[str, Any]

    @property
    def role(self) -> str:
        return self.results.get("run", {}).get("role") or ("student" if "teacher" in self.results else "baseline")

    @property
    def family(self) -> str:
        return _family(self.results["arch"])

    def value(self, variant: str, metric: str) -> float | None:
        summary = self.results.get(VARIANTS[variant])
        value = summary.get(metric) if isinstance(summary, dict) else None
        return None if value is None else float(value)

    @property
    def online(self) -> bool:
        """Trained against a live frozen teacher rather than cached logits."""
        if self.name.endswith("-online") or (self.results.get("teacher") or {}).get("mode") == "online":
            return True
        record = _json_or_none(self.path / RECORD)
        return isinstance(record, dict) and (record.get("labels") or {}).get("teaching") == "online"

    @property
    def kd_form(self) -> str | None:
        """The KD loss form it was trained with (None for a baseline or an unknown config)."""
        return (_run_config(self.path).get("kd") or {}).get("form")

    @property
    def best_on_test(self) -> bool:
        """The best epoch was chosen on the test split itself (data.val == data.test)."""
        data = _run_config(self.path).get("data") or {}
        return "val" in data and data.get("val") == data.get("test")

    @property
    def seconds(self) -> float | None:
        """Wall time of the training: results.json `seconds`, else the sum of the logged epoch times."""
        if isinstance(self.results.get("seconds"), (int, float)):
            return float(self.results["seconds"])
        times = [row["epoch_seconds"] for row in load_metrics(self.path)
                 if isinstance(row.get("epoch_seconds"), (int, float))]
        return float(sum(times)) if times else None


def build_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 class_names: list[str] | None = None) -> dict[str, Any]:
    """Collect every RUN_DIR/<group>/<run>/results.json and write the report files; return report.json's data."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run folder; give the --out folder of `cmkd-pipe cmkd`")
    groups, runs, missing = _collect(run_dir, out)
    metric, multilabel = _common_setting(runs)
    names = _ordered(EXPECTED_RUNS + tuple(name for _, name in runs))
    rows = [_row(name, groups, runs, metric) for name in names]
    students = [row["run"] for row in rows if row["role"] == "student"]
    per_class = _per_class(students, groups, runs, multilabel, class_names)
    curves = {f"val_{metric}": _curves(names, groups, runs, f"val_{metric}"),
              AGREEMENT: _curves(students, groups, runs, AGREEMENT)}
    labels = {row["run"]: _label(row) for row in rows}
    report = {"schema": SCHEMA, "run_dir": str(run_dir), "metric": metric, "multilabel": multilabel,
              "groups": groups, "rows": rows, "comparisons": _comparisons(groups, runs, metric),
              "online": _online_rows(groups, runs, metric), "kd_forms": _kd_forms(groups, runs, metric),
              "noise_rule": NOISE_RULE, "missing": missing, "per_class": per_class, "curves": curves,
              "class_names": list(class_names) if class_names is not None else None,
              "figures": FIGURES, "code_version": code_version()}
    out.mkdir(parents=True, exist_ok=True)
    _plot_curves(out / FIGURES["learning_curves"], curves[f"val_{metric}"], labels, f"validation {metric}",
                 "no run has logged a validation metric yet")
    _plot_per_class(out / FIGURES["per_class"], per_class, labels, _class_metric_name(multilabel), class_names)
    _plot_curves(out / FIGURES["agreement"], curves[AGREEMENT], labels, "top-1 agreement with the teacher",
                 "no KD run has logged teacher_agreement yet")
    _write_text(out / "report.md", markdown(report))
    write_json_atomic(out / "report.json", report)
    return report


# ------------------------------------------------------------------------------ collecting runs
def _collect(run_dir: Path, out: Path) -> tuple[list[str], dict[tuple[str, str], Run], list[dict[str, str]]]:
    groups: list[str] = []
    runs: dict[tuple[str, str], Run] = {}
    missing: list[dict[str, str]] = []
    for group_dir in sorted(run_dir.iterdir(), key=lambda p: _natural(p.name)):
        if not group_dir.is_dir() or group_dir.name.startswith(".") or group_dir.resolve() == out.resolve():
            continue
        found = {p.name for p in group_dir.iterdir() if p.is_dir() and _is_run_folder(p)}
        if not found:
            continue
        groups.append(group_dir.name)
        for name in _ordered(EXPECTED_RUNS + tuple(found)):
            path = group_dir / name
            if (path / RESULTS).is_file():
                runs[(group_dir.name, name)] = Run(group_dir.name, name, path, _read_results(path / RESULTS))
            else:
                missing.append({"group": group_dir.name, "run": name, "reason": _why_missing(path)})
    if not groups:
        raise ReportError(f"{run_dir}: no run folders <group>/<run>/ inside; run `cmkd-pipe cmkd` first")
    if not runs:
        raise ReportError(f"{run_dir}: no run has a {RESULTS} yet ({len(missing)} missing); "
                          "let `cmkd-pipe cmkd` finish at least one training")
    return groups, runs, missing


def _is_run_folder(path: Path) -> bool:
    """A training stage by its stage record; without one, by its name or the files it holds."""
    kind = _stage_kind(path)
    if kind is not None:
        return kind in TRAINING_STAGES
    return (RUN_NAME.fullmatch(path.name) is not None or (path / RESULTS).is_file()
            or read_failure(path) is not None)


def _stage_kind(path: Path) -> str | None:
    """The stage kind its record (or, before it ran, its planned config) names; None without either."""
    for name in (RECORD, PLANNED):
        record = _json_or_none(path / name)
        if isinstance(record, dict) and isinstance(record.get("stage"), str):
            return record["stage"]
    return None


def _run_config(path: Path) -> dict[str, Any]:
    """The training config of a run: from its stage record, else the engine's config.yaml; {} if neither."""
    record = _json_or_none(path / RECORD)
    if isinstance(record, dict) and isinstance((record.get("config") or {}).get("config"), dict):
        return record["config"]["config"]
    if (path / RUN_CONFIG).is_file():
        import yaml

        try:
            config = yaml.safe_load((path / RUN_CONFIG).read_text())
        except yaml.YAMLError as error:
            raise ReportError(f"{path / RUN_CONFIG}: not valid YAML ({error}); rerun that training") from None
        return config if isinstance(config, dict) else {}
    return {}


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error.msg}); rerun that stage or delete its folder") from None


def _why_missing(path: Path) -> str:
    failure = read_failure(path)
    if failure is not None:
        return f"failed: {failure.get('error') or 'see ' + str(failure.get('log'))}"
    return f"no {RESULTS} (unfinished or interrupted)" if path.is_dir() else "not run"


def _read_results(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error.msg}); rerun that training or delete its folder") from None
    if not isinstance(results, dict):
        raise ReportError(f"{path}: expected a JSON object; rerun that training or delete its folder")
    for field in ("arch", "metric", "last"):
        if field not in results:
            raise ReportError(f"{path}: field {field!r} missing; rerun that training or delete its folder")
    if not isinstance(results["last"], dict) or results["metric"] not in results["last"]:
        raise ReportError(f"{path}: field 'last.{results['metric']}' missing; rerun that training")
    return results


def _common_setting(runs: dict[tuple[str, str], Run]) -> tuple[str, bool]:
    first = next(iter(runs.values()))
    setting = (first.results["metric"], bool(first.results.get("multilabel", False)))
    for run in runs.values():
        other = (run.results["metric"], bool(run.results.get("multilabel", False)))
        if other != setting:
            raise ReportError(f"{run.path / RESULTS}: metric/multilabel {other} differ from {setting} of "
                              f"{first.path / RESULTS}; report the runs of one dataset at a time")
    return setting


# ------------------------------------------------------------------------------------- table
def _row(name: str, groups: list[str], runs: dict[tuple[str, str], Run], metric: str) -> dict[str, Any]:
    present = [runs[(g, name)] for g in groups if (g, name) in runs]
    model, teacher, role = _describe(name, present, runs)
    row: dict[str, Any] = {
        "run": name, "model": model, "teacher": teacher, "role": role, "n": len(present),
        "groups": [run.group for run in present],
        "metric": {variant: _stats({run.group: run.value(variant, metric) for run in present})
                   for variant in VARIANTS},
        "best_epoch": {run.group: run.results.get("best", {}).get("epoch") for run in present},
        "best_on_test": [run.group for run in present if run.best_on_test],
        "seconds": _stats({run.group: run.seconds for run in present}),
        "delta": None, "gain": None, "beats_teacher": None,
    }
    if role != "student":
        return row
    deltas: dict[str, dict[str, float | None]] = {variant: {} for variant in VARIANTS}
    wins: dict[str, bool] = {}
    for run in present:
        baseline = _baseline(run.group, run.family, runs)
        if baseline is not None:
            for variant in VARIANTS:
                deltas[variant][run.group] = _difference(run.value(variant, metric), baseline.value(variant, metric))
        teacher_run = _teacher(run, runs)
        if teacher_run is not None and None not in (run.value("single", metric), teacher_run.value("single", metric)):
            wins[run.group] = run.value("single", metric) > teacher_run.value("single", metric)
    row["delta"] = {variant: _stats(values) for variant, values in deltas.items()}
    row["gain"] = noise_verdict(row["delta"]["single"])
    row["beats_teacher"] = {"wins": sum(wins.values()), "n": len(wins), "groups": wins}
    return row


def paired_delta(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, Any]:
    """A − B over the groups where both have a value: the per-group differences' mean, sample std
    (ddof=1), standard error std/√n and the noise verdict (see noise_verdict)."""
    stats = _stats({group: _difference(a[group], b[group]) for group in a if group in b})
    stats["se"] = stats["std"] / math.sqrt(stats["n"]) if stats["std"] is not None else None
    stats["gain"] = noise_verdict(stats)
    return stats


def noise_verdict(stats: dict[str, Any]) -> str:
    """'yes' when the mean paired Δ exceeds 2 standard errors, 'no' when it does not, 'n/a' with fewer
    than MIN_GROUPS paired groups (the fixed rule NOISE_RULE states)."""
    if stats["n"] < MIN_GROUPS or stats["std"] is None:
        return "n/a"
    return "yes" if stats["mean"] > 2 * stats["std"] / math.sqrt(stats["n"]) else "no"


# the comparisons CMKD is about: (label, run A, run B); Δ = A − B per group; {o} is the other family
COMPARISONS = (
    ("KD-{F}←{O} vs {F} baseline (cross-model KD gain)", "student-{f}-from-{o}", "train-{f}"),
    ("KD-{F}←{F} vs {F} baseline (same-model KD gain)", "student-{f}-from-{f}", "train-{f}"),
    ("KD-{F}←{O} vs KD-{F}←{F} (cross-model over same-model)", "student-{f}-from-{o}", "student-{f}-from-{f}"),
    ("KD-{F}←{O} vs its teacher {O}", "student-{f}-from-{o}", "train-{o}"),
)


def _comparisons(groups: list[str], runs: dict[tuple[str, str], Run], metric: str) -> list[dict[str, Any]]:
    """Every COMPARISONS row for both student families (AST first), single-model metric, paired by group."""
    out = []
    for family, other in (("ast", "cnn"), ("cnn", "ast")):
        names = {"f": family, "o": other, "F": family.upper(), "O": other.upper()}
        for label, a, b in COMPARISONS:
            a, b = a.format(**names), b.format(**names)
            values = {name: {g: runs[(g, name)].value("single", metric) for g in groups if (g, name) in runs}
                      for name in (a, b)}
            out.append({"comparison": label.format(**names), "a": a, "b": b,
                        "a_metric": _stats(values[a]), "b_metric": _stats(values[b]),
                        "delta": paired_delta(values[a], values[b])})
    return out


def _online_rows(groups: list[str], runs: dict[tuple[str, str], Run], metric: str) -> list[dict[str, Any]]:
    """Each online-teacher student next to its cached-logits twin: metric, student-phase seconds, Δ."""
    online_names = sorted({name for (_, name), run in runs.items() if run.online}, key=_natural)
    out = []
    for online in online_names:
        cached = online.removesuffix("-online")
        metric_of = {name: {g: runs[(g, name)].value("single", metric) for g in groups if (g, name) in runs}
                     for name in (online, cached)}
        seconds = {name: _stats({g: runs[(g, name)].seconds for g in groups if (g, name) in runs})
                   for name in (online, cached)}
        out.append({"online": online, "cached": cached,
                    "metric": {"online": _stats(metric_of[online]), "cached": _stats(metric_of[cached])},
                    "seconds": seconds, "delta": paired_delta(metric_of[online], metric_of[cached])})
    return out


def _kd_forms(groups: list[str], runs: dict[tuple[str, str], Run], metric: str) -> list[dict[str, Any]]:
    """Per student-teacher pair with KD-form variants (`...-<form>` runs): the metric of each form. The
    plain `student-<s>-from-<t>` run stands for the form its config names (the graph does not train it twice)."""
    pairs: dict[str, dict[str, dict[str, Any]]] = {}
    for (_, name) in runs:
        match = RUN_NAME.fullmatch(name)
        if match and match.group(4) in KD_FORMS:
            pairs.setdefault(f"student-{match.group(2)}-from-{match.group(3)}", {})
    for pair, forms in pairs.items():
        for form in KD_FORMS:
            values = {}
            for group in groups:
                run = runs.get((group, f"{pair}-{form}")) or runs.get((group, pair))
                if run is not None and (run.name != pair or run.kd_form == form):
                    values[group] = run.value("single", metric)
            if values:
                forms[form] = _stats(values)
    return [{"pair": pair, "forms": forms} for pair, forms in sorted(pairs.items())]


def _describe(name: str, present: list[Run], runs: dict[tuple[str, str], Run]) -> tuple[str, str, str]:
    """(model, teacher, role) labels, from the results when there are any, else from the run name."""
    if present:
        run = present[0]
        if run.role != "student":
            return run.family.upper(), "—", run.role
        teacher = _teacher(run, runs)
        arch = run.results["teacher"].get("arch") or (teacher.results["arch"] if teacher else None)
        label = (_family(arch).upper() if arch else "?") + _variant_note(name)
        return f"KD-{run.family.upper()}", label, "student"
    match = RUN_NAME.fullmatch(name)
    if match is None:
        return "?", "?", "?"
    if match.group(1):
        return match.group(1).upper(), "—", "baseline"
    return f"KD-{match.group(2).upper()}", match.group(3).upper() + _variant_note(name), "student"


def _baseline(group: str, family: str, runs: dict[tuple[str, str], Run]) -> Run | None:
    """The same-architecture baseline of a group (`train-<family>` first)."""
    preferred = runs.get((group, f"train-{family}"))
    if preferred is not None and preferred.role == "baseline":
        return preferred
    return next((r for (g, _), r in runs.items() if g == group and r.role == "baseline" and r.family == family), None)


def _teacher(run: Run, runs: dict[tuple[str, str], Run]) -> Run | None:
    """The teacher run of a student: the run its results name, else the teacher architecture's baseline."""
    teacher = run.results.get("teacher") or {}
    if teacher.get("run"):
        return runs.get((run.group, teacher["run"]))
    return _baseline(run.group, _family(teacher["arch"]), runs) if teacher.get("arch") else None


def _stats(values: dict[str, float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (None below two values) over groups."""
    kept = {group: value for group, value in values.items() if value is not None}
    array = np.array(list(kept.values()), dtype=np.float64)
    return {"mean": float(array.mean()) if len(array) else None,
            "std": float(array.std(ddof=1)) if len(array) > 1 else None, "n": len(array), "values": kept}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _variant_note(name: str) -> str:
    """' (online)' or ' (<form>)' for the online and KD-form variants of a student run, else ''."""
    match = RUN_NAME.fullmatch(name)
    return f" ({match.group(4)})" if match and match.group(4) else ""


def _family(arch: str) -> str:
    return family_of_arch(arch).name


def _label(row: dict[str, Any]) -> str:
    return row["model"] if row["role"] != "student" else f"{row['model']} ← {row['teacher']}"


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _ordered(names: tuple[str, ...]) -> list[str]:
    """The standard runs in their order, then any other run names sorted."""
    unique = dict.fromkeys(names)
    return [n for n in EXPECTED_RUNS if n in unique] + sorted((n for n in unique if n not in EXPECTED_RUNS),
                                                              key=_natural)


# ------------------------------------------------------------------------- per-class metrics
def _class_metric_name(multilabel: bool) -> str:
    return "AP" if multilabel else "accuracy"


def per_class_accuracy(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class accuracy (recall of the top class) [K]; NaN for a class without test clips."""
    true, predicted = targets.argmax(axis=1), scores.argmax(axis=1)
    k = targets.shape[1]
    counts = np.bincount(true, minlength=k)
    hits = np.bincount(true, weights=(predicted == true).astype(np.float64), minlength=k)
    return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def _per_class(students: list[str], groups: list[str], runs: dict[tuple[str, str], Run], multilabel: bool,
               class_names: list[str] | None) -> dict[str, Any]:
    """Per student: its per-class metric and its teacher's on the same clips, averaged over groups."""
    measure = average_precision if multilabel else per_class_accuracy
    out: dict[str, Any] = {}
    for name in students:
        student, teacher = [], []
        for group in groups:
            run = runs.get((group, name))
            if run is None or not (run.path / PREDICTIONS).is_file():
                continue
            scores, targets, teacher_scores, classes = _read_predictions(run.path / PREDICTIONS)
            if student and len(scores[0]) != len(student[0]):
                raise ReportError(f"{run.path / PREDICTIONS}: {len(scores[0])} classes, other groups have "
                                  f"{len(student[0])}; report the runs of one dataset at a time")
            student.append(measure(scores, targets))
            teacher.append(_teacher_measure(measure, teacher_scores, targets, classes))
        if not student:
            continue
        s, t = _nanmean(np.stack(student)), _nanmean(np.stack(teacher))
        if class_names is not None and len(class_names) != len(s):
            raise ReportError(f"class_names has {len(class_names)} names but the predictions of {name} have "
                              f"{len(s)} classes; pass the store's vocabulary")
        defined = ~np.isnan(s) & ~np.isnan(t)
        out[name] = {"groups": len(student), "student": _json_list(s), "teacher": _json_list(t),
                     "classes": int(defined.sum()), "better": int((s[defined] > t[defined]).sum()),
                     "worse": int((s[defined] < t[defined]).sum())}
    return out


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """scores, targets, teacher_scores and teacher_classes (the corpus classes of the teacher's columns
    when it scores only those: an imported teacher's label map; None: every class)."""
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in ("scores", "targets", "teacher_scores", "teacher_classes")
                      if key in data}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ReportError(f"{path}: unreadable ({error}); rerun that training") from None
    for key in ("scores", "targets", "teacher_scores"):
        if key not in arrays:
            raise ReportError(f"{path}: array {key!r} missing; rerun that training with the current engine")
    classes = arrays.get("teacher_classes")
    teacher_shape = arrays["targets"].shape if classes is None else (len(arrays["targets"]), len(classes))
    if not arrays["scores"].shape == arrays["targets"].shape or arrays["teacher_scores"].shape != teacher_shape:
        raise ReportError(f"{path}: scores, targets and teacher_scores differ in shape; rerun that training")
    return arrays["scores"], arrays["targets"], arrays["teacher_scores"], classes


def _teacher_measure(measure: Any, scores: np.ndarray, targets: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    """The teacher's per-class metric over every corpus class: NaN for the classes it does not score; for
    single-label data only clips of a class it scores count (its top class is chosen among its own)."""
    if classes is None:
        return measure(scores, targets)
    mapped = targets[:, classes]
    rows = slice(None) if measure is average_precision else mapped.any(axis=1)
    out = np.full(targets.shape[1], np.nan)
    if len(mapped[rows]):
        out[classes] = measure(scores[rows], mapped[rows])
    return out


def _nanmean(stack: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where every value is NaN (without numpy's warning)."""
    count = (~np.isnan(stack)).sum(axis=0)
    return np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)


def _json_list(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


# ------------------------------------------------------------------------------------ curves
def _curves(names: list[str], groups: list[str], runs: dict[tuple[str, str], Run], column: str) -> dict[str, Any]:
    """Per run: `column` per epoch, mean and std over the groups that logged it."""
    out: dict[str, Any] = {}
    for name in names:
        by_epoch: dict[int, list[float]] = {}
        for group in groups:
            run = runs.get((group, name))
            for row in load_metrics(run.path) if run is not None else []:
                if isinstance(row.get(column), (int, float)) and np.isfinite(row[column]):
                    by_epoch.setdefault(row["epoch"], []).append(float(row[column]))
        if by_epoch:
            epochs = sorted(by_epoch)
            out[name] = {"epoch": epochs, "mean": [float(np.mean(by_epoch[e])) for e in epochs],
                         "std": [float(np.std(by_epoch[e], ddof=1)) if len(by_epoch[e]) > 1 else 0.0 for e in epochs],
                         "n": [len(by_epoch[e]) for e in epochs]}
    return out


# ----------------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _plot_curves(path: Path, curves: dict[str, Any], labels: dict[str, str], ylabel: str, empty: str) -> None:
    from matplotlib.ticker import MaxNLocator

    figure = _figure(8, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        epoch, mean, std = (np.array(curve[k]) for k in ("epoch", "mean", "std"))
        line, = axes.plot(epoch, mean, marker="o", markersize=3, label=f"{labels[name]} ({name})")
        if max(curve["n"]) > 1:
            axes.fill_between(epoch, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    if curves:
        n = max(max(c["n"]) for c in curves.values())
        axes.set_title(f"{ylabel} per epoch" + (f" (mean ± std over {n} groups)" if n > 1 else ""))
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, empty, ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    _save(figure, path)


def _plot_per_class(path: Path, per_class: dict[str, Any], labels: dict[str, str], measure: str,
                    class_names: list[str] | None) -> None:
    """One scatter per student: teacher's per-class metric (x) against the student's (y)."""
    columns = min(max(len(per_class), 1), 2)
    rows = max(1, -(-len(per_class) // 2))
    figure = _figure(5 * columns, 4.6 * rows)
    if not per_class:
        axes = figure.add_subplot(1, 1, 1)
        axes.text(0.5, 0.5, f"no KD run has {PREDICTIONS} yet", ha="center", va="center", transform=axes.transAxes)
    for position, (name, entry) in enumerate(per_class.items(), start=1):
        axes = figure.add_subplot(rows, columns, position)
        s, t = (np.array(entry[k], dtype=np.float64) for k in ("student", "teacher"))  # None → NaN
        defined = ~np.isnan(s) & ~np.isnan(t)
        axes.scatter(t[defined], s[defined], s=14, alpha=0.7)
        axes.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
        differs = defined & (s != t)
        for index in np.flatnonzero(differs)[np.argsort(-np.abs(s - t)[differs])[:3]]:  # the 3 largest gaps
            name_of = class_names[index] if class_names is not None else f"#{index}"
            axes.annotate(name_of, (t[index], s[index]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel(f"teacher per-class {measure}")
        axes.set_ylabel(f"student per-class {measure}")
        axes.set_title(f"{labels[name]}: above teacher on {entry['better']}/{entry['classes']}", fontsize=10)
        axes.grid(alpha=0.3)
    _save(figure, path)


# ---------------------------------------------------------------------------------- markdown
COLUMNS = (
    ("model", "the trained architecture; KD- marks a student trained on a teacher's outputs"),
    ("teacher", "the teacher's architecture (— for baselines, which are the teachers)"),
    ("run", "the run folder under each group"),
    ("n", "groups (folds or seeds) with a result; a cell with fewer says (n=k); values are mean ± sample std"),
    ("single", "the model after the last epoch"),
    ("best epoch", "the model of the epoch with the best validation metric, on the test split"),
    ("WA", "weights averaged over the epoch range in results.json"),
    ("ensemble", "the mean of the per-epoch test predictions"),
    ("Δ vs baseline", "single-model student minus the same-architecture baseline of its group: mean ± sample "
                      "std of the per-group paired differences"),
    ("gain > noise", "whether that Δ is larger than noise by the fixed rule below (yes / no / n/a)"),
    ("beats teacher", "groups where the single-model student is above its teacher (yes: all, no: none)"),
)
BEST_ON_TEST = "†"


def markdown_table(report: dict[str, Any]) -> str:
    """The results table of a report (one row per run name) as Markdown."""
    metric = report["metric"]
    header = [name if name in ("model", "teacher", "run", "n", "Δ vs baseline", "gain > noise", "beats teacher")
              else f"{name} {metric}" for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        n = row["n"]
        cells = [row["model"], row["teacher"], f"`{row['run']}`", str(n)]
        cells += [_cell(row["metric"][variant], n) for variant in VARIANTS]
        if row.get("best_on_test"):
            cells[5] += f" {BEST_ON_TEST}"
        cells.append(_cell(row["delta"]["single"], n, signed=True) if row["delta"] else "—")
        cells.append(row.get("gain") or "—")
        cells.append(_beats(row["beats_teacher"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The whole report.md: table, column legend, missing runs and the three figures."""
    groups = report["groups"]
    kind = "multi-label" if report["multilabel"] else "single-label"
    labels = {row["run"]: _label(row) for row in report["rows"]}
    parts = [
        "# CMKD report", "",
        f"Runs: `{report['run_dir']}` · metric: {report['metric']} ({kind}) · "
        f"groups ({len(groups)}): {', '.join(groups)} · code {report['code_version']}", "",
        "## Results", "", markdown_table(report), "",
        *[f"- **{name}**: {meaning}." for name, meaning in COLUMNS],
        *_best_on_test_note(report), "",
        f"Every ± is the sample standard deviation (ddof=1) over groups; a Δ pairs the groups where both "
        f"runs finished. Rule, fixed in advance: {NOISE_RULE}.", "",
        "## CMKD comparisons (single model, paired by group)", "", comparisons_table(report), "",
        *_online_part(report), *_kd_form_part(report),
        "## Missing runs", "",
        *([f"- `{m['group']}/{m['run']}`: {m['reason']}" for m in report["missing"]] or ["None."]), "",
        "## Learning curves", "", f"![learning curves]({FIGURES['learning_curves']})", "",
        f"Validation {report['metric']} after each epoch for every run (mean over groups, band ± std): the "
        "split that chooses the best epoch; the test split is scored per epoch only for the checkpoint ensemble.", "",
        "## Per-class: students against their teachers", "", f"![per-class]({FIGURES['per_class']})", "",
        f"Each point is a class: the teacher's per-class {_class_metric_name(report['multilabel'])} (x) against "
        "the student's (y) on the same test clips, averaged over groups; above the diagonal the student is better.",
        "",
    ]
    for name, entry in report["per_class"].items():
        parts.append(f"- {labels[name]} (`{name}`): above its teacher on {entry['better']} of {entry['classes']} "
                     f"classes, below on {entry['worse']}.")
    parts += ["", "## Student–teacher agreement", "", f"![agreement]({FIGURES['agreement']})", "",
              "Share of validation clips where the student's top class is the teacher's, after each epoch (KD runs).",
              ""]
    return "\n".join(parts)


def comparisons_table(report: dict[str, Any]) -> str:
    """The CMKD comparisons (A − B, paired by group) as Markdown."""
    metric = report["metric"]
    lines = [f"| comparison | A | B | n | A {metric} | B {metric} | Δ = A − B | SE | gain > noise |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["comparisons"]:
        delta = row["delta"]
        se = f"{delta['se']:.4f}" if delta.get("se") is not None else "—"
        lines.append(f"| {row['comparison']} | `{row['a']}` | `{row['b']}` | {delta['n']} | "
                     f"{_cell(row['a_metric'], row['a_metric']['n'])} | {_cell(row['b_metric'], row['b_metric']['n'])} | "
                     f"{_cell(delta, delta['n'], signed=True)} | {se} | {delta['gain']} |")
    return "\n".join(lines)


def _best_on_test_note(report: dict[str, Any]) -> list[str]:
    flagged = [f"`{row['run']}` ({', '.join(row['best_on_test'])})" for row in report["rows"] if row.get("best_on_test")]
    if not flagged:
        return []
    return [f"- **{BEST_ON_TEST}**: best epoch chosen on the test fold: data.val == data.test in "
            f"{', '.join(flagged)}, so that column is optimistic; single, WA and ensemble do not use it."]


def _online_part(report: dict[str, Any]) -> list[str]:
    if not report["online"]:
        return []
    metric = report["metric"]
    lines = ["## Online teacher against cached teacher logits", "",
             f"| student | teacher mode | run | n | single {metric} | student-phase seconds | Δ online − cached "
             "| gain > noise |", "|---|---|---|---|---|---|---|---|"]
    for row in report["online"]:
        for mode in ("cached", "online"):
            stats, seconds = row["metric"][mode], row["seconds"][row[mode]]
            delta = row["delta"]
            tail = (f"{_cell(delta, delta['n'], signed=True)} | {delta['gain']}" if mode == "online" else "— | —")
            lines.append(f"| {_describe_name(row['cached'])} | {mode} | `{row[mode]}` | {stats['n']} | "
                         f"{_cell(stats, stats['n'])} | {_cell(seconds, seconds['n'], digits=1)} | {tail} |")
    return lines + ["", "Student-phase seconds: the training's wall time (results.json `seconds`, else the sum of "
                    "its epoch times); the cached student's teacher-logits stage is not included.", ""]


def _kd_form_part(report: dict[str, Any]) -> list[str]:
    if not report["kd_forms"]:
        return []
    metric = report["metric"]
    lines = ["## KD loss forms", "", "| student ← teacher | " + " | ".join(f"{form} {metric}" for form in KD_FORMS)
             + " |", "|---|" + "---|" * len(KD_FORMS)]
    for row in report["kd_forms"]:
        cells = [_cell(row["forms"][form], row["forms"][form]["n"]) if form in row["forms"] else "—"
                 for form in KD_FORMS]
        lines.append(f"| {_describe_name(row['pair'])} | " + " | ".join(cells) + " |")
    return lines + ["", "Runs `<student>-<form>`: the same student and teacher trained with each KD loss form "
                    "(mean ± sample std over groups); the configured form's cell is the plain student's run.", ""]


def _describe_name(name: str) -> str:
    match = RUN_NAME.fullmatch(name)
    return f"KD-{match.group(2).upper()} ← {match.group(3).upper()}" if match and match.group(2) else name


def _cell(stats: dict[str, Any], n: int, signed: bool = False, digits: int = 4) -> str:
    if stats["n"] == 0:
        return "—"
    text = f"{stats['mean']:+.{digits}f}" if signed else f"{stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.{digits}f}"
    return text + (f" (n={stats['n']})" if stats["n"] != n else "")


def _beats(beats: dict[str, Any] | None) -> str:
    if beats is None or beats["n"] == 0:
        return "—"
    wins, n = beats["wins"], beats["n"]
    word = "yes" if wins == n else "no" if wins == 0 else "mixed"
    return f"{word} {wins}/{n}"


def _write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)
