"""One writer per store: an owner entry created atomically beside the store for the whole run.

The lock lives beside the store (`.<store name>.lock` in the same folder), so it also covers the
store's creation and an --overwrite that deletes it. It is a symbolic link whose target is the owner
(JSON: host, pid, what, start time): creating it is atomic and needs no data block, so it works on a
full disk too. A lock of this host whose pid is gone is stale and is taken over.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from cmkd_pipe.pipeline.stores.chunks import StoreError, write_errors_as_store_errors


def lock_path(store: str | os.PathLike) -> Path:
    store = Path(store)
    return store.with_name(f".{store.name}.lock")


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold the store's writer lock for the block; refuse with one line naming the owner if taken."""
    path = lock_path(store)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "what": what,
             "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    with write_errors_as_store_errors(store):
        path.parent.mkdir(parents=True, exist_ok=True)
        _acquire(path, owner)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if _read_owner(path) == owner:
                path.unlink()


def _acquire(path: Path, owner: dict) -> None:
    text = json.dumps(owner, separators=(",", ":"))
    for _ in range(3):
        try:
            os.symlink(text, path)  # atomic: fails when the lock exists, never leaves a half-written one
            return
        except FileExistsError:
            current = _read_owner(path)
            if current is None or not _is_stale(current):
                raise StoreError(_held_message(path, current)) from None
            _take_away(path)
    raise StoreError(_held_message(path, _read_owner(path)))


def _held_message(path: Path, owner: dict | None) -> str:
    store = path.with_name(path.name[1:-len(".lock")])
    if owner is None:
        return (f"{store}: another writer holds the lock {path} (owner unreadable); if no run is writing this "
                "store, delete the lock file and rerun")
    return (f"{store}: another run is writing this store ({owner.get('what', 'run')}, pid {owner.get('pid')} on "
            f"{owner.get('host')}, since {owner.get('started')}); wait for it to finish, or if it is gone "
            f"delete {path} and rerun")


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(os.readlink(path))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _is_stale(owner: dict) -> bool:
    """True only when the owner ran on this host and its process is gone (another host: unknown, kept)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _take_away(path: Path) -> None:
    """Remove a stale lock so that exactly one of several contenders gets to remove it."""
    aside = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    taken = _read_owner(aside)
    if taken is not None and not _is_stale(taken):  # a live contender's fresh lock: put it back
        with contextlib.suppress(FileExistsError):
            os.symlink(os.readlink(aside), path)
    aside.unlink(missing_ok=True)
