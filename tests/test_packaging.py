"""cmkd-pipe installs under one import name: the folders pipeline/, stages/, cli/ and data_manifests/ become
cmkd_pipe.pipeline, cmkd_pipe.stages, cmkd_pipe.cli and cmkd_pipe.data_manifests, so a user's own
`pipeline.py` (or another distribution's `cli` package) cannot shadow them, and we shadow nothing.

Fast: pyproject.toml lists every folder; no code imports the old top-level names; a checkout works with
PYTHONPATH alone; the wheel holds only cmkd_pipe/ and works in a fresh venv run from a folder holding a
`pipeline.py` of its own (8-15 s). Slow: the same for an editable install (`make install`).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "cmkd_pipe"
FOLDERS = ("pipeline", "stages", "cli", "data_manifests")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Run in a folder holding the user's pipeline.py: imports the API and a stage, then the user's file by its
# name, and reports where each came from. `import pipeline` is spelt with importlib on purpose: it is the
# user's module here, not ours.
PROBE = "; ".join([
    "import importlib, importlib.util, json, sys",
    "from cmkd_pipe.stages.train import train",
    "from cmkd_pipe import load_model",
    "user = importlib.import_module('pipeline')",
    "ours = sys.modules['cmkd_pipe.stages.train']",
    "print(json.dumps({'user': getattr(user, 'MARK', None), 'user_file': user.__file__, 'ours': ours.__file__,"
    " 'top_level': [getattr(importlib.util.find_spec(n), 'origin', None) for n in ('stages', 'cli', 'data_manifests')],"
    " 'load_model': callable(load_model) and callable(train)}))",
])


def package_folders() -> dict[str, Path]:
    """cmkd_pipe.<dotted folder> -> folder, for every folder of the four trees (data folders too)."""
    found = {NAMESPACE: REPO / NAMESPACE}
    for top in FOLDERS:
        for folder in [REPO / top, *sorted(p for p in (REPO / top).rglob("*") if p.is_dir())]:
            if "__pycache__" not in folder.parts:
                found[".".join([NAMESPACE, *folder.relative_to(REPO).parts])] = folder
    return found


def test_pyproject_maps_every_folder_under_the_namespace() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert setuptools["package-dir"] == {NAMESPACE: NAMESPACE, **{f"{NAMESPACE}.{top}": top for top in FOLDERS}}
    missing = sorted(set(package_folders()) - set(setuptools["packages"]))
    assert not missing, f"pyproject.toml [tool.setuptools] packages: add {missing}"
    assert sorted(setuptools["packages"]) == sorted(package_folders())
    assert PYPROJECT["project"]["scripts"] == {"cmkd-pipe": f"{NAMESPACE}.cli.app:main"}


def old_style_references(path: Path) -> list[str]:
    """Absolute imports of a top-level pipeline/stages/cli/data_manifests, and strings naming one of their
    modules ("pipeline.models.cnn", "cli.app") without the namespace."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.split(".")[0] in FOLDERS:
            parts = node.value.split(".")
            is_module = (REPO.joinpath(*parts).with_suffix(".py").is_file() or (REPO.joinpath(*parts) / "__init__.py").is_file())
            names = [node.value] if len(parts) > 1 and is_module else []
        else:
            continue
        found += [f"{os.path.relpath(path, REPO)}:{node.lineno}: {name}" for name in names if name.split(".")[0] in FOLDERS]
    return found


def test_code_reaches_our_packages_only_through_the_namespace() -> None:
    files = [p for top in (*FOLDERS, NAMESPACE, "tests", "benchmarks") for p in sorted((REPO / top).rglob("*.py"))]
    assert REPO / "cli" / "app.py" in files and len(files) > 50
    wrong = [line for path in files for line in old_style_references(path)]
    assert not wrong, "name these through cmkd_pipe (rerun rewrite_imports.py):\n" + "\n".join(wrong)


def test_the_scan_sees_an_old_style_import_and_module_string(tmp_path: Path) -> None:
    # Old names spelt with join, so neither the scan nor rewrite_imports.py takes this file for one.
    old_import, old_module = ".".join(["stages", "train"]), ".".join(["pipeline", "models", "cnn"])
    sample = tmp_path / "old_style.py"
    sample.write_text(f"import {old_import}\nfrom cli import app\nWHERE = {old_module!r}\nFILE = 'pipeline.py'\n"
                      "from cmkd_pipe.cli import app\n")
    assert [line.split(": ")[1] for line in old_style_references(sample)] == [old_import, "cli", old_module]


