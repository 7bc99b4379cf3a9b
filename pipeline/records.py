"""Completion records (written by a stage on success only, read to decide what is done or stale) and
the atomic-write helpers every stage uses: a temporary file beside the target, renamed over it."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cmkd_pipe.pipeline.config import fingerprint
from cmkd_pipe.pipeline.version import code_version

RECORD_NAME = "stage.json"
FAILURE_NAME = "failed.json"


def record_path(stage_dir: str | os.PathLike) -> Path:
    return Path(stage_dir) / RECORD_NAME


def stage_fingerprint(stage: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
    """Identity of a stage's result: its resolved config and its inputs' fingerprints."""
    return fingerprint({"stage": stage, "config": config, "inputs": inputs})


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to; on success it is renamed over `path` (readers never
    see half a file), on error removed. `suffix` ends the temporary name (np.savez wants ".npz")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> None:
    """np.savez_compressed(path, **arrays), atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def torch_save_atomic(path: str | os.PathLike, obj: Any) -> None:
    """torch.save(obj, path), atomically and flushed to disk before the rename."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(obj, stream)
        stream.flush()
        os.fsync(stream.fileno())


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


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
