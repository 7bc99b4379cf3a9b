"""What a published checkpoint is, read off its file: architecture, labels, front-end and normalisation.

`describe_source(path)` answers what `cmkd-pipe import-teacher` needs to rebuild a published model as a
teacher, per weights format (pipeline.models.weights):
  ast-hf        a Hugging Face folder: dims, patch strides, n_mels, `layer_norm_eps` (encoder and head)
                and labels (`id2label`) from config.json; mean/std from preprocessor_config.json.
  ast-official  a YuanGongND/ast release (no config): width, depth and head count from the tensors (heads
                from the DeiT sizes: 192 -> 3, 384 -> 6, 768 -> 12), strides from the published patch grids
                (PUBLISHED_AST_GRIDS); labels from --labels.
  psla          a YuanGongND/psla EfficientNet: the B-variant from its block count and head width, the
                attention head's count of heads; labels from --labels.
  checkpoint    one of our own checkpoints (e.g. trained on AudioSet): everything it records.
Normalisation: the statistics published with the source when known: a preprocessor_config.json, else for
527-output AudioSet checkpoints the AST recipe's AudioSet statistics (divisor 2) or PSLA's (divisor 1);
None otherwise (the importer then uses the feature store's, with the recipe's divisor).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmkd_pipe.pipeline.config import PUBLISHED_STATS
from cmkd_pipe.pipeline.label_map import labels_from_hf_config
from cmkd_pipe.pipeline.models.ast import patch_grid
from cmkd_pipe.pipeline.models.ast_options import AST_SIZES, N_TOKENS
from cmkd_pipe.pipeline.models.weight_formats import CHECKPOINT_FORMAT, detect_format, read_structure
from cmkd_pipe.pipeline.models.weights import (PUBLISHED_AST_GRIDS, StateDict, WeightsError, hf_ast_to_ours,
                                     official_ast_to_ours, read_weights, strip_prefix)

AUDIOSET_CLASSES = 527
AST_FRONT_END = {"sample_rate": 16000, "num_mel_bins": 128, "frame_shift_ms": 10.0, "frame_length_ms": 25.0}
HEADS_BY_WIDTH = {dims[0]: dims[2] for dims in AST_SIZES.values()}  # DeiT widths -> attention heads
PSLA_VARIANTS = {(16, 1280): 0, (23, 1280): 1, (23, 1408): 2, (26, 1536): 3, (32, 1792): 4, (39, 2048): 5,
                 (45, 2304): 6, (55, 2560): 7}  # (MBConv blocks, head channels) -> EfficientNet-B number


@dataclass
class PublishedSource:
    """A checkpoint's architecture and what it was trained with, as far as its files tell."""

    path: Path  # as given (a file or a Hugging Face folder)
    weights_file: Path  # the file holding the tensors
    format: str
    model_config: dict[str, Any]  # build_model config (arch + options)
    n_outputs: int
    labels: list[dict] | None = None  # {index, id, name} per output, when the files name them
    labels_from: str | None = None
    front_end: dict[str, Any] = field(default_factory=dict)  # feature settings the weights expect
    normalization: dict[str, float] | None = None  # {mean, std, divisor} published with the source
    normalization_from: str | None = None
    divisor: float = 2.0  # the recipe's std divisor (AST 2, PSLA 1)
    config_file: Path | None = None  # a Hugging Face folder's config.json


def describe_source(path: str | Path, overrides: dict[str, Any] | None = None) -> PublishedSource:
    """Describe the checkpoint at `path`; `overrides` are model options the user gave (they win)."""
    path = Path(path)
    overrides = dict(overrides or {})
    structure = read_structure(path) if path.is_file() else None
    if isinstance(structure, dict) and structure.get("format") == CHECKPOINT_FORMAT:
        return _our_checkpoint(path, overrides)
    sd, hf_config = read_weights(path)
    fmt = detect_format(sd)
    describe = _DESCRIBERS.get(fmt)
    if describe is None:
        hint = {"timm-vit": "ImageNet weights carry no audio classifier", "timm-cnn": "ImageNet weights carry no "
                "audio classifier", "native-ast": "a bare state dict names no architecture or labels",
                "native-cnn": "a bare state dict names no architecture or labels"}.get(fmt, "unrecognised format")
        raise WeightsError(f"{path}: {fmt} weights cannot teach as they are ({hint}); give an official AST, "
                           "Hugging Face AST, PSLA or cmkd-pipe checkpoint, or train a teacher from them with "
                           "`cmkd-pipe train --weights`")
    return describe(path, sd, hf_config, overrides)


