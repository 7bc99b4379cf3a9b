"""cmkd-pipe from Python (notebooks): the stages as functions and trained models as taggers.

    from cmkd_pipe import load_model
    model = load_model("runs/demo/main/train-cnn/final.pt")   # or an exported ONNX folder
    clip = model.tag("street.wav")                             # any length, any sample rate
    clip.top(5)                                                # [{id, name, score}, ...]
    clip.timeline(3)                                           # per window: {start_s, end_s, top}

Stage functions: `features`, `train`, `teacher_logits`, `train_student`, `report`, `tag`, `export`.

Everything installs under this one name: the repository's folders pipeline/, stages/, cli/ and
data_manifests/ are the subpackages cmkd_pipe.pipeline, cmkd_pipe.stages, cmkd_pipe.cli and
cmkd_pipe.data_manifests (pyproject.toml maps them). The API names above load on first use, so importing
a light subpackage (the CLI's planning, the model registry) does not pull in torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

SUBPACKAGES = ("pipeline", "stages", "cli", "data_manifests")

__all__ = ["ClipTags", "FeatureConfig", "Tagger", "export", "features", "load_model", "report", "tag", "teacher_logits", "train",
           "train_student"]

if TYPE_CHECKING:
    from cmkd_pipe.api import (ClipTags, FeatureConfig, Tagger, export, features, load_model, report, tag, teacher_logits,
                               train, train_student)


def _source_checkout_root() -> Path | None:
    """The repository root when running from a checkout (folders beside this package), else None.

    An installed wheel holds the subpackages inside this folder; a checkout (PYTHONPATH=repo, or an
    editable install) holds them beside it, so the root joins this package's search path."""
    here = Path(__file__).resolve().parent
    if (here / SUBPACKAGES[0]).is_dir():
        return None
    root = here.parent
    return root if all((root / name / "__init__.py").is_file() for name in SUBPACKAGES) else None


if (_root := _source_checkout_root()) is not None and str(_root) not in __path__:
    __path__.append(str(_root))


def __getattr__(name: str) -> Any:
    """The API names (`load_model`, `train`, ...) import cmkd_pipe.api, and with it torch, on first use."""
    if name in __all__:
        value = getattr(importlib.import_module("cmkd_pipe.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cmkd_pipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
