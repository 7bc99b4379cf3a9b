"""Chunks verified, not assumed: per-chunk file records, the store content digest, `verify_store`.

When a chunk task has written its region, `record_chunk` lists the chunk's files in every array that
is chunked along clips (or has one row per chunk, like `chunk_stats`) with their size and sha256
(of the encoded bytes) in `chunk_digest[i]`, before `chunk_done[i]` is set. A file that zarr did
not write (every value the fill value) is recorded as absent. Then:

- `chunk_problems(..., deep=False)` (readers, at open): done marker, record, each file present with
  its recorded size — a stat per file, no data read. Catches deleted and truncated chunk files.
- `chunk_problems(..., deep=True)` (`verify_store`, writers on resume): also the sha256 of every file.
- `content_digest`: sha256 of every chunk's record in order, written as the `content_digest` attr
  at finalize; a logits store records its feature store's content digest.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import zarr

from cmkd_pipe.pipeline.stores.chunks import StoreError, chunk_range, open_store

BOOKKEEPING = ("chunk_done", "chunk_digest")


def chunk_files(group: zarr.Group, index: int) -> list[str]:
    """Store-relative keys of chunk `index`'s files in every data array (clip-chunked or per-chunk)."""
    n_clips, chunk_clips, n_chunk = (int(group.attrs[k]) for k in ("n_clips", "chunk_clips", "n_chunks"))
    keys = []
    for name, array in sorted(group.arrays()):
        if name in BOOKKEEPING or not array.shape:
            continue
        per_clip = array.shape[0] == n_clips and array.chunks[0] == chunk_clips
        per_chunk = array.shape[0] == n_chunk and array.chunks[0] == 1
        if per_clip or per_chunk:
            coords = (index,) + (0,) * (len(array.shape) - 1)
            keys.append(f"{name}/{array.metadata.encode_chunk_key(coords)}")
    return keys


def _file_record(path: Path) -> list | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return [len(data), hashlib.sha256(data).hexdigest()]


def record_chunk(group: zarr.Group, root: str | os.PathLike, index: int) -> str:
    """Write chunk `index`'s file record into `chunk_digest[index]`; return the record."""
    root = Path(root)
    record = json.dumps({key: _file_record(root / key) for key in chunk_files(group, index)}, sort_keys=True)
    group["chunk_digest"][index] = record
    return record


def _chunk_problem(root: Path, index: int, done: int, record: str, deep: bool) -> str | None:
    if not done:
        return "not marked done"
    try:
        files = json.loads(record)
    except ValueError:
        return "its digest record is missing or unreadable"
    for key, expected in files.items():
        path = root / key
        if expected is None:
            if path.exists():
                return f"{key} exists but was not written by the chunk task (altered)"
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"data file {key} is missing"
        if size != expected[0]:
            return f"data file {key} is truncated or altered ({size} bytes, {expected[0]} written)"
        if deep and _file_record(path) != expected:
            return f"data file {key} is altered (sha256 differs from the one recorded when it was written)"
    return None


def chunk_problems(group: zarr.Group, root: str | os.PathLike, *, deep: bool = False,
                   indices: list[int] | None = None) -> dict[int, str]:
    """{chunk index: what is wrong} for the given chunks (default: all)."""
    root = Path(root)
    done = np.asarray(group["chunk_done"][:])
    records = np.asarray(group["chunk_digest"][:]).astype(object)
    indices = range(len(done)) if indices is None else indices
    problems = {}
    for i in indices:
        problem = _chunk_problem(root, int(i), int(done[i]), str(records[i] or ""), deep)
        if problem:
            problems[int(i)] = problem
    return problems


def describe(group: zarr.Group, path: str | os.PathLike, problems: dict[int, str]) -> list[str]:
    """One line per damaged chunk: chunk index, clip range, what is wrong."""
    chunk, n = int(group.attrs["chunk_clips"]), int(group.attrs["n_clips"])
    lines = []
    for index, problem in sorted(problems.items()):
        start, stop = chunk_range(index, chunk, n)
        lines.append(f"{path}: chunk {index} (clips {start}-{stop - 1}): {problem}")
    return lines


def require_intact(group: zarr.Group, path: str | os.PathLike, stage: str) -> None:
    """Readers: refuse a store with a missing, truncated or unrecorded chunk file (cheap: stats only)."""
    problems = chunk_problems(group, path)
    if problems:
        first = describe(group, path, problems)[0]
        more = f" (and {len(problems) - 1} more chunk(s))" if len(problems) > 1 else ""
        raise StoreError(f"{first}{more}; rerun `cmkd-pipe {stage}` with the same arguments: "
                         "damaged chunks are redone")


def invalidate_damaged(group: zarr.Group, path: str | os.PathLike) -> list[int]:
    """Writers on resume: mark done chunks whose files are missing or altered as not done (deep check)."""
    done = np.flatnonzero(np.asarray(group["chunk_done"][:]) == 1).tolist()
    damaged = sorted(chunk_problems(group, path, deep=True, indices=done))
    for index in damaged:
        group["chunk_done"][index] = 0
    if damaged:
        group.attrs.update({"complete": False, "content_digest": None})
    return damaged


def content_digest(group: zarr.Group) -> str:
    """sha256 over every chunk's file record in chunk order: equal digests ⇔ equal stored data."""
    digest = hashlib.sha256()
    for record in np.asarray(group["chunk_digest"][:]).astype(object):
        digest.update(str(record or "").encode())
        digest.update(b"\n")
    return digest.hexdigest()


def verify_store(path: str | os.PathLike) -> list[str]:
    """Every problem of a cmkd-pipe store, one line each (empty list: intact and complete).

    Reads every chunk file once (sha256 of its bytes) and compares it with what its chunk task
    recorded; checks `complete` and the `content_digest` attr. Works on feature and logits stores.
    """
    try:
        group = open_store(path, None)
    except StoreError as error:
        return [str(error)]
    problems = describe(group, path, chunk_problems(group, path, deep=True))
    if not group.attrs.get("complete", False):
        problems.append(f"{path}: store is not complete; rerun the stage that writes it")
    elif group.attrs.get("content_digest") != content_digest(group):
        problems.append(f"{path}: content_digest attr does not match the chunk records (store altered)")
    return problems


def reseal(path: str | os.PathLike) -> None:
    """After a deliberate edit of a complete store's data (a test, a repair by hand): record every
    chunk's files again and refresh `content_digest`, so readers accept the edited data."""
    group = zarr.open_group(store=str(path), mode="r+")
    for index in range(int(group.attrs["n_chunks"])):
        record_chunk(group, path, index)
    group.attrs["content_digest"] = content_digest(group)
