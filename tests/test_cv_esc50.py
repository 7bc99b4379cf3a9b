"""ESC-50 cross-validation end to end through the CLI: a tiny fake ESC-50 tree in the published layout
(meta/esc50.csv + audio/*.wav; 3 categories x 5 folds x 2 clips of 0.7 s) → `manifest esc50` →
`features` → `cv --preset esc50 --model ast` with the recipe scaled down to smoke sizes by --set.
Every fold trains on the four others and is tested on itself; cv.json holds the five per-fold values.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cmkd_pipe.cli.app import app

CATEGORIES = ("dog", "rain", "siren")
FOLDS = (1, 2, 3, 4, 5)
SMOKE = {  # the esc50 recipe at the sizes of the store below, with a tiny AST and no downloads
    "features.target_frames": 64, "features.num_mel_bins": 32, "norm.source": "store",
    "model.ast.size": "custom", "model.ast.embed_dim": 16, "model.ast.depth": 1, "model.ast.num_heads": 2,
    "model.ast.fstride": 16, "model.ast.tstride": 16, "model.ast.pretrained": "null",
    "train.epochs": 2, "data.batch_size": 8, "data.epoch_len": 48, "optim.lr.ast": "1.0e-3",
    "augment.freq_mask": 4, "augment.time_mask": 8,
}


def write_fake_esc50(root: Path, make_tone) -> pd.DataFrame:
    """meta/esc50.csv and audio/{fold}-{src}-{take}-{target}.wav, as the ESC-50 download lays them out."""
    (root / "audio").mkdir(parents=True)
    rows = []
    for target, category in enumerate(CATEGORIES):
        for fold in FOLDS:
            for take in "AB":
                src = 1000 * target + 10 * fold + (take == "B")
                filename = f"{fold}-{src}-{take}-{target}.wav"
                freq = (400.0, 1500.0, 3500.0)[target] * (1 + 0.03 * fold)
                sf.write(root / "audio" / filename, make_tone(freq, 0.7, 16000, noise=0.05, seed=src), 16000)
                rows.append({"filename": filename, "fold": fold, "target": target, "category": category,
                             "esc10": category == "dog", "src_file": src, "take": take})
    table = pd.DataFrame(rows)
    (root / "meta").mkdir()
    table.to_csv(root / "meta" / "esc50.csv", index=False)
    return table


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, make_tone) -> dict:
    root = tmp_path_factory.mktemp("esc50")
    table = write_fake_esc50(root / "ESC-50-master", make_tone)
    runner = CliRunner()
    manifest = runner.invoke(app, ["manifest", "esc50", str(root / "ESC-50-master"), "--out", str(root / "manifest")])
    assert manifest.exit_code == 0, manifest.output
    features = runner.invoke(app, ["features", "--manifest", str(root / "manifest"), "--out",
                                   str(root / "features.zarr"), "--target-frames", "64", "--num-mel-bins", "32",
                                   "--chunk-clips", "8", "--scheduler", "synchronous"])
    assert features.exit_code == 0, features.output
    args = ["cv", "--features", str(root / "features.zarr"), "--out", str(root / "cv"), "--preset", "esc50",
            "--model", "ast", "--device", "cpu"]
    for key, value in SMOKE.items():
        args += ["--set", f"{key}={value}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return {"root": root, "table": table, "args": args, "stdout": result.stdout, "out": root / "cv"}


def test_manifest_follows_the_esc50_table(cv_run):
    clips = pd.read_csv(cv_run["root"] / "manifest" / "clips.csv")
    table = cv_run["table"]
    assert list(clips["clip_id"]) == [f[:-4] for f in table["filename"]]
    assert list(clips["fold"]) == list(table["fold"]) and set(clips["split"]) == {"train"}
    vocabulary = pd.read_csv(cv_run["root"] / "manifest" / "vocabulary.csv")
    assert list(vocabulary["id"]) == list(CATEGORIES)


def test_every_fold_is_trained_and_tested_on_its_own_clips(cv_run):
    out, table = cv_run["out"], cv_run["table"]
    for fold in FOLDS:
        results = json.loads((out / f"fold-{fold}" / "results.json").read_text())
        assert results["n_test"] == 6 and results["epochs"] == 2 and results["arch"] == "ast"
        assert results["run"]["role"] == "baseline"
        predictions = np.load(out / f"fold-{fold}" / "test_predictions.npz")
        expected = sorted(f[:-4] for f in table.loc[table["fold"] == fold, "filename"])
        assert sorted(predictions["clip_ids"]) == expected
        config = (out / f"fold-{fold}" / "config.yaml").read_text()
        assert f"train: fold!={fold}" in config and f"test: fold=={fold}" in config
        assert "embed_dim: 16" in config and "source: store" in config


def test_cv_json_and_the_printed_mean_and_std(cv_run):
    out = cv_run["out"]
    summary = json.loads((out / "cv.json").read_text())
    assert summary["metric"] == "accuracy" and summary["folds"] == list(FOLDS)
    assert "wa" not in summary  # the esc50 recipe does no weight averaging
    printed = {}
    for line in cv_run["stdout"].splitlines():
        match = re.fullmatch(r"(\w+)\s+accuracy (\d\.\d{4}) ± (\d\.\d{4})", line.strip())
        if match:
            printed[match[1]] = (float(match[2]), float(match[3]))
    assert set(printed) == {"last", "best", "ensemble"}
    for name in ("last", "best", "ensemble"):
        per_fold = [json.loads((out / f"fold-{k}" / "results.json").read_text())[name]["accuracy"] for k in FOLDS]
        assert summary[name]["per_fold"] == per_fold
        assert summary[name]["mean"] == pytest.approx(np.mean(per_fold))
        assert summary[name]["std"] == pytest.approx(np.std(per_fold, ddof=1))  # sample std, as the report
        assert printed[name] == (round(np.mean(per_fold), 4), round(np.std(per_fold, ddof=1), 4))
    assert summary["std_kind"] == "sample std (ddof=1) over folds"
    assert "(± is the sample std (ddof=1) over folds)" in cv_run["stdout"]


def test_a_rerun_keeps_the_finished_folds(cv_run):
    out = cv_run["out"]
    stamps = {k: (out / f"fold-{k}" / "final.pt").stat().st_mtime_ns for k in FOLDS}
    result = CliRunner().invoke(app, cv_run["args"])
    assert result.exit_code == 0, result.output
    assert result.stdout == cv_run["stdout"]
    assert {k: (out / f"fold-{k}" / "final.pt").stat().st_mtime_ns for k in FOLDS} == stamps
