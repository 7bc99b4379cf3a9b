"""One way into every stage: what the graph resolves from the preset is exactly what the stage function gets.

The stage functions are replaced by recorders, so these tests check the route (preset → graph → config.json
→ `run-stage` → stage function), not the stages themselves (their own tests do that).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import cmkd_pipe.stages.features
import cmkd_pipe.stages.teacher_logits
import cmkd_pipe.stages.train
from cmkd_pipe.cli import stage_runner
from cmkd_pipe.cli.app import app
from cmkd_pipe.pipeline.training.presets import resolve_config, select_family
from cmkd_pipe.pipeline.records import write_record
from cmkd_pipe.stages.graph import (RUNTIME_TRAIN_KEYS, RunOptions, evidence, input_fingerprints, plan, start_order,
                                    state, write_config_file)

UNUSUAL = ["augment.mixup_alpha=3.5", "augment.mixup_mode=logmel", "augment.mixup_rate=0.25",
           "augment.freq_mask=7", "augment.time_mask=11", "kd.views=3", "train.seed=7",
           "features.num_mel_bins=48", "features.target_frames=150", "features.codec=none"]


@pytest.fixture
def recorder(monkeypatch) -> dict[str, Any]:
    """Replace the stage functions by ones that record their arguments."""
    calls: dict[str, Any] = {}

    def record(name):
        def fn(*args, **kwargs):
            calls[name] = (args, kwargs)
            return {"metric": "accuracy", "final": "last"}
        return fn

    monkeypatch.setattr(cmkd_pipe.stages.train, "train", record("train"))
    monkeypatch.setattr(cmkd_pipe.stages.teacher_logits, "run_teacher_logits", record("teacher-logits"))
    monkeypatch.setattr(cmkd_pipe.stages.features, "run_features", record("features"))
    return calls


def demo_plan(tmp_path: Path, overrides: list[str]) -> dict[str, Any]:
    options = RunOptions("demo", tmp_path / "run", tmp_path / "data", overrides=overrides, folds=[1])
    return {stage.name: stage for stage in plan(options)}


def run_from_file(stage, run_dir: Path) -> None:
    """What `cmkd-pipe run-stage DIR` does, after the graph wrote DIR/config.json."""
    write_config_file(stage, run_dir)
    stage_runner.run_stage_dir(run_dir / stage.name)


def test_teacher_views_get_the_presets_augmentation(tmp_path, recorder):
    stages_ = demo_plan(tmp_path, UNUSUAL)
    run_from_file(stages_["fold-1/logits-ast"], tmp_path / "run")
    args, kwargs = recorder["teacher-logits"]
    assert kwargs["mixup_alpha"] == 3.5 and kwargs["mix_mode"] == "logmel" and kwargs["mixup_rate"] == 0.25
    assert kwargs["freq_mask"] == 7 and kwargs["time_mask"] == 11 and kwargs["views"] == 3
    assert kwargs["view_seed"] == 7
    assert args[1] == str(tmp_path / "run" / "fold-1" / "train-ast" / "final.pt")


def test_feature_stage_gets_the_presets_feature_settings(tmp_path, recorder):
    stages_ = demo_plan(tmp_path, UNUSUAL)
    run_from_file(stages_["features"], tmp_path / "run")
    _, kwargs = recorder["features"]
    assert kwargs["config"].num_mel_bins == 48 and kwargs["config"].target_frames == 150
    assert kwargs["config"].frame_shift_ms == 10.0  # the profile's front-end under the preset's settings
    assert kwargs["codec"] == "none"  # a runtime setting of the stage, not a front-end field
    assert "codec" not in stages_["features"].identity()["features"]


@pytest.mark.parametrize("name", ["fold-1/train-cnn", "fold-1/student-ast-from-cnn",
                                  "fold-1/student-ast-from-cnn-online"])
def test_training_stages_get_the_whole_resolved_config(tmp_path, recorder, name):
    stages_ = demo_plan(tmp_path, UNUSUAL)
    stage = stages_[name]
    run_from_file(stage, tmp_path / "run")
    args, kwargs = recorder["train"]
    family = stage.params["family"]
    group = resolve_config("demo", [*UNUSUAL, "data.train=fold!=1&fold!=2", "data.val=fold==2",
                                    "data.test=fold==1"])
    expected = json.loads(json.dumps(select_family(group, family)))
    if "student" not in name:
        expected["kd"] = stage_runner.NO_KD  # a baseline trains on the task loss alone
    assert kwargs["config"] == expected
    assert args[1] == family
    if name.endswith("-online"):
        assert kwargs["teacher"].endswith("fold-1/train-cnn/final.pt") and kwargs["logits"] is None
    elif "student" in name:
        assert kwargs["logits"].endswith("fold-1/logits-cnn/logits.zarr") and kwargs["teacher"] is None


def test_identity_holds_every_result_affecting_key(tmp_path):
    """A teacher's identity is its whole config but for the runtime-only keys; it has no KD settings."""
    stages_ = demo_plan(tmp_path, [])
    teacher, student = stages_["fold-1/train-ast"], stages_["fold-1/student-ast-from-cnn"]
    config = teacher.params["config"]
    identity = teacher.identity()["config"]
    assert set(config) == set(identity) and identity["kd"] is None
    assert demo_plan(tmp_path, ["kd.tau=3.0"])["fold-1/train-ast"].params == teacher.params
    for section, key in RUNTIME_TRAIN_KEYS:
        assert key not in identity[section] and key in config[section]
    assert "kd" in student.identity()["config"]


