"""Chunk bookkeeping shared by every chunked store: creation, completion markers, resume.

Contract: a chunk task writes its region of the data arrays, records its files (integrity.py), then
sets `chunk_done[i] = 1` last. A store is created in a temporary folder and renamed into place, so a
half-created store is never mistaken for one; `complete: true` is set only when every chunk is done.
`prepare_output` decides what an existing --out may be (only our own kind of store is replaced).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
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
    """Create a store atomically: `build` adds the data arrays in a temp folder, then it is renamed.

    `path` must not exist, be an empty folder, or be a store the caller may replace (see
    `prepare_output`). The store gets a new random `generation` id: chunk tasks carry it and refuse to
    write into a store recreated after they were scheduled.
    """
    path = Path(path)
    tmp = None
    generation = uuid.uuid4().hex
    try:
        with write_errors_as_store_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{generation[:8]}.tmp")
            tmp.mkdir()  # mkdir respects the umask (tempfile.mkdtemp would make it 0700)
            group = zarr.open_group(store=str(tmp), mode="w")
            build(group)
            group.create_array("chunk_done", shape=(n_chunk,), chunks=(1,), dtype="uint8", fill_value=0)
            group.create_array("chunk_digest", shape=(n_chunk,), chunks=(1,), dtype=str)
            group.attrs.update({**attrs, "n_chunks": n_chunk, "generation": generation, "complete": False,
                                "content_digest": None})
            if path.exists():
                old = path.with_name(f".{path.name}.{generation[:8]}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return zarr.open_group(store=str(path), mode="r+")


def prepare_output(path: str | os.PathLike, schema: str, overwrite: bool, command: str) -> bool:
    """Decide what to do with an existing --out: True = resume the store there, False = create one.

    Only a store whose schema family matches `schema` (same name, any version) or an empty folder is
    ever replaced; a file or any other folder is refused with one line. Call it under the store lock.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_dir():
        raise StoreError(f"{path}: exists and is not a folder; choose another --out for `{command}` "
                         "(nothing was changed)")
    if not any(path.iterdir()):
        return False
    found = store_schema(path)
    family = schema.rsplit("/", 1)[0]
    if found is None or found.rsplit("/", 1)[0] != family:
        name = family.split("/")[-1]
        kind = f"a {found} store, not a {name} store" if found else f"not a {name} store"
        raise StoreError(f"{path}: exists and is {kind}; choose another --out for `{command}` "
                         f"(--overwrite replaces only {name} stores; nothing was changed)")
    if overwrite:
        return False
    if found != schema:
        raise StoreError(f"{path}: written by another version of cmkd-pipe (schema {found}, this one writes "
                         f"{schema}); pass --overwrite to rebuild it")
    return True


def store_schema(path: Path) -> str | None:
    """The schema attr of the Zarr group at `path`, or None when it is not a readable cmkd-pipe store."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    schema = meta.get("attributes", {}).get("schema") if isinstance(meta, dict) else None
    return schema if isinstance(schema, str) and schema.startswith("cmkd-pipe/") else None


def check_metadata(path: Path) -> None:
    """Parse the group's and every array's zarr.json; a corrupt one is named with what to do."""
    for meta in [path / "zarr.json", *sorted(path.glob("*/zarr.json"))]:
        try:
            json.loads(meta.read_text())
        except ValueError as error:
            raise StoreError(f"{meta}: corrupt Zarr metadata ({str(error).splitlines()[0]}); the store is "
                             "damaged: rerun the stage that writes it with --overwrite") from None
        except OSError as error:
            raise StoreError(f"{meta}: cannot read Zarr metadata ({error.strerror})") from None


def open_store(path: str | os.PathLike, schema: str | None, mode: str = "r") -> zarr.Group:
    """Open a store and check its schema tag (None: any cmkd-pipe store); raise StoreError otherwise."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: no Zarr store here; run the stage that writes it first")
    check_metadata(path)
    group = zarr.open_group(store=str(path), mode=mode)
    found = group.attrs.get("schema")
    if (schema is None and not str(found).startswith("cmkd-pipe/")) or (schema is not None and found != schema):
        hint = "; rebuild it with --overwrite" if str(found).startswith("cmkd-pipe/") else ""
        raise StoreError(f"{path}: expected a {schema or 'cmkd-pipe'} store, found schema {found!r}{hint}")
    return group


def check_generation(group: zarr.Group, path: str | os.PathLike, generation: str) -> None:
    """Refuse to write a chunk into a store recreated since the task was scheduled."""
    if group.attrs.get("generation") != generation:
        raise StoreError(f"{path}: the store was recreated since this chunk task was scheduled "
                         f"(generation {group.attrs.get('generation')} != {generation}); task dropped")


def unreadable_chunk(path: Path, array: str, chunks: list[int], chunk_clips: int, n_clips: int,
                     error: Exception) -> str:
    """One line for a chunk that fails to decode: array, chunk index, clip range, what to do."""
    first = int(chunks[0])
    start, stop = chunk_range(first, chunk_clips, n_clips)
    which = f"chunk {first} (clips {start}-{stop - 1})" if len(chunks) == 1 else \
        f"one of chunks {', '.join(map(str, chunks[:5]))} (first: clips {start}-{stop - 1})"
    return (f"{path}: {array} {which} cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
            "rerun the stage that wrote the store with the same arguments: the chunk will be redone")


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
