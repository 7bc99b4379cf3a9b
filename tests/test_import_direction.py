"""Imports go one way: cli → stages → pipeline → data_manifests (see docs/ARCHITECTURE.md).

A module may import from its own layer and from layers to its right, never leftward. Besides:
- a stage never imports another stage's module (stages/X.py reads stages/Y.py's outputs, not its code);
- inside pipeline/, the training engine sits on top: only pipeline/training/ imports pipeline.training.
Every import counts, function-local ones included, since they run as soon as the function does.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "cmkd_pipe"  # the folders install as cmkd_pipe.cli, cmkd_pipe.stages, ...
LAYERS = ("cli", "stages", "pipeline", "data_manifests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join([NAMESPACE, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def layer(module: str) -> str | None:
    """The layer of a project module (cmkd_pipe.stages.graph -> stages), None for anything else."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == NAMESPACE and parts[1] in LAYERS else None


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for layer in LAYERS for path in sorted((REPO / layer).rglob("*.py"))}


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that `path` (module `name`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from stages import graph` imports the module stages.graph
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {target for target in found if layer(target)}


def wrong_way(source: str, target: str) -> str | None:
    """Why the edge source → target breaks the rule, or None when it is allowed."""
    src_layer, dst_layer = layer(source), layer(target)
    if LAYERS.index(dst_layer) < LAYERS.index(src_layer):
        return f"{src_layer} may not import {dst_layer} (layers run {' → '.join(LAYERS)})"
    if src_layer == dst_layer == "stages" and source.count(".") > 1 and target.count(".") > 1 and source != target:
        return "a stage may not import another stage's module"
    in_training = lambda module: module == "cmkd_pipe.pipeline.training" or module.startswith("cmkd_pipe.pipeline.training.")
    if src_layer == "pipeline" and in_training(target) and not in_training(source):
        return "only pipeline/training may import cmkd_pipe.pipeline.training (the engine sits on top of pipeline)"
    return None


def import_edges() -> list[tuple[str, str]]:
    modules = project_modules()
    known = set(modules)
    return sorted((name, target) for name, path in modules.items()
                  for target in imported_modules(path, name, known) if target != name)


def test_the_walk_sees_top_level_and_function_local_imports() -> None:
    edges = set(import_edges())
    assert ("cmkd_pipe.cli.app", "cmkd_pipe.cli.common") in edges  # top level
    assert ("cmkd_pipe.cli.app", "cmkd_pipe.stages.graph") in edges  # inside a function, `from stages import graph`
    assert ("cmkd_pipe.stages.features", "cmkd_pipe.pipeline.parallel") in edges


def test_the_rule_flags_each_kind_of_wrong_way_edge() -> None:
    assert wrong_way("cmkd_pipe.pipeline.views", "cmkd_pipe.stages.train")
    assert wrong_way("cmkd_pipe.data_manifests.demo", "cmkd_pipe.pipeline.audio")
    assert wrong_way("cmkd_pipe.stages.cv", "cmkd_pipe.stages.train")
    assert wrong_way("cmkd_pipe.pipeline.views", "cmkd_pipe.pipeline.training.batches")
    assert wrong_way("cmkd_pipe.cli.app", "cmkd_pipe.stages.graph") is None
    assert wrong_way("cmkd_pipe.pipeline.training.engine", "cmkd_pipe.pipeline.views") is None
    assert wrong_way("cmkd_pipe.stages.graph", "cmkd_pipe.data_manifests.manifest") is None


def test_imports_go_one_way() -> None:
    wrong = [f"{source} → {target}: {why}" for source, target in import_edges()
             if (why := wrong_way(source, target))]
    assert not wrong, "wrong-way imports:\n" + "\n".join(wrong)
