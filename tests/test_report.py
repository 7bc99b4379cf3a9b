"""CMKD report on fabricated run folders (the layout the training engine writes): table numbers against
values computed here, per-class metrics against scikit-learn, figures, missing runs and the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import typer
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from cmkd_pipe.cli.report import register
from cmkd_pipe.stages.report import (FIGURES, NOISE_RULE, ReportError, build_report, markdown_table, noise_verdict,
                           paired_delta)

BASELINES = ("train-cnn", "train-ast")
STUDENTS = {  # run → (student arch, teacher run)
    "student-cnn-from-ast": ("cnn", "train-ast"),
    "student-ast-from-cnn": ("ast", "train-cnn"),
    "student-cnn-from-cnn": ("cnn", "train-cnn"),
    "student-ast-from-ast": ("ast", "train-ast"),
}
ARCH = {"train-cnn": "cnn", "train-ast": "ast"} | {name: arch for name, (arch, _) in STUDENTS.items()}
# single-model ("last") test accuracy per group: KD-CNN←AST beats its teacher in fold-1 only,
# CNN→CNN in neither, the other two students in both.
SINGLE = {
    "fold-1": {"train-cnn": 0.70, "train-ast": 0.80, "student-cnn-from-ast": 0.82, "student-ast-from-cnn": 0.78,
               "student-cnn-from-cnn": 0.68, "student-ast-from-ast": 0.83},
    "fold-2": {"train-cnn": 0.66, "train-ast": 0.74, "student-cnn-from-ast": 0.73, "student-ast-from-cnn": 0.77,
               "student-cnn-from-cnn": 0.65, "student-ast-from-ast": 0.75},
}
NO_WA = {("fold-2", "train-ast")}  # a run whose results have no weight-averaged model
EPOCHS = 3
K, CLIPS = 4, 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def variants(single: float, with_wa: bool) -> dict[str, float]:
    values = {"single": single, "best": single + 0.005, "ensemble": single + 0.02}
    return values | ({"wa": single + 0.01} if with_wa else {})


def curve(single: float) -> list[float]:
    return [single - 0.2, single - 0.1, single]


def agreement(group: str, name: str) -> list[float]:
    offset = 0.1 * list(STUDENTS).index(name) + (0.05 if group == "fold-2" else 0.0)
    return [0.3 + offset, 0.4 + offset, 0.5 + offset]


def write_run(root: Path, group: str, name: str, *, arch: str, metric: str, multilabel: bool,
              values: dict[str, float], teacher: dict[str, Any] | None, curve_values: list[float],
              agreement_values: list[float] | None, predictions: dict[str, np.ndarray],
              extra_results: dict[str, Any] | None = None, epoch_seconds: float | None = None) -> Path:
    """One run folder as pipeline/training/engine.py writes it."""
    folder = root / group / name
    folder.mkdir(parents=True)

    def summary(value: float) -> dict[str, Any]:
        return {"accuracy": value} if not multilabel else {"accuracy": 0.5, "mAP": value, "mAUC": 0.9,
                                                           "d_prime": 1.8, "per_class_ap": [value] * 3,
                                                           "n_classes_without_positives": 0}

    results: dict[str, Any] = {
        "arch": arch, "metric": metric, "epochs": EPOCHS, "multilabel": multilabel,
        "n_test": len(predictions["scores"]), "last": summary(values["single"]),
        "best": {"epoch": 2, **summary(values["best"])}, "ensemble": summary(values["ensemble"]),
        "final": "wa" if "wa" in values else "last",
        "run": {"name": name, "group": group, "role": "student" if teacher else "baseline"}}
    if "wa" in values:
        results["wa"] = {"epochs": [2, EPOCHS], **summary(values["wa"])}
    if teacher:
        results["teacher"] = teacher
    results.update(extra_results or {})
    (folder / "results.json").write_text(json.dumps(results))
    rows = []
    for epoch, value in enumerate(curve_values, start=1):
        row = {"epoch": epoch, "train_loss": 1.0 / epoch, "lr": 1e-4, f"val_{metric}": value,
               f"test_{metric}": value}
        if agreement_values is not None:
            row["teacher_agreement"] = agreement_values[epoch - 1]
        if epoch_seconds is not None:
            row["epoch_seconds"] = epoch_seconds
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.savez_compressed(folder / "test_predictions.npz", rows=np.arange(len(predictions["scores"])),
                        clip_ids=np.array([f"c{i}" for i in range(len(predictions["scores"]))]), **predictions)
    return folder


def random_predictions(rng: np.random.Generator, targets: np.ndarray, student: bool) -> dict[str, np.ndarray]:
    def probabilities() -> np.ndarray:
        logits = rng.normal(size=targets.shape) + 1.5 * targets
        return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)

    out = {"scores": probabilities(), "targets": targets.astype(np.uint8)}
    return out | ({"teacher_scores": probabilities()} if student else {})


def fabricate_single_label(root: Path) -> Path:
    rng = np.random.default_rng(0)
    targets = np.eye(K)[np.arange(CLIPS) % K]  # every class has test clips in every group
    for group, singles in SINGLE.items():
        for name, single in singles.items():
            teacher = None
            if name in STUDENTS:
                teacher_run = STUDENTS[name][1]
                teacher = {"run": teacher_run, "arch": ARCH[teacher_run], "checkpoint": f"{teacher_run}/final.pt"}
            write_run(root, group, name, arch=ARCH[name], metric="accuracy", multilabel=False,
                      values=variants(single, (group, name) not in NO_WA), teacher=teacher,
                      curve_values=curve(single),
                      agreement_values=agreement(group, name) if teacher else None,
                      predictions=random_predictions(rng, targets, teacher is not None))
    return root


ML_SINGLE = {"train-cnn": 0.40, "train-ast": 0.45, "student-cnn-from-ast": 0.47, "student-ast-from-cnn": 0.44,
             "student-cnn-from-cnn": 0.41, "student-ast-from-ast": 0.46}
ML_ARCH = {name: ("timm:efficientnet_b0" if arch == "cnn" else "ast") for name, arch in ARCH.items()}


def fabricate_multi_label(root: Path) -> Path:
    rng = np.random.default_rng(1)
    targets = (rng.random((20, 5)) < 0.4).astype(np.uint8)
    targets[:, 4] = 0  # a class without positives: its AP is undefined
    targets[np.arange(20), np.arange(20) % 4] = 1
    for name, single in ML_SINGLE.items():
        teacher = None
        if name in STUDENTS:  # the engine records "run": None when the teacher run is not known
            teacher = {"run": None, "arch": ML_ARCH[STUDENTS[name][1]], "checkpoint": "elsewhere/final.pt"}
        predictions = random_predictions(rng, targets, teacher is not None)
        predictions["scores"] = 1 / (1 + np.exp(-rng.normal(size=targets.shape) - 2 * targets))
        write_run(root, "main", name, arch=ML_ARCH[name], metric="mAP", multilabel=True,
                  values=variants(single, True), teacher=teacher, curve_values=curve(single),
                  agreement_values=[0.5, 0.6, 0.7] if teacher else None, predictions=predictions)
    return root


def row_of(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(row for row in report["rows"] if row["run"] == name)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def text(mean: float, std: float | None, signed: bool = False) -> str:
    out = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return out + (f" ± {std:.4f}" if std is not None else "")


def per_class_accuracy_loop(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    true, predicted = targets.argmax(1), scores.argmax(1)
    return [float(np.mean(predicted[true == c] == c)) for c in range(targets.shape[1])]


@pytest.fixture(scope="module")
def single_label(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = fabricate_single_label(tmp_path_factory.mktemp("single") / "runs")
    return root, build_report(root, class_names=["dog", "rain", "bell", "car"])


def test_table_numbers_match_the_runs(single_label: tuple[Path, dict[str, Any]]) -> None:
    root, report = single_label
    assert report["metric"] == "accuracy" and not report["multilabel"]
    assert report["groups"] == ["fold-1", "fold-2"]
    assert [row["run"] for row in report["rows"]] == [*BASELINES, *STUDENTS]
    assert report["missing"] == []
    table = markdown_table(report)
    for name in (*BASELINES, *STUDENTS):
        row = row_of(report, name)
        assert row["n"] == 2
        for variant in ("single", "best", "wa", "ensemble"):
            values = [variants(SINGLE[g][name], (g, name) not in NO_WA).get(variant) for g in SINGLE]
            values = [v for v in values if v is not None]
            mean, std = mean_std(values)
            stats = row["metric"][variant]
            assert stats["n"] == len(values)
            assert stats["mean"] == pytest.approx(mean)
            assert (stats["std"] is None) == (std is None) and (std is None or stats["std"] == pytest.approx(std))
            assert text(mean, std) + (" (n=1)" if len(values) == 1 else "") in table
        assert row["best_epoch"] == {"fold-1": 2, "fold-2": 2}
    assert row_of(report, "train-ast")["metric"]["wa"]["n"] == 1  # fold-2 has no WA model

    for name, (arch, teacher_run) in STUDENTS.items():
        row = row_of(report, name)
        assert (row["model"], row["teacher"]) == (f"KD-{arch.upper()}", ARCH[teacher_run].upper())
        deltas = [SINGLE[g][name] - SINGLE[g][f"train-{arch}"] for g in SINGLE]
        mean, std = mean_std(deltas)
        assert row["delta"]["single"]["mean"] == pytest.approx(mean)
        assert row["delta"]["single"]["std"] == pytest.approx(std)
        wins = [SINGLE[g][name] > SINGLE[g][teacher_run] for g in SINGLE]
        assert row["beats_teacher"]["wins"] == sum(wins) and row["beats_teacher"]["n"] == 2
        line = next(line for line in table.splitlines() if f"`{name}`" in line)
        assert text(mean, std, signed=True) in line
    # WA Δ pairs only the groups where both student and baseline have a WA model
    assert row_of(report, "student-ast-from-ast")["delta"]["wa"]["n"] == 1
    expected_word = {"student-cnn-from-ast": "mixed 1/2", "student-ast-from-cnn": "yes 2/2",
                     "student-cnn-from-cnn": "no 0/2", "student-ast-from-ast": "yes 2/2"}
    for name, word in expected_word.items():
        assert next(line for line in table.splitlines() if f"`{name}`" in line).rstrip(" |").endswith(word)
    baseline_line = next(line for line in table.splitlines() if "`train-cnn`" in line)
    assert baseline_line.startswith("| CNN | — |") and baseline_line.endswith("| — | — |")


def test_curves_and_per_class_metrics(single_label: tuple[Path, dict[str, Any]]) -> None:
    root, report = single_label
    learning = report["curves"]["val_accuracy"]
    assert set(learning) == {*BASELINES, *STUDENTS}
    for name, entry in learning.items():
        assert entry["epoch"] == [1, 2, 3]
        expected = np.mean([curve(SINGLE[g][name]) for g in SINGLE], axis=0)
        assert entry["mean"] == pytest.approx(expected.tolist())
    agree = report["curves"]["teacher_agreement"]
    assert set(agree) == set(STUDENTS)
    for name, entry in agree.items():
        assert entry["mean"] == pytest.approx(np.mean([agreement(g, name) for g in SINGLE], axis=0).tolist())
        assert entry["std"] == pytest.approx(np.std([agreement(g, name) for g in SINGLE], axis=0, ddof=1).tolist())

    assert set(report["per_class"]) == set(STUDENTS)
    for name, entry in report["per_class"].items():
        student, teacher = [], []
        for group in SINGLE:
            with np.load(root / group / name / "test_predictions.npz") as data:
                student.append(per_class_accuracy_loop(data["scores"], data["targets"]))
                teacher.append(per_class_accuracy_loop(data["teacher_scores"], data["targets"]))
        s, t = np.mean(student, axis=0), np.mean(teacher, axis=0)
        assert entry["student"] == pytest.approx(s.tolist()) and entry["teacher"] == pytest.approx(t.tolist())
        assert (entry["classes"], entry["better"], entry["worse"]) == (K, int((s > t).sum()), int((s < t).sum()))


def test_files_written(single_label: tuple[Path, dict[str, Any]]) -> None:
    root, report = single_label
    out = root / "report"
    assert json.loads((out / "report.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    md = (out / "report.md").read_text()
    assert markdown_table(report) in md
    for name in FIGURES.values():
        assert f"]({name})" in md  # embedded by relative path
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 100 and image.std() > 0
    for column in ("model", "teacher", "Δ vs baseline", "beats teacher", "WA", "ensemble"):
        assert f"- **{column}**:" in md
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert report["groups"] == ["fold-1", "fold-2"]  # the report folder itself is not a group


def test_multi_label_group(tmp_path: Path) -> None:
    root = fabricate_multi_label(tmp_path / "runs")
    report = build_report(root, tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "report.md").is_file() and not (root / "report").exists()
    assert report["metric"] == "mAP" and report["multilabel"] and report["groups"] == ["main"]
    table = markdown_table(report)
    assert "single mAP" in table
    for name, (arch, teacher_run) in STUDENTS.items():
        row = row_of(report, name)
        assert (row["model"], row["teacher"], row["n"]) == (f"KD-{arch.upper()}", ARCH[teacher_run].upper(), 1)
        assert row["metric"]["single"] == {"mean": pytest.approx(ML_SINGLE[name]), "std": None, "n": 1,
                                           "values": {"main": pytest.approx(ML_SINGLE[name])}}
        delta = ML_SINGLE[name] - ML_SINGLE[f"train-{arch}"]
        assert row["delta"]["single"]["mean"] == pytest.approx(delta)
        wins = int(ML_SINGLE[name] > ML_SINGLE[teacher_run])  # teacher found by architecture (run is None)
        assert row["beats_teacher"] == {"wins": wins, "n": 1, "groups": {"main": bool(wins)}}
        line = next(line for line in table.splitlines() if f"`{name}`" in line)
        assert f"{text(delta, None, signed=True)} |" in line and ("yes 1/1" if wins else "no 0/1") in line
        with np.load(root / "main" / name / "test_predictions.npz") as data:
            for key, scores in (("student", data["scores"]), ("teacher", data["teacher_scores"])):
                expected = [average_precision_score(data["targets"][:, c], scores[:, c]) for c in range(4)]
                assert report["per_class"][name][key][:4] == pytest.approx(expected)
                assert report["per_class"][name][key][4] is None  # no positives
        assert report["per_class"][name]["classes"] == 4


def test_missing_runs_are_listed(single_label: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(single_label[0], root, ignore=shutil.ignore_patterns("report"))
    (root / "fold-2" / "student-ast-from-ast" / "results.json").unlink()
    (root / "fold-2" / "student-ast-from-ast" / "failed.json").write_text(
        json.dumps({"stage": "train", "error": "RuntimeError: CUDA out of memory", "log": None}))
    shutil.rmtree(root / "fold-1" / "student-cnn-from-cnn")
    (root / "fold-1" / "train-ast" / "results.json").rename(root / "fold-1" / "train-ast" / "results.old")
    report = build_report(root)
    assert report["missing"] == [
        {"group": "fold-1", "run": "train-ast", "reason": "no results.json (unfinished or interrupted)"},
        {"group": "fold-1", "run": "student-cnn-from-cnn", "reason": "not run"},
        {"group": "fold-2", "run": "student-ast-from-ast", "reason": "failed: RuntimeError: CUDA out of memory"}]
    row = row_of(report, "student-ast-from-ast")
    assert row["n"] == 1 and row["metric"]["single"]["mean"] == pytest.approx(SINGLE["fold-1"]["student-ast-from-ast"])
    # fold-1 has no AST teacher/baseline left: KD-CNN←AST is compared in fold-2 only
    kd_cnn = row_of(report, "student-cnn-from-ast")
    assert kd_cnn["beats_teacher"] == {"wins": 0, "n": 1, "groups": {"fold-2": False}}
    md = (root / "report" / "report.md").read_text()
    assert "- `fold-2/student-ast-from-ast`: failed: RuntimeError: CUDA out of memory" in md
    assert "- `fold-1/student-cnn-from-cnn`: not run" in md


def test_bad_inputs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such run folder"):
        build_report(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run folders"):
        build_report(tmp_path / "empty")
    (tmp_path / "pending" / "fold-1" / "train-cnn").mkdir(parents=True)
    with pytest.raises(ReportError, match="no run has a results.json"):
        build_report(tmp_path / "pending")
    bad = tmp_path / "bad" / "main" / "train-cnn"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text(json.dumps({"arch": "cnn", "last": {"accuracy": 0.5}}))
    with pytest.raises(ReportError, match=r"train-cnn/results.json: field 'metric' missing"):
        build_report(tmp_path / "bad")
    with pytest.raises(ReportError, match="class_names has 2 names"):
        build_report(fabricate_single_label(tmp_path / "runs"), class_names=["a", "b"])


def cli_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """cmkd-pipe (test app)"""

    register(app)
    return app


def test_cli_prints_the_table(single_label: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, report = single_label
    out = tmp_path / "cli-report"
    result = CliRunner().invoke(cli_app(), ["report", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert markdown_table(report) in result.stdout
    assert (out / "report.md").is_file()

    failed = CliRunner().invoke(cli_app(), ["report", str(tmp_path / "absent")])
    assert failed.exit_code == 1
    assert failed.stderr.startswith("error: ") and "no such run folder" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------- statistics, computed by hand
def test_paired_delta_and_noise_rule_by_hand() -> None:
    # Δ = 0.10, 0.08, 0.06: mean 0.08, sd = sqrt((0.02² + 0 + 0.02²) / 2) = 0.02, SE = 0.02/√3 = 0.011547
    gain = paired_delta({"a": 0.80, "b": 0.78, "c": 0.76, "only-a": 0.9}, {"a": 0.70, "b": 0.70, "c": 0.70})
    assert gain["n"] == 3 and set(gain["values"]) == {"a", "b", "c"}  # unpaired group left out
    assert gain["mean"] == pytest.approx(0.08) and gain["std"] == pytest.approx(0.02)
    assert gain["se"] == pytest.approx(0.011547, abs=1e-6) and gain["gain"] == "yes"  # 0.08 > 0.023094
    # Δ = 0.10, 0.05, 0.00: mean 0.05, sd 0.05, SE 0.028868, 2 SE 0.057735 > 0.05: not beyond noise
    small = paired_delta({"a": 0.80, "b": 0.75, "c": 0.70}, {"a": 0.70, "b": 0.70, "c": 0.70})
    assert (small["mean"], small["std"]) == (pytest.approx(0.05), pytest.approx(0.05)) and small["gain"] == "no"
    loss = paired_delta({"a": 0.60, "b": 0.62, "c": 0.64}, {"a": 0.70, "b": 0.70, "c": 0.70})
    assert loss["mean"] == pytest.approx(-0.08) and loss["gain"] == "no"
    two = paired_delta({"a": 0.9, "b": 0.9}, {"a": 0.1, "b": 0.2})  # huge, but only 2 paired groups
    assert two["n"] == 2 and two["gain"] == "n/a"
    assert paired_delta({"a": 0.5}, {"b": 0.5})["gain"] == "n/a"
    assert noise_verdict({"n": 3, "mean": 0.01, "std": 0.0}) == "yes"  # identical positive gains: SE 0
    assert "ddof=1" in NOISE_RULE and "2 SE" in NOISE_RULE


# three folds: fold-1 as the graph writes it (stage.json, val == test), folds 2-3 with the engine's
# config.yaml only (validation fold k+1). Single-model accuracies:
THREE = {
    "fold-1": {"train-cnn": 0.70, "train-ast": 0.50, "student-cnn-from-ast": 0.72, "student-ast-from-cnn": 0.60,
               "student-cnn-from-cnn": 0.69, "student-ast-from-ast": 0.52, "student-ast-from-cnn-online": 0.62},
    "fold-2": {"train-cnn": 0.74, "train-ast": 0.54, "student-cnn-from-ast": 0.74, "student-ast-from-cnn": 0.62,
               "student-cnn-from-cnn": 0.75, "student-ast-from-ast": 0.50, "student-ast-from-cnn-online": 0.61},
    "fold-3": {"train-cnn": 0.72, "train-ast": 0.52, "student-cnn-from-ast": 0.73, "student-ast-from-cnn": 0.64,
               "student-cnn-from-cnn": 0.70, "student-ast-from-ast": 0.55, "student-ast-from-cnn-online": 0.66},
}
ONLINE_SECONDS = {"fold-1": 30.0, "fold-2": 32.0, "fold-3": 34.0}


def fabricate_three_groups(root: Path) -> Path:
    rng = np.random.default_rng(2)
    targets = np.eye(K)[np.arange(CLIPS) % K]
    teachers = STUDENTS | {"student-ast-from-cnn-online": ("ast", "train-cnn")}
    for fold, (group, singles) in enumerate(THREE.items(), start=1):
        for name, single in singles.items():
            arch = teachers[name][0] if name in teachers else ARCH[name]
            teacher, extra = None, None
            if name in teachers:
                teacher_run = teachers[name][1]
                teacher = {"run": teacher_run, "arch": ARCH[teacher_run], "checkpoint": f"{teacher_run}/final.pt"}
            if name.endswith("-online"):
                teacher["mode"] = "online"
                extra = {"seconds": ONLINE_SECONDS[group]}
            folder = write_run(root, group, name, arch=arch, metric="accuracy", multilabel=False,
                               values=variants(single, True), teacher=teacher, curve_values=curve(single),
                               agreement_values=[0.5, 0.6, 0.7] if teacher else None,
                               predictions=random_predictions(rng, targets, teacher is not None),
                               extra_results=extra, epoch_seconds=4.0 + fold)
            data = {"train": f"fold!={fold}", "val": f"fold=={fold % 5 + 1}", "test": f"fold=={fold}"}
            if fold == 1:
                data["val"] = data["test"]
                kind = "train-student" if teacher else "train"
                (folder / "stage.json").write_text(json.dumps({"stage": kind, "config": {"arch": arch, "config": {
                    "data": data}}}))
            else:
                (folder / "config.yaml").write_text(f"data:\n  train: '{data['train']}'\n  val: '{data['val']}'\n"
                                                    f"  test: '{data['test']}'\n")
    logits = root / "fold-1" / "logits-cnn"  # a failed teacher-logits stage: a stage, but no training run
    logits.mkdir()
    (logits / "stage.json").write_text(json.dumps({"stage": "teacher-logits", "config": {}}))
    (logits / "failed.json").write_text(json.dumps({"stage": "fold-1/logits-cnn", "error": "boom", "log": None}))
    planned = root / "fold-2" / "longer-ast-student"  # planned by the graph, not run yet: named by its record only
    planned.mkdir()
    (planned / "config.json").write_text(json.dumps({"stage": "train-student", "config": {}, "deps": []}))
    return root


@pytest.fixture(scope="module")
def three_groups(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = fabricate_three_groups(tmp_path_factory.mktemp("three") / "runs")
    return root, build_report(root)


def comparison(report: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    return next(row for row in report["comparisons"] if (row["a"], row["b"]) == (a, b))


def test_cmkd_comparisons_by_hand(three_groups: tuple[Path, dict[str, Any]]) -> None:
    root, report = three_groups
    assert report["groups"] == ["fold-1", "fold-2", "fold-3"]
    # KD-AST←CNN − AST: 0.10, 0.08, 0.12 → mean 0.10, sd 0.02, SE 0.011547 → beyond noise
    kd_ast = comparison(report, "student-ast-from-cnn", "train-ast")["delta"]
    assert (kd_ast["mean"], kd_ast["std"], kd_ast["se"]) == (pytest.approx(0.10), pytest.approx(0.02),
                                                             pytest.approx(0.011547, abs=1e-6))
    assert kd_ast["gain"] == "yes" and row_of(report, "student-ast-from-cnn")["gain"] == "yes"
    # KD-CNN←AST − CNN: 0.02, 0.00, 0.01 → mean 0.01, sd 0.01, 2 SE 0.011547 > 0.01 → not beyond noise
    kd_cnn = comparison(report, "student-cnn-from-ast", "train-cnn")["delta"]
    assert (kd_cnn["mean"], kd_cnn["std"], kd_cnn["gain"]) == (pytest.approx(0.01), pytest.approx(0.01), "no")
    # cross- over same-model AST students: 0.08, 0.12, 0.09 → mean 0.096667, sd 0.020817 → yes
    cross = comparison(report, "student-ast-from-cnn", "student-ast-from-ast")["delta"]
    assert (cross["mean"], cross["std"], cross["gain"]) == (pytest.approx(0.096667, abs=1e-6),
                                                            pytest.approx(0.020817, abs=1e-6), "yes")
    # student against its teacher: 0.60-0.70, 0.62-0.74, 0.64-0.72 → mean -0.10 → no
    versus_teacher = comparison(report, "student-ast-from-cnn", "train-cnn")
    assert versus_teacher["delta"]["mean"] == pytest.approx(-0.10) and versus_teacher["delta"]["gain"] == "no"
    assert versus_teacher["a_metric"]["mean"] == pytest.approx(0.62) and versus_teacher["b_metric"]["std"] == \
        pytest.approx(0.02)
    assert len(report["comparisons"]) == 8  # four comparisons for each student family
    md = (root / "report" / "report.md").read_text()
    assert "| KD-AST←CNN vs AST baseline (cross-model KD gain) | `student-ast-from-cnn` | `train-ast` | 3 | " \
           "0.6200 ± 0.0200 | 0.5200 ± 0.0200 | +0.1000 ± 0.0200 | 0.0115 | yes |" in md
    assert NOISE_RULE in md and "ddof=1" in md


def test_online_against_cached_by_hand(three_groups: tuple[Path, dict[str, Any]]) -> None:
    root, report = three_groups
    [online] = report["online"]
    assert (online["online"], online["cached"]) == ("student-ast-from-cnn-online", "student-ast-from-cnn")
    assert online["metric"]["online"]["mean"] == pytest.approx(0.63)  # (0.62 + 0.61 + 0.66) / 3
    # online − cached: 0.02, -0.01, 0.02 → mean 0.01, sd 0.017321, 2 SE 0.02 > 0.01 → no
    assert (online["delta"]["mean"], online["delta"]["std"], online["delta"]["gain"]) == (
        pytest.approx(0.01), pytest.approx(0.017321, abs=1e-6), "no")
    # seconds: results.json `seconds` for the online runs; the sum of 3 epochs of 4+k s for the cached ones
    assert (online["seconds"]["student-ast-from-cnn-online"]["mean"],
            online["seconds"]["student-ast-from-cnn-online"]["std"]) == (pytest.approx(32.0), pytest.approx(2.0))
    assert online["seconds"]["student-ast-from-cnn"]["values"] == {"fold-1": 15.0, "fold-2": 18.0, "fold-3": 21.0}
    row = row_of(report, "student-ast-from-cnn-online")
    assert (row["model"], row["teacher"]) == ("KD-AST", "CNN (online)")
    md = (root / "report" / "report.md").read_text()
    assert "| KD-AST ← CNN | online | `student-ast-from-cnn-online` | 3 | 0.6300 ± 0.0265 | 32.0 ± 2.0 | " \
           "+0.0100 ± 0.0173 | no |" in md
    assert "| KD-AST ← CNN | cached | `student-ast-from-cnn` | 3 | 0.6200 ± 0.0200 | 18.0 ± 3.0 | — | — |" in md


def test_runs_found_by_stage_records_and_best_on_test_label(three_groups: tuple[Path, dict[str, Any]]) -> None:
    root, report = three_groups
    names = [row["run"] for row in report["rows"]]
    assert "logits-cnn" not in names + [m["run"] for m in report["missing"]]  # a failed teacher-logits stage
    assert {"group": "fold-2", "run": "longer-ast-student",
            "reason": "no results.json (unfinished or interrupted)"} in report["missing"]
    for name in THREE["fold-1"]:
        assert row_of(report, name)["best_on_test"] == ["fold-1"]  # val == test only where stage.json says so
    table = markdown_table(report)
    line = next(line for line in table.splitlines() if "`train-cnn`" in line)
    assert line.split(" | ")[5].endswith(" †")
    md = (root / "report" / "report.md").read_text()
    assert "best epoch chosen on the test fold" in md and "`train-cnn` (fold-1)" in md


def test_kd_form_table(tmp_path: Path) -> None:
    root = fabricate_multi_label(tmp_path / "runs")
    rng = np.random.default_rng(3)
    targets = (rng.random((10, 5)) < 0.4).astype(np.uint8)
    for form, value in (("softmax-kl", 0.40), ("bce", 0.48)):
        write_run(root, "main", f"student-ast-from-cnn-{form}", arch="ast", metric="mAP", multilabel=True,
                  values=variants(value, False), curve_values=curve(value), agreement_values=None,
                  teacher={"run": "train-cnn", "arch": "timm:efficientnet_b0", "checkpoint": "x"},
                  predictions=random_predictions(rng, targets, True))
    report = build_report(root)
    assert report["kd_forms"] == [{"pair": "student-ast-from-cnn", "forms": {
        "softmax-kl": {"mean": pytest.approx(0.40), "std": None, "n": 1, "values": {"main": pytest.approx(0.40)}},
        "bce": {"mean": pytest.approx(0.48), "std": None, "n": 1, "values": {"main": pytest.approx(0.48)}}}}]
    assert row_of(report, "student-ast-from-cnn-bce")["teacher"] == "CNN (bce)"
    md = (root / "report" / "report.md").read_text()
    assert "| KD-AST ← CNN | 0.4000 | — | 0.4800 |" in md
    # the plain student (0.44) is the sigmoid-kl cell when its config names that form (the graph trains no
    # `-sigmoid-kl` twin of it)
    (root / "main" / "student-ast-from-cnn" / "config.yaml").write_text("kd:\n  form: sigmoid-kl\n")
    forms = build_report(root)["kd_forms"][0]["forms"]
    assert {form: stats["mean"] for form, stats in forms.items()} == {
        "softmax-kl": pytest.approx(0.40), "sigmoid-kl": pytest.approx(0.44), "bce": pytest.approx(0.48)}
    assert "| KD-AST ← CNN | 0.4000 | 0.4400 | 0.4800 |" in (root / "report" / "report.md").read_text()