def test_runtime_only_settings_leave_stages_done(tmp_path):
    """A stage recorded as done stays done when only a runtime knob changes (compile, checkpoint frequency,
    the feature store's codec)
    and is stale, naming the key with its old and new value, when a result-affecting one changes."""
    run_dir = tmp_path / "run"
    before = demo_plan(tmp_path, [])
    for name in ("manifest", "features", "fold-1/train-cnn"):  # as if they had run, in order
        stage = before[name]
        write_record(run_dir / name, stage=stage.kind, config=stage.identity(),
                     inputs=input_fingerprints(stage, run_dir), outputs=[], started=0, finished=1)
    after = demo_plan(tmp_path, ["train.compile=true", "train.checkpoint_every_steps=5", "features.codec=none"])
    assert state(after["features"], run_dir)[0] == "done"  # the codec changes bytes on disk, not values
    assert state(after["fold-1/train-cnn"], run_dir)[0] == "done"
    hotter = demo_plan(tmp_path, ["optim.lr.cnn=0.5"])
    status, detail = state(hotter["fold-1/train-cnn"], run_dir)
    assert status == "stale" and "config.optim.lr" in detail and "→ 0.5" in detail


def test_feature_command_and_graph_reach_the_stage_the_same_way(tmp_path, recorder):
    out = tmp_path / "f.zarr"
    result = CliRunner().invoke(app, ["features", "--manifest", str(tmp_path / "m"), "--out", str(out),
                                      "--num-mel-bins", "48", "--target-frames", "150", "--chunk-clips", "32",
                                      "--codec", "none"])
    assert result.exit_code == 0, result.output
    _, from_cli = recorder["features"]
    stages_ = demo_plan(tmp_path, UNUSUAL)
    run_from_file(stages_["features"], tmp_path / "run")
    _, from_graph = recorder["features"]
    assert from_cli["config"] == from_graph["config"] and from_cli["chunk_clips"] == from_graph["chunk_clips"]
    assert from_cli["codec"] == from_graph["codec"] == "none"


# ----------------------------------------------------------------------------- failures and reruns
def _fake_stage(tmp_path: Path, monkeypatch, script: str, warm_start: bool = True):
    """The report stage of a demo plan, run by `python -c script` instead of the real command (in a process
    forked from the warm server, or a new interpreter)."""
    import sys

    from cmkd_pipe.stages import graph

    monkeypatch.setattr(graph, "_command", lambda stage, folder, options: [sys.executable, "-c", script])
    options = RunOptions("demo", tmp_path / "run", tmp_path / "data", folds=[1], warm_start=warm_start)
    stage = next(s for s in plan(options) if s.name == "report")
    stage.deps = []
    return graph, options, stage


