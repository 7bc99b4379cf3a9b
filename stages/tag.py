"""Tag stage: a trained model (checkpoint or ONNX export) run over audio files of any length.

Inputs:  audio files, folders (searched recursively) or manifest folders; a checkpoint (.pt) or an
         exported ONNX model (folder or model.onnx).
Outputs: per file the clip's top-k labels (mean or max over sliding windows) and, when asked, a JSON
         file, a CSV file and a timeline (per-window scores). Bad files are listed with their reason
         and skipped; the run goes on.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from cmkd_pipe.data_manifests.manifest import Manifest
from cmkd_pipe.pipeline.audio import AudioError
from cmkd_pipe.pipeline.inference import ClipTags, Tagger, load_scorer
from cmkd_pipe.pipeline.records import write_json_atomic, write_text_atomic

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64"})


@dataclass
class TagRun:
    """The tags of every file that could be read, and the files that could not (path, reason)."""

    tagged: list[ClipTags] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many files were tagged, and which failed why."""
        line = f"tagged {len(self.tagged)} file(s)"
        if self.failed:
            shown = ", ".join(f"{path} ({reason})" for path, reason in self.failed[:5])
            more = f", … {len(self.failed) - 5} more" if len(self.failed) > 5 else ""
            line += f"; {len(self.failed)} failed: {shown}{more}"
        return line


def find_audio(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to tag: a file as given, a manifest folder's clips, a folder's audio files (recursive, sorted).
    A path that does not exist is kept, so that it is reported as missing."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and (path / "manifest.json").is_file() and (path / "clips.csv").is_file():
            manifest = Manifest.load(path, check_files=False)
            found.extend(manifest.audio_path(i) for i in range(len(manifest)))
        elif path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
        else:
            found.append(path)
    return found


def run_tag(inputs: Iterable[str | os.PathLike], model: str | os.PathLike, *, hop: int | None = None,
            pool: str = "mean", top_k: int = 5, batch_size: int = 16, device: str | None = None,
            multilabel: bool | None = None, json_out: str | os.PathLike | None = None,
            csv_out: str | os.PathLike | None = None, timeline_out: str | os.PathLike | None = None,
            progress: bool = True) -> TagRun:
    """Tag every file under `inputs` with `model`; write the requested outputs; never stop at a bad file."""
    tagger = Tagger(load_scorer(model, device=device, multilabel=multilabel), hop=hop, pool=pool,
                    batch_size=batch_size)
    paths = find_audio(inputs)
    if not paths:
        raise ValueError("no audio files found in the given paths (looked for "
                         f"{', '.join(sorted(AUDIO_SUFFIXES))})")
    run = TagRun()
    for path in tqdm(paths, desc="tag", unit="file", disable=not progress):
        try:
            run.tagged.append(tagger.tag(path))
        except AudioError as error:
            run.failed.append((str(path), error.reason))
        except (ValueError, RuntimeError, OSError) as error:
            run.failed.append((str(path), " ".join(str(error).split())[:200] or type(error).__name__))
    settings = {"model": str(model), "pool": pool, "hop_frames": tagger.windowing.hop,
                "window_frames": tagger.windowing.window, "multilabel": tagger.multilabel}
    if json_out:
        write_json_atomic(Path(json_out), to_json(run, settings, top_k))
    if csv_out:
        write_text_atomic(Path(csv_out), to_csv(run, top_k))
    if timeline_out:
        write_text_atomic(Path(timeline_out), timeline_csv(run, top_k))
    return run


def to_json(run: TagRun, settings: dict[str, Any], top_k: int) -> dict[str, Any]:
    """{settings…, files: [{path, duration_s, windows, top, timeline}], failed: [{path, reason}]}."""
    return {**settings, "top_k": top_k,
            "files": [{"path": clip.path, "duration_s": round(clip.duration_s, 3), "windows": len(clip.windows),
                       "top": clip.top(top_k), "timeline": clip.timeline(top_k)} for clip in run.tagged],
            "failed": [{"path": path, "reason": reason} for path, reason in run.failed]}


def to_csv(run: TagRun, top_k: int) -> str:
    """path, rank, id, name, score: the top-k labels of each file."""
    return _csv(["path", "rank", "id", "name", "score"],
                ([clip.path, rank, entry["id"], entry["name"], f"{entry['score']:.6f}"]
                 for clip in run.tagged for rank, entry in enumerate(clip.top(top_k), start=1)))


def timeline_csv(run: TagRun, top_k: int) -> str:
    """path, window, start_s, end_s, top ('name score; …'), then one score column per label id."""
    labels = run.tagged[0].labels if run.tagged else []
    header = ["path", "window", "start_s", "end_s", "top"] + [label.id for label in labels]
    rows = []
    for clip in run.tagged:
        for index, ((start, end), entry, scores) in enumerate(zip(clip.windows, clip.timeline(top_k),
                                                                   clip.window_scores)):
            top = "; ".join(f"{t['name']} {t['score']:.3f}" for t in entry["top"])
            rows.append([clip.path, index, f"{start:.3f}", f"{end:.3f}", top] + [f"{s:.6f}" for s in scores])
    return _csv(header, rows)


def table(run: TagRun, top_k: int) -> list[str]:
    """Terminal lines: one per file, its top labels with scores."""
    if not run.tagged:
        return []
    width = min(max(len(clip.path) for clip in run.tagged), 60)
    return [f"{_clip_path(clip.path, width):<{width}}  "
            + "  ".join(f"{entry['name']} {entry['score']:.3f}" for entry in clip.top(top_k))
            for clip in run.tagged]


def _clip_path(path: str, width: int) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


def _csv(header: list[str], rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
