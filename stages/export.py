"""Export stage: a checkpoint turned into a self-contained model folder (ONNX or TorchScript).

Inputs:  a cmkd-pipe checkpoint (.pt).
Outputs: OUT/ with model.onnx|.pt (waveform -> logits), model_fbank.onnx|.pt (fbank -> logits),
         labels.csv and config.json (see pipeline/export.py), written atomically; the exported graphs
         are compared with the checkpoint on test signals before the folder is kept.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cmkd_pipe.pipeline.export import export_model


def run_export(checkpoint: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "onnx",
               multilabel: bool | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Export `checkpoint` to the folder `out`; return a summary (folder, files, graphs)."""
    config = export_model(checkpoint, out, fmt=fmt, multilabel=multilabel, overwrite=overwrite)
    out = Path(out)
    return {"out": str(out), "files": sorted(p.name for p in out.iterdir()), "format": fmt,
            "multilabel": config["multilabel"], "n_classes": config["n_classes"],
            "inputs": {name: {"file": g["file"], "input": g["input"], "shape": g["shape"]}
                       for name, g in config["graphs"].items()}}
