"""What a corpus on disk is, cheaply: the digests the stage graph keeps to notice that a corpus changed.

- `index_files(root)`: the corpus' index files (csv, json, tsv, txt: label lists, splits, vocabularies) under
  the dataset root (two folder levels down) or the root file itself, each as `size:sha256-prefix` of its
  bytes. Editing dev.csv changes its entry, so the manifest stage (and what follows) is stale, naming it.
- `audio_digest(manifest_dir)`: one digest over every clip's (path, size, modification time), so an edited,
  replaced or touched audio file makes the feature stage stale. Audio bytes are not read (a stat per file).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

INDEX_SUFFIXES = (".csv", ".json", ".tsv", ".txt")
INDEX_DEPTH = 2  # folder levels below the root searched for index files (FSD50K.ground_truth/dev.csv: 1)
INDEX_MAX_BYTES = 256 * 2**20  # larger files are identified by size and modification time only


def index_files(root: str | os.PathLike) -> dict[str, str]:
    """{path relative to root: 'size:digest'} of the index files of the corpus at `root` (a folder or a file)."""
    root = Path(root)
    if root.is_file():
        return {root.name: _file_identity(root)}
    if not root.is_dir():
        return {}
    found = {}
    for path in _walk(root, INDEX_DEPTH):
        if path.suffix.lower() in INDEX_SUFFIXES:
            found[str(path.relative_to(root))] = _file_identity(path)
    return dict(sorted(found.items()))


def audio_digest(manifest_dir: str | os.PathLike) -> str:
    """Digest of (path, size, mtime) of every clip of a manifest folder; 'missing: PATH' for absent files are
    part of it, so a file that appears or disappears changes it too."""
    from cmkd_pipe.data_manifests.manifest import Manifest

    manifest = Manifest.load(manifest_dir, check_files=False)
    digest = hashlib.sha256()
    for index in range(len(manifest)):
        path = manifest.audio_path(index)
        try:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:16]


def _walk(root: Path, depth: int):
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            yield Path(entry.path)
        elif entry.is_dir() and depth > 0:
            yield from _walk(Path(entry.path), depth - 1)


def _file_identity(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > INDEX_MAX_BYTES:
        return f"{stat.st_size}:mtime{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{stat.st_size}:{digest.hexdigest()[:16]}"
