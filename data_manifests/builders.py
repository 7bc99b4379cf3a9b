"""Registry of manifest builders: `build_manifest(kind, root, **options)` is what the CLI calls.

kind      root                          options (defaults)
esc50     the ESC-50 folder             -
fsd50k    folder with FSD50K.* folders  -
folder    root/<class>/<files>          folds (5; 0 = none)
csv       the labelled CSV file         audio_root (the CSV's folder)
audioset  folder with the csvs          segments (every *_segments.csv in root), class_labels
                                        ("class_labels_indices.csv"), audio_dir ("audio"), on_missing ("error")
ast-json  folder with the datafiles     splits (every *.json in root, split = file stem), class_labels
                                        ("class_labels_indices.csv"), multilabel (inferred)
demo      folder for the demo corpus    multilabel (false), clips_per_class, seed: the built-in synthetic
                                        corpus, generated into root on first use and read back after
Relative file options are taken relative to root. List options also accept a comma-separated string
("balanced_train_segments.csv,eval_segments.csv"), `splits` also "train=tr.json,eval=ev.json".
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

from cmkd_pipe.data_manifests.ast_json import LABELS_FILE, read_ast_json
from cmkd_pipe.data_manifests.audioset import build_audioset
from cmkd_pipe.data_manifests.esc50 import build_esc50
from cmkd_pipe.data_manifests.folder import build_folder
from cmkd_pipe.data_manifests.fsd50k import build_fsd50k
from cmkd_pipe.data_manifests.generic_csv import build_generic_csv
from cmkd_pipe.data_manifests.manifest import Manifest, ManifestError


def _csv(root: Path, audio_root: str | os.PathLike | None = None) -> Manifest:
    if not root.is_file():
        raise ManifestError(f"{root}: for kind 'csv' root is the labelled CSV file itself (columns path,label)")
    return build_generic_csv(root, audio_root)


def _audioset(root: Path, segments: list[str] | str | None = None, class_labels: str = LABELS_FILE,
              audio_dir: str = "audio", on_missing: str = "error") -> Manifest:
    if segments is None:
        csvs = sorted(root.glob("*_segments.csv"))
        if not csvs:
            raise ManifestError(f"{root}: no *_segments.csv here; download AudioSet's segment lists or pass segments=")
    else:
        csvs = [root / s for s in _as_list(segments)]
    return build_audioset(csvs, root / class_labels, root / audio_dir, on_missing)


def _ast_json(root: Path, splits: dict[str, str] | str | None = None, class_labels: str = LABELS_FILE,
              multilabel: bool | None = None) -> Manifest:
    if splits is None:
        files = {p.stem: p for p in sorted(root.glob("*.json"))}
        if not files:
            raise ManifestError(f"{root}: no *.json datafiles here; pass splits={{split: file}}")
    else:
        pairs = splits.items() if isinstance(splits, dict) else (_split_pair(s) for s in _as_list(splits))
        files = {split: root / name for split, name in pairs}
    return read_ast_json(files, root / class_labels, multilabel)


def _demo(root: Path, multilabel: bool = False, clips_per_class: int | None = None, seed: int = 0) -> Manifest:
    from cmkd_pipe.data_manifests.demo import make_demo_corpus

    existing = root / "manifest"
    if (existing / "manifest.json").is_file():
        return Manifest.load(existing)
    sizes = {} if clips_per_class is None else {"clips_per_class": clips_per_class}
    return make_demo_corpus(root, multilabel=multilabel, seed=seed, **sizes)


BUILDERS: dict[str, Callable[..., Manifest]] = {
    "demo": _demo,
    "esc50": build_esc50,
    "fsd50k": build_fsd50k,
    "folder": build_folder,
    "csv": _csv,
    "audioset": _audioset,
    "ast-json": _ast_json,
}


def build_manifest(kind: str, root: str | os.PathLike, **options) -> Manifest:
    """Build the validated manifest of corpus layout `kind` found at `root` (see the module table)."""
    if kind not in BUILDERS:
        raise ManifestError(f"unknown manifest kind {kind!r}; choose one of {sorted(BUILDERS)}")
    builder = BUILDERS[kind]
    parameters = dict(list(inspect.signature(builder).parameters.items())[1:])
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ManifestError(f"manifest kind {kind!r} takes no option(s) {unknown}; it takes {list(parameters) or 'none'}")
    for name, value in options.items():
        default = parameters[name].default
        if type(default) in (int, float, bool) and type(value) is not type(default) and not (
                type(default) is float and type(value) is int):
            raise ManifestError(f"manifest kind {kind!r}: option {name}={value!r} must be {_article(type(default).__name__)} "
                                f"(default {default!r})")
    return builder(Path(root), **options)


def _as_list(value: list[str] | str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def _split_pair(text: str) -> tuple[str, str]:
    split, sep, name = text.partition("=")
    if not sep or not split.strip() or not name.strip():
        raise ManifestError(f"splits entry {text!r} must read split=file.json")
    return split.strip(), name.strip()


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"
