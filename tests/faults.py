"""Fault injection for the tests: kill a stage at random moments and rerun it, fill a disk, drop root.

`kill_and_rerun` runs a command in its own process group (so a Dask LocalCluster started by the
command dies with it; torchrun starts its ranks in sessions of their own, which only `kill_tree`
reaches), SIGKILLs the whole group at a moment drawn from a seeded RNG, checks
what the killed run left behind, and reruns the same command until one run completes:

    outcome = kill_and_rerun(cli("features", ...), seed=1, kills=2, log_dir=tmp_path,
                             trigger=after_chunks(store, 1, 6),
                             after_kill=lambda attempt: check_store(store))

Triggers decide when to kill, from the seeded RNG and the run's own progress, so every kill lands in
the middle of the work whatever the machine's speed: `after_chunks(store, fewest, most)` once a drawn
number of chunks more are done; `after_change(value, low, high)` U(low, high) seconds after `value()`
changes (e.g. the resume checkpoint was saved for the first time in this run).
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

Trigger = Callable[[float], bool]  # seconds since the run started -> kill now?
TriggerFactory = Callable[[random.Random], Trigger]  # called just before each run starts


def cli(*args: str) -> list[str]:
    """The `cmkd-pipe` command line with this interpreter."""
    return [sys.executable, "-m", "cmkd_pipe.cli.app", *args]


def stage_env(**extra: str) -> dict[str, str]:
    """The environment for stage subprocesses: one thread per process, the repository importable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


# ------------------------------------------------------------------------------- processes

