"""Score audio with an exported ONNX model folder (`cmkd-pipe export --format onnx`) on onnxruntime.

No torch model is built: the folder's config.json gives the feature settings, labels and multi-label
flag, and model.onnx takes the waveform (its own Kaldi front end inside). A window of frames
start..start+T-1 is fed as exactly the samples those frames are made of, so the scores equal the
checkpoint's up to float rounding.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from cmkd_pipe.pipeline.config import FeatureConfig
from cmkd_pipe.pipeline.inference import Label, sample_windows

EXPORT_FORMAT = "cmkd-pipe/export/1"


class OnnxScorer:
    """An exported model folder, or its model.onnx file (config.json and labels.csv beside it)."""

    def __init__(self, path: str | os.PathLike, *, multilabel: bool | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{path}: no config.json beside the ONNX model; export it with `cmkd-pipe export "
                             "CHECKPOINT --format onnx --out DIR` and pass DIR")
        config = json.loads(config_path.read_text())
        if config.get("format") != EXPORT_FORMAT or config.get("runtime") != "onnx":
            raise ValueError(f"{config_path}: not a cmkd-pipe ONNX export (format {config.get('format')!r}, "
                             f"runtime {config.get('runtime')!r})")
        graph = config["graphs"]["waveform"]
        model_file = path if path.is_file() else folder / graph["file"]
        if model_file.name != graph["file"]:
            raise ValueError(f"{path}: tag with the waveform graph {graph['file']} (or the folder), "
                             f"not {model_file.name}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_name = graph["input"]
        self.feature_config = FeatureConfig.from_dict(config["feature_config"])
        self.labels = read_labels(folder / config["labels"])
        self.multilabel = bool(config["multilabel"]) if multilabel is None else multilabel

    def window_logits(self, waveform: np.ndarray, starts: list[int], batch_size: int) -> np.ndarray:
        windows = sample_windows(waveform.astype(np.float32), starts, self.feature_config)
        out = []
        for i in range(0, len(windows), batch_size):
            batch = np.stack(windows[i:i + batch_size])  # equal lengths: a short clip has one window
            out.append(self.session.run(None, {self.input_name: batch})[0])
        return np.concatenate(out).astype(np.float32)


def read_labels(path: Path) -> list[Label]:
    """labels.csv (index, id, name) of an export folder."""
    with open(path, newline="") as f:
        return [Label(int(row["index"]), row["id"], row["name"]) for row in csv.DictReader(f)]