def _weights_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    return next(p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.exists())


def _ast_source(path: Path, ours: StateDict, overrides: dict[str, Any], fmt: str,
                hf_config: dict | None) -> PublishedSource:
    """An AST source from its weights in our key names, its HF config (or none) and the user's options."""
    pos = ours["embeddings.pos_embed"]
    width = int(pos.shape[2])
    depth = len({int(m.group(1)) for k in ours if (m := re.match(r"blocks\.(\d+)\.", k))})
    hidden = ours.get("blocks.0.mlp.fc1.weight")
    if hidden is not None and hidden.shape[0] != 4 * width:
        raise WeightsError(f"{path}: MLP width {hidden.shape[0]} is not 4 x the token width {width}; the AST here "
                           "has the ViT's MLP ratio 4 (as every published AST)")
    config: dict[str, Any] = {"arch": "ast", "size": "custom", "embed_dim": width, "depth": depth}
    front_end = dict(AST_FRONT_END)
    if hf_config is not None:
        config.update(num_heads=hf_config.get("num_attention_heads"), patch=hf_config.get("patch_size", 16),
                      fstride=hf_config.get("frequency_stride", 10), tstride=hf_config.get("time_stride", 10))
        front_end["num_mel_bins"] = int(hf_config.get("num_mel_bins", 128))
        if "layer_norm_eps" in hf_config:
            config.update(norm_eps=float(hf_config["layer_norm_eps"]), head_norm_eps=float(hf_config["layer_norm_eps"]))
    else:
        config["num_heads"] = HEADS_BY_WIDTH.get(width)
        config.update(_official_strides(int(pos.shape[1]) - N_TOKENS, overrides, path))
    config.update({k: v for k, v in overrides.items() if k != "arch"})
    if config.get("num_heads") is None:
        raise WeightsError(f"{path}: cannot tell the number of attention heads from the weights (width {width}); "
                           "pass --set model.ast.num_heads=N")
    return PublishedSource(path, _weights_file(path), fmt, config, int(ours["head.fc.weight"].shape[0]),
                           front_end=front_end, divisor=2.0)


def _official_strides(n_patches: int, overrides: dict[str, Any], path: Path) -> dict[str, int]:
    """Patch strides of an official release: from its published grid (128 bins x 1024 frames), else the
    user's (default 10/10), checked to tile 128 bins into a whole number of time columns."""
    if n_patches in PUBLISHED_AST_GRIDS:
        grid = PUBLISHED_AST_GRIDS[n_patches]
        stride = next(s for s in range(1, 17) if patch_grid(128, 1024, 16, s, s) == grid)
        return {"patch": 16, "fstride": stride, "tstride": stride}
    fstride, tstride = int(overrides.get("fstride", 10)), int(overrides.get("tstride", 10))
    rows = (AST_FRONT_END["num_mel_bins"] - 16) // fstride + 1
    if n_patches % rows:
        raise WeightsError(f"{path}: {n_patches} patches are not a published AST grid and do not tile 128 mel bins "
                           f"with fstride {fstride}; pass --set model.ast.fstride=S --set model.ast.tstride=S")
    return {"patch": 16, "fstride": fstride, "tstride": tstride}


def _published_normalization(source: PublishedSource, name: str, divisor: float, recipe: str) -> None:
    """The source's AudioSet statistics when it is an AudioSet (527-output) checkpoint."""
    if source.n_outputs == AUDIOSET_CLASSES:
        mean, std = PUBLISHED_STATS[name]
        source.normalization = {"mean": mean, "std": std, "divisor": divisor}
        source.normalization_from = f"published AudioSet statistics of the {recipe} recipe ({name})"