def live_members(pgid: int) -> list[int]:
    """Pids of the processes of a process group that are not zombies (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def start(command: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """Start `command` as the leader of a new process group, stdout and stderr to `log`."""
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=cwd, env=env or stage_env(), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_group(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL a process group and wait until none of its members is alive."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + timeout
    while live_members(process.pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes survived SIGKILL of group {process.pid}: {live_members(process.pid)}")
        time.sleep(0.02)


def resume_position(state: Path) -> tuple[int, int] | None:
    """(epoch, sampler position within it) of a training resume state, or None while there is none yet."""
    import torch

    try:
        saved = torch.load(state, map_location="cpu", weights_only=False)
    except (FileNotFoundError, EOFError, RuntimeError):
        return None
    return saved["epoch"], saved["sampler"]["position"]


def assert_same_runs(ref: Path, res: Path) -> None:
    """Two training run folders hold bitwise the same models, training state (weights, optimiser moments),
    test metrics, predictions and per-epoch learning rates, test accuracies and training losses (a resumed
    epoch's loss is over the whole epoch, not only the steps after the resume)."""
    import json

    import numpy as np
    import torch

    def same_tensors(a: dict, b: dict, what: str) -> None:
        assert a.keys() == b.keys(), what
        for name in a:
            assert torch.equal(a[name], b[name]), f"{what}: {name}"

    def load(path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=False)

    for name in ("final.pt", "best.pt", "wa.pt"):
        same_tensors(load(ref / name)["state_dict"], load(res / name)["state_dict"], name)
    ref_state, res_state = load(ref / "checkpoints/last.pt"), load(res / "checkpoints/last.pt")
    same_tensors(ref_state["model"], res_state["model"], "last.pt model")
    same_tensors(ref_state["weight_average"]["sum"], res_state["weight_average"]["sum"], "last.pt weight average")
    for ref_moments, res_moments in zip(ref_state["optimizer"]["state"].values(),
                                        res_state["optimizer"]["state"].values()):
        same_tensors(ref_moments, res_moments, "last.pt optimiser state")
    assert ref_state["step"] == res_state["step"]
    ref_results, res_results = (json.loads((p / "results.json").read_text()) for p in (ref, res))
    for name in ("last", "best", "wa", "ensemble"):
        assert ref_results[name] == res_results[name], name
    assert np.array_equal(np.load(ref / "test_predictions.npz")["scores"],
                          np.load(res / "test_predictions.npz")["scores"])
    ref_rows, res_rows = ([json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]
                          for p in (ref, res))
    assert [(r["epoch"], r["lr"], r["test_accuracy"], r["train_loss"]) for r in ref_rows] == \
           [(r["epoch"], r["lr"], r["test_accuracy"], r["train_loss"]) for r in res_rows]


def descendants(pid: int) -> list[int]:
    """Pids of the live descendants of `pid`, whatever their process group (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL a process group and every descendant of its leader, also those that torchrun starts in
    sessions of their own (its ranks), and wait until none of them is alive."""
    pids = descendants(process.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    kill_group(process, timeout)
    deadline = time.monotonic() + timeout
    while alive := [pid for pid in pids if _running(pid)]:
        if time.monotonic() > deadline:
            raise AssertionError(f"processes survived SIGKILL: {alive}")
        time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


def run_to_end(command: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path = REPO,
               timeout: float = 300.0) -> float:
    """Run `command` uninterrupted (output to `log`); return its wall time; fail with the log's tail."""
    started = time.monotonic()
    process = start(command, log, env=env, cwd=cwd)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        raise AssertionError(f"{shlex.join(command)}: still running after {timeout:.0f} s:\n{tail(log)}") from None
    if code != 0:
        raise AssertionError(f"{shlex.join(command)} exited with {code}:\n{tail(log)}")
    return time.monotonic() - started


# -------------------------------------------------------------------------------- triggers

def _delayed(condition: Callable[[], bool], delay: float) -> Trigger:
    """Fire `delay` seconds after `condition()` first holds."""
    seen: list[float] = []

    def fire(elapsed: float) -> bool:
        if not seen and condition():
            seen.append(elapsed)
        return bool(seen) and elapsed - seen[0] >= delay
    return fire


def after_chunks(store: Path, fewest: int, most: int, jitter: float = 0.1) -> TriggerFactory:
    """Kill once k (drawn from fewest..most) more chunks of `store` are done in this run, then U(0, jitter) s
    later: the kill lands between or inside the next chunks, however fast the machine is."""
    def factory(rng: random.Random) -> Trigger:
        target = chunk_markers(store) + rng.randint(fewest, most)
        return _delayed(lambda: chunk_markers(store) >= target, rng.uniform(0.0, jitter))
    return factory


def after_change(value: Callable[[], Any], low: float, high: float) -> TriggerFactory:
    """Kill U(low, high) seconds after `value()` first differs from its value when the run started
    (e.g. the modification time of a resume checkpoint: the run is past its start-up)."""
    def factory(rng: random.Random) -> Trigger:
        baseline = value()
        return _delayed(lambda: value() != baseline, rng.uniform(low, high))
    return factory


def chunk_markers(store: Path) -> int:
    """Chunks marked done in a chunked store (each done marker is one chunk file; 0 is the fill value)."""
    folder = Path(store) / "chunk_done" / "c"
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def mtime_ns(path: Path) -> int:
    """Modification time of a file, 0 while it does not exist (progress of an atomically replaced file)."""
    try:
        return Path(path).stat().st_mtime_ns
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------------- harness

@dataclass
class Outcome:
    kill_times: list[float] = field(default_factory=list)  # seconds after its start each killed run died
    finished_early: bool = False  # a run completed before its kill moment came
    final_log: Path | None = None  # log of the run that completed


def kill_and_rerun(command: list[str], *, seed: int, kills: int, trigger: TriggerFactory, log_dir: Path,
                   after_kill: Callable[[int], None] | None = None, env: dict[str, str] | None = None,
                   cwd: Path = REPO, timeout: float = 300.0) -> Outcome:
    """Run `command` up to `kills` times, SIGKILLing each run's process group when its trigger fires and
    calling `after_kill(attempt)` on what it left; then run it to completion. A run that exits non-zero
    on its own fails the test (the harness injects kills, nothing else)."""
    rng = random.Random(seed)
    outcome = Outcome()
    log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(kills):
        fire = trigger(rng)
        log = log_dir / f"run-{attempt}.log"
        started = time.monotonic()
        process = start(command, log, env=env, cwd=cwd)
        try:
            while process.poll() is None and not fire(time.monotonic() - started):
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"run {attempt} neither finished nor was killed in {timeout:.0f} s:\n"
                                         f"{tail(log)}")
                time.sleep(0.005)
        finally:
            code = process.poll()
            kill_group(process)
        if code is not None:  # it ended before its kill moment
            if code != 0:
                raise AssertionError(f"run {attempt} failed on its own (exit {code}):\n{tail(log)}")
            outcome.finished_early, outcome.final_log = True, log
            return outcome
        outcome.kill_times.append(time.monotonic() - started)
        if after_kill is not None:
            after_kill(attempt)
    outcome.final_log = log_dir / "run-final.log"
    run_to_end(command, outcome.final_log, env=env, cwd=cwd, timeout=timeout)
    return outcome


# ------------------------------------------------------------------------ disk and rights

def without_permission_override(command: list[str]) -> list[str]:
    """`command` run so that file modes apply to it: as root, drop the capabilities that bypass them
    (setpriv, util-linux); otherwise unchanged."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        raise OSError("running as root and setpriv is missing: cannot make file modes apply")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--", *command]


def set_writable(root: Path, writable: bool) -> None:
    """chmod a tree: folders 755/555, files 644/444."""
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, 0o755 if writable else 0o555)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644 if writable else 0o444)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4M") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (needs root or CAP_SYS_ADMIN; raises OSError otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"cannot mount a tmpfs at {path}: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(folder: Path) -> Path:
    """Write a filler file in `folder` until its file system is full; return it (delete it to free space)."""
    filler = folder / "filler.bin"
    block = b"\0" * (64 * 1024)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as handle:  # the last partial page
        while handle.write(b"\0" * 512):
            pass
    return filler
