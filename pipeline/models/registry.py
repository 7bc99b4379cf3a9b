"""Model families: each family registers itself beside its definition; callers look names up.

A family is one kind of model the pipeline trains, teaches and distils (the CNN, the AST, ...). It
declares its name (the key of its per-family preset sections), a display name for reports, a typed
options dataclass (defaults and a one-line doc per field; its `arch` field names the architecture),
a builder, the weight formats `pipeline.models.weights` may import into it, and the arch names it
owns (fnmatch patterns: `timm:?*` makes every `timm:NAME` a CNN). Register one with the decorator, or,
as the built-ins do in their torch-free `*_options.py` modules, with a lazy builder:

    register_family("cnn", display_name="CNN (EfficientNet)", config=CNNConfig, archs=("cnn", "timm:?*"))(
        lazy_builder("pipeline.models.cnn", "build_cnn"))

The built-in families live in BUILTIN_MODULES. Modules named in the environment variable
CMKD_PIPE_PLUGINS (comma-separated, e.g. `CMKD_PIPE_PLUGINS=mylab.passt,mylab.panns`) are imported after
them, so a family defined outside the package also exists in subprocesses (torchrun, Dask, stages).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# their order is the families' order; each declares its family without importing torch (the model module
# is imported by the family's lazy builder when a model is first built)
BUILTIN_MODULES = ("cmkd_pipe.pipeline.models.cnn_options", "cmkd_pipe.pipeline.models.ast_options")
PLUGINS_ENV = "CMKD_PIPE_PLUGINS"

Builder = Callable[[Any, int, int, int], Any]  # (options, n_classes, n_mels, n_frames) -> nn.Module


@dataclass(frozen=True)
class ModelFamily:
    """One registered model family (see the module docstring)."""

    name: str  # preset key (model.<name>, optim.lr.<name>) and --model value
    display_name: str  # in reports, e.g. "CNN (EfficientNet)"
    config: type  # frozen dataclass of the model options, with an `arch` field
    build: Builder  # (config instance, n_classes, n_mels, n_frames) -> nn.Module
    weight_formats: tuple[str, ...] = ()  # pipeline.models.weights formats it imports; "native" always
    archs: tuple[str, ...] = ()  # fnmatch patterns of the arch names it owns
    imagenet_format: str | None = None  # weights format of its timm ImageNet weights (None: none)
    channels_last: bool = False  # prefers channels_last memory (convolutions)

    def owns(self, arch: Any) -> bool:
        return isinstance(arch, str) and any(fnmatch.fnmatchcase(arch, pattern) for pattern in self.archs)

    def default_config(self, arch: str | None = None) -> Any:
        """The options dataclass with every default (for `arch`, default: the family's own name)."""
        return self.config(arch=arch or self.name)


_FAMILIES: dict[str, ModelFamily] = {}
_loaded = False


def register_family(name: str, *, display_name: str, config: type, weight_formats: tuple[str, ...] = (),
                    archs: tuple[str, ...] | None = None, imagenet_format: str | None = None,
                    channels_last: bool = False) -> Callable[[Builder], Builder]:
    """Decorator registering the decorated builder as the family `name`; returns the builder unchanged."""
    if not dataclasses.is_dataclass(config) or "arch" not in {f.name for f in dataclasses.fields(config)}:
        raise TypeError(f"model family {name!r}: config must be a dataclass with an 'arch' field")

    def decorate(build: Builder) -> Builder:
        family = ModelFamily(name, display_name, config, build, tuple(weight_formats), tuple(archs or (name,)),
                             imagenet_format, channels_last)
        old = _FAMILIES.get(name)
        if old is not None and _origin(old.build) != _origin(build):
            raise ValueError(f"model family {name!r} is registered twice ({_origin(old.build)}, {_origin(build)})")
        _FAMILIES[name] = family
        rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}  # built-ins first, in their order
        ordered = sorted(_FAMILIES.values(), key=lambda f: rank.get(f.config.__module__, len(rank)))
        _FAMILIES.clear()
        _FAMILIES.update((f.name, f) for f in ordered)
        return build

    return decorate


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`; ValueError listing the registered ones otherwise."""
    _load()
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered: {', '.join(_FAMILIES)} "
                         f"(a family outside the package is loaded with {PLUGINS_ENV}=module)")
    return _FAMILIES[name]


def family_names() -> list[str]:
    """Names of every registered family, built-in ones first."""
    _load()
    return list(_FAMILIES)


def family_of_arch(arch: Any) -> ModelFamily:
    """The family owning the architecture name `arch` (a family name such as 'cnn', or 'timm:resnet18')."""
    _load()
    for family in _FAMILIES.values():
        if family.owns(arch):
            return family
    known = ", ".join(p.replace("?*", "NAME") for f in _FAMILIES.values() for p in f.archs)
    raise ValueError(f"model config: unknown arch {arch!r}; use one of {known} (e.g. timm:resnet18)")


def lazy_builder(module: str, name: str) -> Builder:
    """A builder that imports `module` (the family's torch code) on its first call and calls its `name`, so
    declaring a family, checking configs and planning never import torch."""

    def build(config: Any, n_classes: int, n_mels: int, n_frames: int) -> Any:
        return getattr(importlib.import_module(module), name)(config, n_classes, n_mels, n_frames)

    build.__qualname__ = f"lazy:{module}.{name}"
    return build


def family_of_model(model: Any) -> ModelFamily:
    """The family of a built model, from its `.config['arch']`."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError(f"{type(model).__name__} has no .config['arch']; build models with build_model")
    return family_of_arch(config["arch"])


def configured_families(config: dict[str, Any]) -> list[str]:
    """The families a resolved training config declares (the keys of its `model` section), in order."""
    return list(config["model"])


def _origin(build: Builder) -> str:
    return f"{build.__module__}.{build.__qualname__}"


def _load() -> None:
    """Import the built-in family modules, then the plugin modules named in CMKD_PIPE_PLUGINS."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    plugins = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for module in (*BUILTIN_MODULES, *plugins):
        try:
            importlib.import_module(module)
        except ImportError as error:
            _loaded = False
            raise ValueError(f"{PLUGINS_ENV}: cannot import model family module {module!r} ({error})") from None
