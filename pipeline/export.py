"""Export a checkpoint as a self-contained model folder (ONNX or TorchScript) for use without cmkd-pipe.

The folder holds
  model.onnx | model.pt            waveform [batch, samples] (mono float32 at the feature sample rate) -> logits
  model_fbank.onnx | model_fbank.pt  raw Kaldi fbank [batch, frames, bins] -> logits
  labels.csv                       index, id, name
  config.json                      feature settings, normalisation, multilabel, input/output names and shapes
Both graphs pad/trim to the model's input length and normalise inside, so batch and length are free
(any length of at least one analysis window). The front end is `pipeline.kaldi_frontend.KaldiFbank`.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from cmkd_pipe.pipeline.config import FeatureConfig, Normalization
from cmkd_pipe.pipeline.inference import checkpoint_multilabel, labels_of
from cmkd_pipe.pipeline.kaldi_frontend import FbankClassifier, WaveformClassifier
from cmkd_pipe.pipeline.models.checkpoint import file_sha256, load_checkpoint
from cmkd_pipe.pipeline.version import code_version

FORMAT = "cmkd-pipe/export/1"
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 18
TOLERANCE = 1e-3  # max |logit difference| the export check accepts


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "onnx",
                 multilabel: bool | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the export folder `out` (atomically: built aside, then renamed); return its config.json."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out}: already exists; pass --overwrite or choose another --out")
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    features = FeatureConfig.from_dict(meta["feature_config"])
    norm = Normalization.from_dict(meta["normalization"])
    is_multilabel = checkpoint_multilabel(meta, checkpoint) if multilabel is None else multilabel
    suffix = FORMATS[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        waveform_graph = WaveformClassifier(model, features, norm).eval()
        fbank_graph = FbankClassifier(model, features, norm).eval()
        wave_example = torch.randn(2, features.input_samples) * 0.1
        fbank_example = waveform_graph.fbank(wave_example)
        write = _write_onnx if fmt == "onnx" else _write_torchscript
        write(waveform_graph, wave_example, staging / f"model{suffix}", "waveform", {0: "batch", 1: "samples"})
        write(fbank_graph, fbank_example, staging / f"model_fbank{suffix}", "fbank", {0: "batch", 1: "frames"})
        verify_export(staging, fmt, waveform_graph, fbank_graph, features)
        _write_labels(staging / "labels.csv", meta["vocabulary"])
        config = export_config(meta, fmt, is_multilabel, checkpoint)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp creates 0700
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config


def verify_export(folder: Path, fmt: str, waveform_graph: torch.nn.Module, fbank_graph: torch.nn.Module,
                  features: FeatureConfig) -> None:
    """Run the written graphs on noise of three lengths (short, one window, longer) and a batch size
    other than the example's; raise when a logit differs from the checkpoint's by more than TOLERANCE."""
    generator = torch.Generator().manual_seed(0)
    window = features.input_samples
    for samples in (window // 3, window, window * 2 + 123):
        wave = torch.randn(3, samples, generator=generator) * 0.1
        with torch.no_grad():
            fbank = waveform_graph.fbank(wave)
            expected = {"waveform": waveform_graph(wave), "fbank": fbank_graph(fbank)}
        got = {"waveform": run_graph(folder / f"model{FORMATS[fmt]}", "waveform", wave, fmt),
               "fbank": run_graph(folder / f"model_fbank{FORMATS[fmt]}", "fbank", fbank, fmt)}
        for name, value in got.items():
            error = float((torch.as_tensor(value) - expected[name]).abs().max())
            if error > TOLERANCE:
                raise RuntimeError(f"export check: the {name} graph differs from the checkpoint by {error:.2e} "
                                   f"(> {TOLERANCE}) on {samples} samples; please report this model config")


def run_graph(path: Path, name: str, x: torch.Tensor, fmt: str):
    """Logits of an exported graph file."""
    if fmt == "onnx":
        import onnxruntime as ort

        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x.numpy()})[0]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))(x)


def export_config(meta: dict[str, Any], fmt: str, multilabel: bool, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What config.json says: everything a user needs to feed the graphs and read their outputs."""
    features = meta["feature_config"]
    config = FeatureConfig.from_dict(features)
    suffix = FORMATS[fmt]
    return {
        "format": FORMAT,
        "runtime": fmt,
        "feature_config": features,
        "normalization": meta["normalization"],
        "multilabel": multilabel,
        "scores": "sigmoid(logits)" if multilabel else "softmax(logits)",
        "model_config": meta["model_config"],
        "n_classes": meta["n_classes"],
        "graphs": {
            "waveform": {"file": f"model{suffix}", "input": "waveform", "shape": ["batch", "samples"],
                         "dtype": "float32", "sample_rate": features["sample_rate"], "channels": 1,
                         "min_samples": config.window_samples, "input_samples": config.input_samples,
                         "output": "logits", "output_shape": ["batch", meta["n_classes"]]},
            "fbank": {"file": f"model_fbank{suffix}", "input": "fbank",
                      "shape": ["batch", "frames", features["num_mel_bins"]], "dtype": "float32",
                      "note": "raw log-mel (torchaudio.compliance.kaldi.fbank as in feature_config), not normalised",
                      "output": "logits", "output_shape": ["batch", meta["n_classes"]]},
        },
        "labels": "labels.csv",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "code_version": code_version(),
    }


def _write_labels(path: Path, vocabulary: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "id", "name"])
        for label in labels_of(vocabulary):
            writer.writerow([label.index, label.id, label.name])


def _write_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, name: str,
                axes: dict[int, str]) -> None:
    dims = {axis: torch.export.Dim.DYNAMIC for axis in axes}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[name], output_names=["logits"],
                                    dynamic_shapes=(dims,), opset_version=OPSET, verbose=False,
                                    optimize=False)  # onnxruntime optimises at load; this halves export time
    program.save(str(path), external_data=False)


def _write_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path, name: str,
                       axes: dict[int, str]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
    traced.save(str(path))