@pytest.mark.parametrize("warm_start", [True, False])
def test_a_killed_stage_is_recorded_as_killed_and_its_log_has_no_frames(tmp_path, monkeypatch, warm_start):
    script = ("import os, signal, sys; sys.stdout.write('step 1/4\\rstep 2/4\\rstep 3/4\\n'); sys.stdout.flush(); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    graph, options, stage = _fake_stage(tmp_path, monkeypatch, script, warm_start)
    with pytest.raises(graph.StageFailed, match="killed by signal 9 \\(SIGKILL\\)"):
        graph.run_stage(stage, options.run_dir, options)
    failure = json.loads((options.run_dir / "report" / "failed.json").read_text())
    assert failure["error"].startswith("killed by signal 9")
    log = (options.run_dir / "report" / "log.txt").read_text()
    assert "\r" not in log and "step 1/4\nstep 2/4\nstep 3/4\n" in log
    assert graph.state(stage, options.run_dir)[0] == "failed"


@pytest.mark.parametrize("warm_start", [True, False])
def test_an_error_line_is_the_failure_not_a_progress_frame(tmp_path, monkeypatch, warm_start):
    script = "import sys; print('error: /data/x.wav: no such file'); print('50%|#####', end='\\r'); sys.exit(1)"
    graph, options, stage = _fake_stage(tmp_path, monkeypatch, script, warm_start)
    with pytest.raises(graph.StageFailed):
        graph.run_stage(stage, options.run_dir, options)
    failure = json.loads((options.run_dir / "report" / "failed.json").read_text())
    assert failure["error"] == "error: /data/x.wav: no such file"


def test_a_warm_stage_starts_with_torch_imported_and_runs_as_a_new_interpreter_would(tmp_path, monkeypatch):
    """The warm route: torch already imported, the graph's environment and thread count, stderr and a
    message of sys.exit in the log, atexit handlers run, exit code 1; the next stage starts clean."""
    script = ("import sys; warm = 'torch' in sys.modules; import atexit, os, torch; "
              "print('warm', warm, os.environ['CMKD_PIPE_TRACEBACK'], os.environ.get('LEAK'), "
              "torch.get_num_threads(), sys.argv); "
              "os.environ['LEAK'] = 'x'; atexit.register(print, 'atexit ran'); "
              "sys.stderr.write('to stderr\\n'); sys.exit('error: stopped on purpose')")
    graph, options, stage = _fake_stage(tmp_path, monkeypatch, script)
    for attempt in range(2):
        with pytest.raises(graph.StageFailed, match="error: stopped on purpose"):
            graph.run_stage(stage, options.run_dir, options, threads=2)
    runs = (options.run_dir / "report" / "log.txt").read_text().split("\n$ ")[1:]
    assert len(runs) == 2
    for log in runs:
        assert "warm True 1 None 2 ['-c']" in log
        assert "to stderr" in log and "atexit ran" in log and "error: stopped on purpose" in log


def test_a_warm_process_runs_a_module_with_its_arguments():
    from cmkd_pipe.pipeline import warm_process
    from cmkd_pipe.stages.graph import WARM_PRELOAD

    process = warm_process.start(["-m", "json.tool", "--no-such-flag"], {"PATH": "/usr/bin"}, WARM_PRELOAD)
    output = process.stdout.read()
    assert process.wait() == 2 and b"--no-such-flag" in output
    with pytest.raises(ValueError, match="-m MODULE"):
        warm_process.start(["script.py"], {}, [])


def test_a_warm_stage_started_by_the_cli_script_runs_the_cli_module_fresh(tmp_path):
    """The parent's main script is re-imported in the forked process (multiprocessing); like `cmkd-pipe`,
    this one imports cmkd_pipe.cli.app, which must still run as __main__ without runpy's warning."""
    import subprocess
    import sys

    script = tmp_path / "cli_like.py"
    script.write_text("from cmkd_pipe.cli.app import main\n"
                      "if __name__ == '__main__':\n"
                      "    import os, sys\n"
                      "    from cmkd_pipe.pipeline import warm_process\n"
                      "    from cmkd_pipe.stages.graph import WARM_PRELOAD\n"
                      "    process = warm_process.start(['-m', 'cmkd_pipe.cli.app', 'run-stage', '--help'],\n"
                      "                                 dict(os.environ), WARM_PRELOAD)\n"
                      "    sys.stdout.buffer.write(process.stdout.read())\n"
                      "    sys.exit(process.wait())\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120)
    assert result.returncode == 0 and b"config.json" in result.stdout, result.stdout + result.stderr
    assert b"Warning" not in result.stdout + result.stderr


def _stale_report(tmp_path: Path, monkeypatch, script: str):
    """The fake report stage with an earlier report and a record of another config (so it is stale)."""
    graph, options, stage = _fake_stage(tmp_path, monkeypatch, script)
    folder = options.run_dir / "report"
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("the earlier report")
    write_record(folder, stage="report", config={"old": True}, inputs={}, outputs=[], started=0, finished=1)
    return graph, options, stage, folder


def test_a_stale_rerun_that_fails_at_once_loses_nothing(tmp_path, monkeypatch):
    graph, options, stage, folder = _stale_report(tmp_path, monkeypatch, "import sys; sys.exit('error: bad root')")
    before = (folder / "stage.json").read_text()
    with pytest.raises(graph.StageFailed):
        graph.run_stage(stage, options.run_dir, options)
    assert (folder / "report.md").read_text() == "the earlier report" and (folder / "stage.json").read_text() == before
    assert not (folder / "previous").exists()
    assert graph.state(stage, options.run_dir)[0] == "stale"


def test_a_stale_rerun_keeps_the_previous_outputs_aside(tmp_path, monkeypatch):
    graph, options, stage, folder = _stale_report(tmp_path, monkeypatch, "print('ok')")
    graph.run_stage(stage, options.run_dir, options)
    assert (folder / "previous" / "report.md").read_text() == "the earlier report"
    assert graph.state(stage, options.run_dir)[0] == "done"
    write_record(folder, stage="report", config={"old": True}, inputs={}, outputs=[], started=0, finished=1)
    options.clean = True
    graph.run_stage(stage, options.run_dir, options)
    assert not (folder / "previous").exists()


# ----------------------------------------------------------------------------- what makes a stage stale
@pytest.fixture
def built(tmp_path):
    """A demo-profile run whose manifest and feature stages are recorded done over a tiny corpus on disk."""
    from cmkd_pipe.data_manifests.demo import make_demo_corpus
    from cmkd_pipe.stages import graph

    data = tmp_path / "data"
    make_demo_corpus(data, clips_per_class=3, n_folds=3, clip_seconds=1.0)
    options = RunOptions("demo", tmp_path / "run", data, folds=[1])
    stages_ = {s.name: s for s in plan(options)}
    stage_runner.run("manifest", stages_["manifest"].params, stages_["manifest"].io, {})
    for name in ("manifest", "features"):
        stage = stages_[name]
        write_record(options.run_dir / name, stage=stage.kind, config=stage.identity(),
                     inputs=input_fingerprints(stage, options.run_dir), outputs=[], started=0, finished=1,
                     extra={"evidence": graph.evidence(stage)})
    return options


def statuses(options: RunOptions) -> dict[str, tuple[str, str]]:
    from cmkd_pipe.stages.graph import status_rows

    return {row["stage"]: (row["status"], row["detail"]) for row in status_rows(options)}


def test_a_path_typed_another_way_leaves_stages_done(built, monkeypatch):
    monkeypatch.chdir(built.data_root.parent)
    for root in (Path("data"), Path("./data/../data"), built.data_root.resolve()):
        same = RunOptions("demo", built.run_dir, root, folds=[1])
        shown = statuses(same)
        assert shown["manifest"][0] == shown["features"][0] == "done", shown["manifest"]


def test_an_edited_index_file_makes_the_manifest_and_what_follows_stale(built):
    clips = built.data_root / "manifest" / "clips.csv"
    clips.write_text(clips.read_text().replace("train", "train", 1) + "\n")
    shown = statuses(built)
    assert shown["manifest"] == ("stale", "input changed: manifest/clips.csv")
    assert shown["features"] == ("stale", "input is stale: manifest")


def test_an_edited_audio_file_makes_the_features_stale(built):
    import os

    wav = next((built.data_root / "audio").rglob("*.wav"))
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    shown = statuses(built)
    assert shown["manifest"][0] == "done"
    assert shown["features"] == ("stale", "input changed: audio files (size, time)")


def test_status_reuses_the_arguments_of_the_last_run(built, tmp_path):
    """`status` typed without --data-root / --set / --preset means the run as it was last run."""
    from cmkd_pipe.pipeline.records import write_json_atomic

    write_json_atomic(built.run_dir / "run.json", {"dataset": "demo", "data_root": str(built.data_root),
                                                   "preset": None, "overrides": ["train.seed=3"], "folds": [1],
                                                   "val_on_test": False})
    result = CliRunner().invoke(app, ["status", "--run-dir", str(built.run_dir)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()}
    assert "done" in rows["manifest"] and "done" in rows["features"]
    assert "fold-2/train-cnn" not in rows  # the recorded folds


def test_your_own_folder_corpus_gets_the_graph(tmp_path, make_tone):
    """`make cmkd DATASET=folder DATA_ROOT=… PRESET=my.yaml`: fold groups, the preset's front-end, status."""
    import shutil

    import soundfile as sf

    from cmkd_pipe.pipeline.training.presets import preset_path

    root = tmp_path / "classes"
    for label, freq in (("dog", 300.0), ("cat", 900.0), ("bird", 2500.0)):
        (root / label).mkdir(parents=True)
        for i in range(5):
            sf.write(root / label / f"{i}.wav", make_tone(freq, 1.0, 16000, noise=0.05, seed=i), 16000)
    mine = tmp_path / "my.yaml"
    shutil.copy(preset_path("cpu-small"), mine)
    mine.write_text(mine.read_text().replace("num_mel_bins: 64", "num_mel_bins: 40"))
    options = RunOptions("folder", tmp_path / "run", root, preset=str(mine), folds=[1, 2, 3])
    stages_ = {s.name: s for s in plan(options)}
    assert {"fold-1/train-cnn", "fold-3/student-ast-from-cnn", "report"} <= set(stages_)
    assert stages_["features"].params["features"]["num_mel_bins"] == 40  # the user's preset sets the front-end
    assert stages_["fold-2/train-ast"].params["config"]["data"]["test"] == "fold==2"
    stage_runner.run("manifest", stages_["manifest"].params, stages_["manifest"].io, {})
    write_record(options.run_dir / "manifest", stage="manifest", config=stages_["manifest"].identity(), inputs={},
                 outputs=[], started=0, finished=1, extra={"evidence": evidence(stages_["manifest"])})
    result = CliRunner().invoke(app, ["status", "--dataset", "folder", "--run-dir", str(options.run_dir),
                                      "--data-root", str(root), "--preset", str(mine), "--folds", "1,2,3"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines()}
    assert rows["manifest"] == "done" and rows["features"] == "not" and "fold-3/train-cnn" in rows


def test_a_rerun_killed_after_an_earlier_failure_shows_as_incomplete(tmp_path, monkeypatch):
    """The newest evidence wins: a failure note from an earlier run is gone once the stage starts again, so
    a run killed with its runner (no note written) is 'incomplete', not the old 'failed'."""
    graph, options, stage = _fake_stage(tmp_path, monkeypatch, "import sys; sys.exit('error: first try')")
    with pytest.raises(graph.StageFailed):
        graph.run_stage(stage, options.run_dir, options)
    assert graph.state(stage, options.run_dir)[0] == "failed"

    def runner_killed(*args, **kwargs):
        raise KeyboardInterrupt  # the `cmkd-pipe run` process dies with its stage

    monkeypatch.setattr(graph, "_call_logged", runner_killed)
    with pytest.raises(KeyboardInterrupt):
        graph.run_stage(stage, options.run_dir, options)
    assert graph.state(stage, options.run_dir) == ("incomplete", "started, not finished (killed or running)")


def test_the_multi_label_demo_is_scored_by_map_and_compares_kd_forms(tmp_path):
    options = RunOptions("demo-multilabel", tmp_path / "run", tmp_path / "data", folds=[1])
    stages_ = {s.name: s for s in plan(options)}
    assert stages_["fold-1/train-cnn"].params["config"]["eval"]["metric"] == "mAP"
    forms = {name: s.params["config"]["kd"]["form"] for name, s in stages_.items() if name.startswith(
        "fold-1/student-cnn-from-ast-")}
    # the plain cross-model student trains with the default form; only the other forms get their own stage
    assert stages_["fold-1/student-cnn-from-ast"].params["config"]["kd"]["form"] == "sigmoid-kl"
    assert forms == {f"fold-1/student-cnn-from-ast-{form}": form for form in ("softmax-kl", "bce")}


def test_ready_stages_start_teachers_first_then_the_longest(tmp_path):
    stages_ = plan(RunOptions("demo", tmp_path / "run", tmp_path / "data"))
    priority = start_order(stages_)
    order = [s.name for s in sorted(stages_, key=lambda s: priority[s.name])]
    position = {name: i for i, name in enumerate(order)}
    kinds = {s.name: s.kind for s in stages_}
    teachers = [n for n in order if kinds[n] == "train"]
    students = [n for n in order if kinds[n] == "train-student"]
    assert max(position[n] for n in teachers) < min(position[n] for n in students)
    assert order[:2] == ["manifest", "features"] and order[-1] == "report"
    # among the students: online ones (their teacher runs too) first, the 20-epoch CNN students last
    assert all(n.endswith("-online") for n in students[:3])
    assert all("/student-cnn-" in n for n in students[-6:])
