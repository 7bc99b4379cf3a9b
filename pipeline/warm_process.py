"""Python processes started warm: `python ARGS…` run in a process forked from a server that has already
imported the heavy modules (torch, timm, …), instead of a new interpreter that imports them again.

A new interpreter spends ~3 s on imports before a stage does any work, and the demo runs 30 stages. The
server is multiprocessing's forkserver, started by this process's first `start` with the modules named in
`preload` imported (none may start a thread at import: the server forks). Each process is a fresh fork,
so one process's state never reaches another. `start(argv, env, preload)` behaves like
`subprocess.Popen([sys.executable, *argv], env=env, stdout=PIPE, stderr=STDOUT)`: the same `-m module` /
`-c script` arguments, its environment, stdout and stderr into one pipe, the exit code of `sys.exit`,
minus the signal number when a signal killed it. Settings read at import from the environment are the
server's; the thread count (OMP_NUM_THREADS, read by the OpenMP runtime at import) is applied again.
"""
from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import runpy
import sys
import threading
from multiprocessing.connection import Connection

_lock = threading.Lock()
_context: multiprocessing.context.BaseContext | None = None


def _forkserver(preload: list[str]) -> multiprocessing.context.BaseContext:
    """The forkserver context; its server imports `preload` when it starts (the first call's list counts)."""
    global _context
    with _lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(preload)
            _context = context
    return _context


class WarmProcess:
    """A started stage: `stdout` (its stdout and stderr, bytes) and `wait()` (its exit code), as Popen has."""

    def __init__(self, process: multiprocessing.process.BaseProcess, stdout: io.BufferedReader) -> None:
        self._process = process
        self.stdout = stdout

    def wait(self) -> int:
        self._process.join()
        self.stdout.close()
        return self._process.exitcode


def start(argv: list[str], env: dict[str, str], preload: list[str]) -> WarmProcess:
    """Run `python *argv` (argv: `-m MODULE ARGS…` or `-c SCRIPT ARGS…`) with `env` in a warm process."""
    if len(argv) < 2 or argv[0] not in ("-m", "-c"):
        raise ValueError(f"a warm process runs `-m MODULE …` or `-c SCRIPT …`, not {argv}")
    context = _forkserver(preload)
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_run, args=(argv, env, writer), name=" ".join(argv[:2]))
    process.start()
    writer.close()
    stdout = os.fdopen(os.dup(reader.fileno()), "rb")
    reader.close()
    return WarmProcess(process, stdout)


def _run(argv: list[str], env: dict[str, str], output: Connection) -> None:
    """In the forked process: become `python *argv` with `env`, writing to `output`."""
    for stream in (1, 2):
        os.dup2(output.fileno(), stream)
    output.close()
    os.environ.clear()
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    option, target, *args = argv
    try:
        if option == "-m":
            sys.argv = [target, *args]
            # as in a new interpreter, the module is not imported before it runs as __main__ (multiprocessing
            # re-imports the parent's main script here, and the `cmkd-pipe` script imports cmkd_pipe.cli.app)
            sys.modules.pop(target, None)
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *args]
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    finally:
        atexit._run_exitfuncs()  # a forked process skips them; a stage may rely on them as in a new interpreter
