"""A model family added from outside the package (tests/plugins/crnn.py, a tiny CRNN) trains, teaches
and is taught through the engine and the teacher-logits stage, in this process, in Dask worker
processes and in a CLI subprocess (CMKD_PIPE_PLUGINS), without a line of the shipped code naming it.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tests.plugins.crnn` is the name the other processes import
    sys.path.insert(0, str(REPO))

from cmkd_pipe.pipeline.config import FeatureConfig  # noqa: E402
from cmkd_pipe.pipeline.models.factory import build_model, default_model_config  # noqa: E402
from cmkd_pipe.pipeline.models.registry import (PLUGINS_ENV, configured_families, family_names,  # noqa: E402
                                      family_of_arch, register_family)
from cmkd_pipe.pipeline.stores.logits_store import LogitsStore  # noqa: E402
from cmkd_pipe.pipeline.training.presets import resolve_config, select_family  # noqa: E402
from cmkd_pipe.stages.features import run_features  # noqa: E402
from cmkd_pipe.stages.teacher_logits import run_teacher_logits  # noqa: E402
from cmkd_pipe.stages.train import train  # noqa: E402
from tests.plugins import crnn  # noqa: E402  (registers the family)

PLUGIN = "tests.plugins.crnn"
SHIPPED = ("pipeline", "stages", "cli", "data_manifests", "benchmarks", "Makefile", "pyproject.toml", ".ci")  # code
CONFIG = FeatureConfig(num_mel_bins=32, target_frames=64)  # the smoke preset's front-end
# the smoke preset declares cnn and ast; the CRNN is added with its model section and its own lr
WITH_CRNN = ["model.crnn.hidden=16", "optim.lr.crnn=3.0e-3"]
FAST = ["data.val=eval", "data.test=eval", "train.epochs=1", "average.wa_start_epoch=null",
        "average.wa_end_epoch=null", "model.cnn.arch=timm:test_efficientnet", *WITH_CRNN]


def tone_clips(make_tone) -> list[dict]:
    """Three classes of tones far apart in frequency, 24 train and 12 eval clips."""
    clips = []
    for i in range(36):
        c = i % 3
        freq = (300.0, 1500.0, 5000.0)[c] * (1 + 0.1 * np.random.default_rng(i).uniform(-1, 1))
        clips.append({"clip_id": f"c{i:02d}", "labels": ["abc"[c]], "split": "eval" if (i // 3) % 3 == 0 else "train",
                      "audio": make_tone(freq, 0.66, 16000, noise=0.05, seed=i)})
    return clips


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus_writer, make_tone):
    """Features and one Dask cluster whose worker processes load the plugin through the environment."""
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("plugin")
    manifest_dir = corpus_writer(root / "corpus", tone_clips(make_tone))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PLUGINS_ENV, PLUGIN)
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster:
            features = root / "features.zarr"
            run_features(manifest_dir, features, config=CONFIG, chunk_clips=12, scheduler=cluster.scheduler_address,
                         progress=False)
            yield {"root": root, "features": features, "scheduler": cluster.scheduler_address}


def test_the_family_is_registered_and_configured_by_overrides():
    assert family_names()[:2] == ["cnn", "ast"] and "crnn" in family_names()
    assert family_of_arch("crnn").display_name == "CRNN (test)" and family_of_arch("timm:resnet18").name == "cnn"
    assert default_model_config("crnn") == {"arch": "crnn", "channels": 8, "hidden": 16, "drop_rate": 0.0}
    config = resolve_config("smoke", WITH_CRNN)
    assert configured_families(config) == ["cnn", "ast", "crnn"]
    chosen = select_family(config, "crnn")
    assert chosen["model"] == {"crnn": {"hidden": 16}} and chosen["optim"]["lr"] == 3e-3
    with pytest.raises(ValueError, match="unknown key model.crnn.hiden; known keys in model.crnn: arch, channels"):
        resolve_config("smoke", [*WITH_CRNN, "model.crnn.hiden=8"])
    with pytest.raises(ValueError, match="optim.lr has no value for model family 'crnn'"):
        resolve_config("smoke", ["model.crnn.hidden=16"])


def test_crnn_trains_teaches_and_is_taught(world):
    features, scheduler = world["features"], world["scheduler"]
    runs = world["root"] / "runs"
    baseline = train(features, "crnn", runs / "train-crnn", preset="smoke", overrides=FAST, progress=False)
    assert baseline["arch"] == "crnn" and baseline["run"]["role"] == "baseline"
    assert 0.0 <= baseline["last"]["accuracy"] <= 1.0
    # the CRNN teaches: its logits (written by Dask worker processes) train a CNN student
    crnn_logits = world["root"] / "logits-crnn.zarr"
    run_teacher_logits(features, runs / "train-crnn" / "final.pt", crnn_logits, views=1, batch_size=16,
                       scheduler=scheduler, progress=False)
    assert LogitsStore(crnn_logits).attrs["teacher"]["arch"] == "crnn"
    student = train(features, "cnn", runs / "student-cnn-from-crnn", preset="smoke", overrides=FAST,
                    logits=str(crnn_logits), progress=False)
    assert student["teacher"]["arch"] == "crnn" and student["arch"] == "timm:test_efficientnet"
    # the CRNN is taught: a CNN teacher's cached logits train a CRNN student
    train(features, "cnn", runs / "train-cnn", preset="smoke", overrides=FAST, progress=False)
    cnn_logits = world["root"] / "logits-cnn.zarr"
    run_teacher_logits(features, runs / "train-cnn" / "final.pt", cnn_logits, views=1, batch_size=16,
                       scheduler=scheduler, progress=False)
    taught = train(features, "crnn", runs / "student-crnn-from-cnn", preset="smoke", overrides=FAST,
                   logits=str(cnn_logits), progress=False)
    assert taught["arch"] == "crnn" and taught["run"]["role"] == "student"
    assert taught["teacher"]["arch"] == "timm:test_efficientnet" and "teacher_agreement" in _last_row(
        runs / "student-crnn-from-cnn")
    recorded = yaml.safe_load((runs / "student-crnn-from-cnn" / "config.yaml").read_text())
    assert recorded["model"]["crnn"] == {"hidden": 16}


def test_a_subprocess_loads_the_family_from_the_environment():
    command = [sys.executable, "-m", "cmkd_pipe.cli.app", "print-config", "--preset", "smoke", "--model", "crnn",
               *[f"--set={s}" for s in WITH_CRNN]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(PLUGINS_ENV, None)
    without = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert without.returncode == 1
    assert "unknown key model.crnn; known keys in model (registered model families): cnn, ast" in without.stderr
    loaded = subprocess.run(command, cwd=REPO, env={**env, PLUGINS_ENV: PLUGIN}, capture_output=True, text=True,
                            timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert yaml.safe_load(loaded.stdout)["model"] == {"crnn": {"hidden": 16}}
    broken = subprocess.run(command, cwd=REPO, env={**env, PLUGINS_ENV: "tests.plugins.missing"},
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1
    assert "CMKD_PIPE_PLUGINS: cannot import model family module 'tests.plugins.missing'" in broken.stderr


def test_a_taken_family_name_is_refused():
    with pytest.raises(ValueError, match="model family 'cnn' is registered twice"):
        register_family("cnn", display_name="another CNN", config=crnn.CRNNConfig)(crnn.build_crnn)
    with pytest.raises(TypeError, match="config must be a dataclass with an 'arch' field"):
        register_family("mlp", display_name="MLP", config=dict)


def test_adding_the_family_touched_no_shipped_file():
    assert crnn.__file__.startswith(str(REPO / "tests"))
    naming = [str(path.relative_to(REPO)) for top in SHIPPED for path in _files(REPO / top)
              if "crnn" in path.read_text(errors="ignore").lower()]
    assert naming == []


def test_a_plugin_model_round_trips_through_its_config():
    model = build_model({"arch": "crnn", "hidden": 4}, 3, 32, 64)
    assert build_model(model.config, 3, 32, 64).config == model.config == {**default_model_config("crnn"),
                                                                           "hidden": 4}


def _files(top: Path) -> list[Path]:
    return [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def _last_row(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_a_plugin_family_runs_through_the_stage_graph(tmp_path):
    """The CRNN teaches a CNN and is taught by one through `cmkd-pipe run`: planned from the preset's model
    section, run by stage subprocesses that load the plugin from the environment, recorded done."""
    from cmkd_pipe.data_manifests.demo import make_demo_corpus
    from faults import cli, stage_env
    from cmkd_pipe.pipeline.records import read_record

    data, run = tmp_path / "data", tmp_path / "run"
    make_demo_corpus(data, clips_per_class=3, n_folds=3, clip_seconds=1.0)
    settings = ["train.epochs=1", "average.wa_start_epoch=null", "average.wa_end_epoch=null", "data.batch_size=8",
                "average.ensemble=false", "augment.freq_mask=8", "augment.time_mask=20", "eval.every_epochs.crnn=1",
                *WITH_CRNN]  # (the demo preset's per-family settings need a CRNN value too)
    env = stage_env(**{PLUGINS_ENV: PLUGIN})
    for target in ("fold-1/student-cnn-from-crnn", "fold-1/student-crnn-from-cnn"):
        done = subprocess.run(cli("run", "--dataset", "demo", "--data-root", str(data), "--run-dir", str(run),
                                  "--folds", "1", "--scheduler", "synchronous", "--until", target,
                                  *[f"--set={s}" for s in settings]),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("fold-1/train-crnn", "fold-1/logits-crnn", "fold-1/student-cnn-from-crnn",
                 "fold-1/student-crnn-from-cnn"):
        assert read_record(run / name) is not None, name
    student = json.loads((run / "fold-1" / "student-crnn-from-cnn" / "results.json").read_text())
    assert student["arch"] == "crnn" and student["teacher"]["arch"].startswith("timm:")
    taught = json.loads((run / "fold-1" / "student-cnn-from-crnn" / "results.json").read_text())
    assert taught["teacher"]["arch"] == "crnn"
