"""`cmkd-pipe` starts light: help, planning and status never import torch, Dask or Zarr (torch alone costs
seconds per call, and Make calls `cmkd-pipe plan` on every `make` run). A preset's `model.<family>` sections
are checked against the families' typed configs, declared without torch (pipeline/models/*_options.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "distributed", "zarr")

# Runs the Typer app in a fresh interpreter (after importing PRELOAD, when set) and prints which heavy
# modules got imported.
PROBE = """
import importlib, json, os, sys
if os.environ.get("PRELOAD"):
    importlib.import_module(os.environ["PRELOAD"])
from cmkd_pipe.cli.app import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps({name: name in sys.modules for name in %r}))
""" % (HEAVY,)


def loaded_modules(args: list[str], cwd: Path, preload: str = "") -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PRELOAD": preload}, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    ["--help"],
    ["manifest", "--help"],
    ["plan", "--out", "plan.mk", "--run-dir", "run", "--data-root", "data"],
    ["status", "--run-dir", "run", "--data-root", "data"],
    ["print-config", "--preset", "fsd50k", "--model", "ast"],
], ids=lambda args: args[0])
def test_command_does_not_import_torch_or_dask(args: list[str], tmp_path: Path) -> None:
    loaded = loaded_modules(args, tmp_path)
    assert not any(loaded.values()), f"`cmkd-pipe {' '.join(args)}` imported {[m for m, on in loaded.items() if on]}"


def test_the_probe_sees_an_import(tmp_path: Path) -> None:
    """The probe is not blind: a heavy module imported in the same interpreter is reported."""
    assert loaded_modules(["--help"], tmp_path, preload="zarr") == {"torch": False, "distributed": False,
                                                                    "zarr": True}


@pytest.mark.parametrize("kind", ["pth", "safetensors", "checkpoint"])
def test_planning_with_a_published_teacher_reads_its_family_without_torch(kind: str, tmp_path: Path) -> None:
    """`plan --teacher FILE` learns the teacher's family from its key names (a torch zip's pickle read with
    stand-ins, a safetensors header, our checkpoint's model_config), so Make's planning stays light."""
    import torch
    from safetensors.torch import save_file

    keys = {"module.v.patch_embed.proj.weight": torch.zeros(1), "module.v.pos_embed": torch.zeros(1)}
    path = tmp_path / f"teacher.{'safetensors' if kind == 'safetensors' else 'pth'}"
    if kind == "safetensors":
        save_file(keys, path)
    elif kind == "checkpoint":
        torch.save({"format": "cmkd-pipe/checkpoint/1", "model_config": {"arch": "ast"}, "state_dict": keys}, path)
    else:
        torch.save(keys, path)
    loaded = loaded_modules(["plan", "--out", "plan.mk", "--dataset", "fsd50k", "--run-dir", "run", "--data-root",
                             "data", "--teacher", str(path)], tmp_path)
    assert not any(loaded.values()), loaded
    assert "import-ast/stage.json:" in (tmp_path / "plan.mk").read_text()