def write_user_folder(root: Path) -> Path:
    """A working folder with a user's own pipeline.py in it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.py").write_text('MARK = "user"\n')
    return root


def test_a_checkout_imports_the_namespace_beside_a_users_pipeline_py(tmp_path: Path) -> None:
    """PYTHONPATH=<checkout> (how tests, Dask workers and torchrun ranks run) reaches cmkd_pipe.* in the
    repository's folders, while a pipeline.py in the working folder stays the user's."""
    probe = ("import importlib, json; import cmkd_pipe.cli.common, cmkd_pipe.data_manifests.manifest as m; "
             "user = importlib.import_module('pipeline'); print(json.dumps([user.MARK, m.__file__]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=write_user_folder(tmp_path), capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["user", str(REPO / "data_manifests" / "manifest.py")]


# --- the wheel and an editable install, each in a fresh venv ----------------------------------------------------

def build_tree(tmp_path: Path) -> Path:
    """A copy of what the build reads (pyproject.toml, README.md, the package folders), so building writes
    nothing into the checkout."""
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(REPO / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tree


def fresh_venv(path: Path) -> tuple[Path, Path]:
    """A new venv that sees this environment's packages (torch, ...) but not its cmkd-pipe: its python and
    its site-packages.

    `python -m venv --system-site-packages` from a venv's python reaches the base interpreter's
    site-packages, not the venv's, so a .pth file points at ours instead (its own .pth files, e.g. an
    editable cmkd-pipe, are not run)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python, Path(purelib)


def pip_install(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
                           "--ignore-installed", "--quiet", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def run_probe(python: Path, cwd: Path) -> dict:
    done = subprocess.run([str(python), "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_a_users_pipeline_py_stays_theirs(python: Path, tmp_path: Path, installed: Path) -> None:
    """From a folder with a pipeline.py: our stage loads from `installed`, `pipeline` is the user's file, and
    no top-level stages/cli/data_manifests comes from `installed`; `import pipeline` fails elsewhere;
    the cmkd-pipe command runs."""
    user_folder = write_user_folder(tmp_path / "work")
    seen = run_probe(python, user_folder)
    assert seen["user"] == "user" and seen["user_file"] == str(user_folder / "pipeline.py")
    assert Path(seen["ours"]).is_relative_to(installed) and seen["load_model"], seen
    assert not [origin for origin in seen["top_level"] if origin and Path(origin).is_relative_to(installed)], seen
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([str(python), "-c", "import pipeline"], cwd=empty, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, timeout=120)
    assert done.returncode == 1 and "No module named 'pipeline'" in done.stderr, done.stderr
    cli = subprocess.run([str(python.parent / "cmkd-pipe"), "--help"], cwd=empty, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": "", "COLUMNS": "200"}, timeout=120)
    assert cli.returncode == 0 and "Usage: cmkd-pipe" in cli.stdout and "train-student" in cli.stdout, cli.stderr


def test_the_wheel_installs_only_cmkd_pipe_and_works_beside_a_users_pipeline_py(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="69", reason="building the wheel offline needs setuptools in this venv")
    tree = build_tree(tmp_path)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
                            "--no-index", "--quiet", "-w", str(tmp_path / "dist")], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {NAMESPACE, f"{NAMESPACE}-{PYPROJECT['project']['version']}.dist-info"}
    shipped = {f"{package.replace('.', '/')}/{path.name}" for package, folder in package_folders().items()
               for path in folder.iterdir() if path.suffix in (".py", ".yaml")}
    assert not shipped - set(names), f"missing from the wheel: {sorted(shipped - set(names))}"
    assert "cmkd_pipe/pipeline/training/presets/demo.yaml" in names and "cmkd_pipe/stages/train.py" in names

    python, site_packages = fresh_venv(tmp_path / "venv")
    pip_install(python, str(wheel))
    assert sorted(p.name for p in site_packages.iterdir() if not p.name.endswith(".pth")) == \
        sorted({name.split("/")[0] for name in names})
    assert_a_users_pipeline_py_stays_theirs(python, tmp_path, site_packages)


@pytest.mark.slow
def test_an_editable_install_maps_the_folders_and_exposes_no_top_level_pipeline(tmp_path: Path) -> None:
    """`make install` (pip install -e): the checkout's folders import as cmkd_pipe.*, and `import pipeline`
    fails outside the checkout."""
    pytest.importorskip("setuptools", minversion="69", reason="an offline editable install needs setuptools in this venv")
    tree = build_tree(tmp_path)
    python, _ = fresh_venv(tmp_path / "venv")
    pip_install(python, "--editable", str(tree))
    assert_a_users_pipeline_py_stays_theirs(python, tmp_path, tree)
