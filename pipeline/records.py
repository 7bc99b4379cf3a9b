"""Completion records: written by a stage on success only, read to decide what is done or stale."""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from pipeline.config import fingerprint
from pipeline.version import code_version

RECORD_NAME = "stage.json"
FAILURE_NAME = "failed.json"


def record_path(stage_dir: str | os.PathLike) -> Path:
    return Path(stage_dir) / RECORD_NAME


def stage_fingerprint(stage: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
    """Identity of a stage's result: its resolved config and its inputs' fingerprints."""
    return fingerprint({"stage": stage, "config": config, "inputs": inputs})


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write through a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def write_record(stage_dir: str | os.PathLike, *, stage: str, config: dict[str, Any], inputs: dict[str, str],
                 outputs: list[str], started: float, finished: float, extra: dict[str, Any] | None = None) -> dict:
    """Write `stage.json` (atomically) and clear any earlier failure note. `run_id` is new on every
    run, so dependents can tell a rerun from the result they were built on."""
    record = {
        "stage": stage,
        "fingerprint": stage_fingerprint(stage, config, inputs),
        "run_id": uuid.uuid4().hex[:12],
        "config": config,
        "inputs": inputs,
        "outputs": outputs,
        "code_version": code_version(),
        "host": socket.gethostname(),
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(finished - started, 3),
        **(extra or {}),
    }
    write_json_atomic(record_path(stage_dir), record)
    (Path(stage_dir) / FAILURE_NAME).unlink(missing_ok=True)
    return record


def write_failure(stage_dir: str | os.PathLike, *, stage: str, error: str, log: str | None) -> None:
    write_json_atomic(Path(stage_dir) / FAILURE_NAME,
                      {"stage": stage, "error": error.strip().splitlines()[-1] if error.strip() else "",
                       "log": log, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_record(stage_dir: str | os.PathLike) -> dict[str, Any] | None:
    return read_json(record_path(stage_dir))


def read_failure(stage_dir: str | os.PathLike) -> dict[str, Any] | None:
    return read_json(Path(stage_dir) / FAILURE_NAME)