def _ast_hf(path: Path, sd: StateDict, hf_config: dict | None, overrides: dict[str, Any]) -> PublishedSource:
    source = _ast_source(path, hf_ast_to_ours(sd), overrides, "ast-hf", hf_config)
    if hf_config is not None:
        source.config_file = path / "config.json"
        source.labels = labels_from_hf_config(hf_config, str(source.config_file))
        source.labels_from = "config.json id2label" if source.labels else None
    preprocessor = path / "preprocessor_config.json" if path.is_dir() else None
    if preprocessor is not None and preprocessor.is_file():
        try:
            settings = json.loads(preprocessor.read_text())
        except json.JSONDecodeError as error:
            raise WeightsError(f"{preprocessor}: not valid JSON ({error}); download the model folder again") from None
        if "sampling_rate" in settings:
            source.front_end["sample_rate"] = int(settings["sampling_rate"])
        if settings.get("do_normalize", True) and "mean" in settings and "std" in settings:
            source.normalization = {"mean": float(settings["mean"]), "std": float(settings["std"]), "divisor": 2.0}
            source.normalization_from = f"{preprocessor.name} of the source (mean, std; divisor 2 as the AST)"
            return source
    _published_normalization(source, "audioset", 2.0, "AST")
    return source


def _ast_official(path: Path, sd: StateDict, hf_config: dict | None, overrides: dict[str, Any]) -> PublishedSource:
    source = _ast_source(path, official_ast_to_ours(sd), overrides, "ast-official", None)
    _published_normalization(source, "audioset", 2.0, "AST")
    return source


def _psla(path: Path, sd: StateDict, hf_config: dict | None, overrides: dict[str, Any]) -> PublishedSource:
    plain = strip_prefix(strip_prefix(sd, "module."), "effnet.")
    blocks = len({int(m.group(1)) for k in plain if (m := re.match(r"_blocks\.(\d+)\.", k))})
    head = plain.get("_conv_head.weight")
    attention = strip_prefix(sd, "module.")
    heads = sum(1 for k in attention if re.fullmatch(r"attention\.att\.\d+\.weight", k))
    single = "attention.att.weight" in attention
    if head is None or (blocks, int(head.shape[0])) not in PSLA_VARIANTS:
        raise WeightsError(f"{path}: a PSLA EfficientNet with {blocks} blocks is not one of B0..B7")
    if not heads and not single:
        raise WeightsError(f"{path}: the PSLA checkpoint has no attention head (mean pooling), so it has no "
                           "classifier to teach with; use an attention-head checkpoint")
    first = attention["attention.att.0.weight" if heads else "attention.att.weight"]
    config = {"arch": "cnn", "variant": f"tf_efficientnet_b{PSLA_VARIANTS[(blocks, int(head.shape[0]))]}",
              "pooling": "attention", "heads": heads or 1, **{k: v for k, v in overrides.items() if k != "arch"}}
    source = PublishedSource(path, path, "psla", config, int(first.shape[0]), front_end=dict(AST_FRONT_END),
                             divisor=1.0)
    _published_normalization(source, "psla-audioset", 1.0, "PSLA")
    return source


def _our_checkpoint(path: Path, overrides: dict[str, Any]) -> PublishedSource:
    from cmkd_pipe.pipeline.models.checkpoint import read_checkpoint

    meta = read_checkpoint(path)
    front_end = {k: v for k, v in meta["feature_config"].items() if k != "target_frames"}
    config = {**meta["model_config"], **{k: v for k, v in overrides.items() if k != "arch"}}
    norm = meta["normalization"]
    return PublishedSource(path, path, "checkpoint", config, int(meta["n_classes"]), [dict(r) for r in meta["vocabulary"]],
                           "the checkpoint's vocabulary", front_end, dict(norm), "the checkpoint's own normalisation",
                           float(norm.get("divisor", 2.0)))


_DESCRIBERS = {"ast-hf": _ast_hf, "ast-official": _ast_official, "psla": _psla}

