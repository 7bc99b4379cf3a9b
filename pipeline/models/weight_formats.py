"""Which weights format (and so which model family) a file holds, from its key names alone, without torch.

Planning (`cmkd-pipe plan`/`status`, run on every `make`) must not import torch, yet a published teacher
given as `TEACHER=path` decides the stage graph's shape. So the key names are read here the light way:
a Hugging Face folder's config.json, a safetensors file's JSON header, or the pickle inside a torch zip
file, unpickled with stand-ins for torch's tensor classes (no tensor data is read). `detect_format` names
the format from the keys (the formats are described in pipeline.models.weights).
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cmkd_pipe.pipeline.models.registry import family_names, family_of_arch, get_family

CHECKPOINT_FORMAT = "cmkd-pipe/checkpoint/1"  # our own checkpoint file (pipeline.models.checkpoint.FORMAT)
HF_AST_MODEL_TYPE = "audio-spectrogram-transformer"


def detect_format(keys: Iterable[str]) -> str:
    """Name of the weights format from its key names (see pipeline.models.weights)."""
    keys = {key[len("module."):] if key.startswith("module.") else key for key in keys}
    if "embeddings.patch_embed.proj.weight" in keys:
        return "native-ast"
    if any(k.startswith("backbone.") for k in keys):
        return "native-cnn"
    if "v.patch_embed.proj.weight" in keys:
        return "ast-official"
    if any(k.startswith(("audio_spectrogram_transformer.", "embeddings.patch_embeddings.")) for k in keys):
        return "ast-hf"
    if "_conv_stem.weight" in keys or "effnet._conv_stem.weight" in keys:
        return "psla"
    if "patch_embed.proj.weight" in keys and "pos_embed" in keys:
        return "timm-vit"
    if any(k.endswith(("conv_stem.weight", "conv1.weight", "stem.conv.weight", "features.0.0.weight"))
           or ".conv" in k for k in keys):
        return "timm-cnn"
    return "unknown"


def family_of_weights(path: str | Path) -> str:
    """The model family whose importers read the weights at `path` (a file or a Hugging Face folder)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"teacher weights {path}: no such file or folder")
    if path.is_dir():
        config = _json(path / "config.json") if (path / "config.json").is_file() else {}
        if config.get("model_type") == HF_AST_MODEL_TYPE:
            return _family_of_format("ast-hf", path)
        raise ValueError(f"teacher weights {path}: a folder that is not a Hugging Face AST model (config.json "
                         f"model_type {config.get('model_type')!r}); give the model folder or a weights file")
    content = read_structure(path)
    if isinstance(content, dict) and content.get("format") == CHECKPOINT_FORMAT:
        return family_of_arch(content.get("model_config", {}).get("arch")).name
    if isinstance(content, dict):
        for key in ("state_dict", "model"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict):
        raise ValueError(f"teacher weights {path}: cannot read its key names without torch; give FAMILY=PATH "
                         f"(one of {', '.join(family_names())}) to say which family it is")
    return _family_of_format(detect_format(str(key) for key in content), path)


def _family_of_format(fmt: str, path: Path) -> str:
    for name in family_names():
        if fmt in get_family(name).weight_formats:
            return name
    raise ValueError(f"teacher weights {path}: unrecognised weight format ({fmt}); give an official AST, Hugging "
                     "Face AST, PSLA or cmkd-pipe file")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read as JSON ({error}); download the model folder again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_structure(path: str | Path) -> Any:
    """The file's top-level object with tensors replaced by stand-ins (safetensors: {key: None}), or None
    when it cannot be read so (a legacy torch file, not a weights file at all)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            with open(path, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return {key: None for key in header if key != "__metadata__"}
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl")
            with archive.open(member) as handle:
                return _KeysOnly(handle).load()
    except Exception:  # noqa: BLE001 - not a torch zip file (legacy format, text, ...): the caller says so
        return None


class _Stand:
    """What a torch object unpickles to here: accepts any construction, holds nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _KeysOnly(pickle.Unpickler):
    """Unpickles a torch.save archive's structure; torch classes and tensor storages become stand-ins."""

    SAFE = {("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        return _Stand

    def persistent_load(self, pid: Any) -> None:
        return None
