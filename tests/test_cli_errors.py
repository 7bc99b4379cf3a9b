"""The CLI's one error boundary: whatever a command raises ends as one `error:` line and exit code 1."""
from __future__ import annotations

import errno

import pytest
from typer.testing import CliRunner

import cmkd_pipe.stages.features
from cmkd_pipe.cli.app import app
from cmkd_pipe.cli.common import error_line


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.EEXIST, "already exists"), (errno.EACCES, "permission denied")])
def test_os_errors_name_the_file_and_what_to_do(code, words):
    line = error_line(OSError(code, "os text", "/runs/x/features.zarr/fbank/c/0/0/0"))
    assert line.startswith("/runs/x/features.zarr/fbank/c/0/0/0: ") and words in line


def test_project_errors_keep_their_own_words_on_one_line():
    assert error_line(ValueError("store x: chunk 3\n(clips 96–127) is missing")) == \
        "store x: chunk 3 (clips 96–127) is missing"
    assert error_line(ZeroDivisionError("division by zero")) == "ZeroDivisionError: division by zero"


@pytest.mark.parametrize("raised", [OSError(errno.ENOSPC, "No space left on device", "/full/features.zarr"),
                                    ZeroDivisionError("integer division or modulo by zero")])
def test_a_command_that_raises_prints_one_line(tmp_path, monkeypatch, raised):
    def broken(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cmkd_pipe.stages.features, "run_features", broken)
    result = CliRunner().invoke(app, ["features", "--manifest", str(tmp_path), "--out", str(tmp_path / "f.zarr")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert error_line(raised) in lines[0]


def test_the_stage_graph_keeps_the_traceback_in_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv("CMKD_PIPE_TRACEBACK", "1")

    def broken(*args, **kwargs):
        raise ValueError("bad setting")

    monkeypatch.setattr(cmkd_pipe.stages.features, "run_features", broken)
    result = CliRunner().invoke(app, ["features", "--manifest", str(tmp_path), "--out", str(tmp_path / "f.zarr")])
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Traceback") and lines[-1] == "error: bad setting"


def test_a_manifest_option_of_the_wrong_type_is_one_line(tmp_path):
    (tmp_path / "dog").mkdir()
    result = CliRunner().invoke(app, ["manifest", "folder", str(tmp_path), "--out", str(tmp_path / "m"),
                                      "-o", "folds=abc"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1
    assert "option folds='abc' must be an int (default 5)" in lines[0]


def test_a_run_folder_is_not_trained_over_without_resume_or_overwrite(tmp_path):
    from cmkd_pipe.stages.train import prepare_run_folder

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds a training run .*pass --resume to continue it, "
                                         "--overwrite to start it again"):
        prepare_run_folder(out, resume=False, overwrite=False)
    prepare_run_folder(out, resume=True, overwrite=False)  # resuming is fine
    prepare_run_folder(out, resume=False, overwrite=True)
    assert not (out / "checkpoints").exists() and not (out / "results.json").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files go
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a run folder"):
        prepare_run_folder(tmp_path / "afile", resume=False, overwrite=True)
