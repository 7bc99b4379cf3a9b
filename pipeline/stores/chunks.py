"""Chunk bookkeeping shared by every chunked store: creation, completion markers, resume.

Contract: a chunk task writes its region of the data arrays, then sets `chunk_done[i] = 1` last.
A store is created in a temporary folder and renamed into place, so a half-created store is never
mistaken for one; `complete: true` is set only when every chunk is done.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr


class StoreError(ValueError):
    """A store is missing, incomplete, or does not match what the caller expects."""


def n_chunks(n_items: int, chunk_items: int) -> int:
    return max(1, -(-n_items // chunk_items))


def chunk_range(index: int, chunk_items: int, n_items: int) -> tuple[int, int]:
    """[start, stop) of item chunk `index`."""
    start = index * chunk_items
    return start, min(start + chunk_items, n_items)


@contextlib.contextmanager
def write_errors_as_store_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write (disk full, no permission, read-only file system) into a one-line StoreError."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or type(error).__name__
        where = f" ({error.filename})" if error.filename else ""
        raise StoreError(f"{path}: cannot write: {reason}{where}; free some space or fix the permissions, "
                         "then rerun the same command (finished chunks are kept)") from error


def create_store(path: str | os.PathLike, build: Callable[[zarr.Group], None], attrs: dict[str, Any],
                 n_chunk: int) -> zarr.Group:
    """Create a store atomically: `build` adds the data arrays in a temp folder, then it is renamed."""
    path = Path(path)
    tmp = None
    try:
        with write_errors_as_store_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            group = zarr.open_group(store=str(tmp), mode="w")
            build(group)
            group.create_array("chunk_done", shape=(n_chunk,), chunks=(1,), dtype="uint8", fill_value=0)
            group.attrs.update({**attrs, "n_chunks": n_chunk, "complete": False})
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return zarr.open_group(store=str(path), mode="r+")


def open_store(path: str | os.PathLike, schema: str, mode: str = "r") -> zarr.Group:
    """Open a store and check its schema tag; raise StoreError with what to do otherwise."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: no Zarr store here; run the stage that writes it first")
    group = zarr.open_group(store=str(path), mode=mode)
    found = group.attrs.get("schema")
    if found != schema:
        raise StoreError(f"{path}: expected a {schema} store, found schema {found!r}")
    return group


def read_strings(array: zarr.Array) -> np.ndarray:
    """A Zarr string array as a fixed-width numpy str array (numpy cannot cast StringDType directly)."""
    return np.asarray(array[:]).astype(object).astype(str)


def pending_chunks(group: zarr.Group) -> list[int]:
    """Indices of chunks not marked done."""
    done = np.asarray(group["chunk_done"][:])
    return [int(i) for i in np.flatnonzero(done == 0)]


def mark_chunk_done(group: zarr.Group, index: int) -> None:
    group["chunk_done"][index] = 1


def require_complete(group: zarr.Group, path: str | os.PathLike) -> None:
    """Refuse a store that was never finished."""
    if not group.attrs.get("complete", False):
        missing = len(pending_chunks(group))
        raise StoreError(f"{path}: store is incomplete ({missing} of {group.attrs.get('n_chunks')} chunks "
                         "not done); rerun the stage that writes it to finish it")
