"""Run independent chunk tasks: on a Dask LocalCluster by default, on an existing cluster by address, or
one after another in this process (`scheduler="synchronous"`: tiny corpora, debugging, tests).

GPU tasks ask for one unit of the worker resource GPU, so a worker runs one at a time whatever its thread
count; GPU workers declare it (`dask worker ADDRESS --resources GPU=1`, one per GPU, docs/CLUSTER.md), and
a LocalCluster started for GPU tasks has one worker per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

SYNCHRONOUS = "synchronous"  # the `scheduler` value that runs every task in the calling process
GPU = "GPU"  # the worker resource a GPU task asks one unit of


@dataclass
class TaskFailure:
    item: Any
    error: str


class StageTasksFailed(RuntimeError):
    """Some chunk tasks failed; the others are finished and a rerun redoes only these."""

    def __init__(self, what: str, failures: list[TaskFailure]) -> None:
        self.failures = failures
        first = failures[0].error.strip().splitlines()[-1] if failures[0].error.strip() else "unknown error"
        super().__init__(f"{what}: {len(failures)} task(s) failed (first: {_describe(failures[0].item)}: "
                         f"{first}); fix the cause and rerun the same command: finished chunks are kept")


def _describe(item: Any) -> str:
    """A short name for a task in messages: `chunk N` for chunk tasks (their repr lists every clip)."""
    index = getattr(item, "index", None)
    return f"chunk {index}" if isinstance(index, int) else repr(item)[:200]


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None,
                threads_per_worker: int = 1, gpus: Sequence[int] | None = None) -> Iterator[Any]:
    """A distributed Client: to `scheduler` (an address like tcp://host:8786) or a new LocalCluster (with
    `gpus`, one worker per entry, pinned to that GPU)."""
    from distributed import Client

    if scheduler:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    workers = n_workers or os.cpu_count() or 1
    with local_cluster(workers, threads_per_worker, gpus=gpus) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def local_cluster(n_workers: int, threads_per_worker: int = 1, *, resources: dict[str, float] | None = None,
                  gpus: Sequence[int] | None = None) -> Iterator[Any]:
    """A LocalCluster of `n_workers` processes, each declaring `resources`; with `gpus` (indices among the
    GPUs this process sees), one worker per entry instead, seeing only that GPU (CUDA_VISIBLE_DEVICES, so
    its `cuda` is that device) and declaring one GPU. Its workers run torch at full speed: distributed
    sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it spawns, which makes glibc return memory to the
    system so often that a torch forward runs 2.3-3x slower; it is left out here. (A nanny also writes it
    into its parent's environment, so an earlier cluster of this process may have left it there: it is
    lifted while the workers start.)"""
    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    inherited = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            if gpus is None:
                cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR, resources=resources)
            else:
                options = {"host": "127.0.0.1", "nthreads": threads_per_worker, "dashboard": False,
                           "silence_logs": logging.ERROR, "resources": {**(resources or {}), GPU: 1}}
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # this process's GPUs, if restricted
                devices = visible.split(",") if visible else [str(gpu) for gpu in range(max(gpus) + 1)]
                workers = {f"gpu{gpu}-{k}": {"cls": Nanny, "options": {
                    **options, "env": {"CUDA_VISIBLE_DEVICES": devices[gpu].strip()}}} for k, gpu in enumerate(gpus)}
                scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False}}
                cluster = SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)
            with cluster:
                yield cluster
    finally:
        if inherited is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = inherited


def run_tasks(fn: Callable[[Any], Any], items: Sequence[Any], *, scheduler: str | None = None,
              n_workers: int | None = None, gpus: Sequence[int] | None = None, desc: str = "tasks",
              progress: bool = True, on_result: Callable[[Any], None] | None = None) -> list[Any]:
    """Run `fn(item)` for every item; return results in completion order.

    `scheduler`: None starts a LocalCluster of `n_workers` processes, an address (tcp://host:8786) uses
    that cluster, "synchronous" runs the tasks in order in this process (no workers, no retries).
    `gpus` (GPU tasks): every task asks for one GPU resource unit; a LocalCluster started here has one
    worker per entry, pinned to that GPU; a cluster by address needs workers declaring the resource.
    Every task runs even if some fail; failures are raised together at the end as StageTasksFailed.
    On Dask a task whose worker dies is retried on another worker (Dask reschedules it).
    """
    if not items:
        return []
    results, failures = [], []
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="chunk")
    for ok, item, value in _outcomes(fn, items, scheduler, n_workers, gpus):
        if ok:
            results.append(value)
            if on_result:
                on_result(value)
        else:
            failures.append(TaskFailure(item, value))
        bar.update(1)
    bar.close()
    if failures:
        raise StageTasksFailed(desc, failures)
    return results


def _outcomes(fn: Callable[[Any], Any], items: Sequence[Any], scheduler: str | None,
              n_workers: int | None, gpus: Sequence[int] | None) -> Iterator[tuple[bool, Any, Any]]:
    """(ok, item, result or traceback) of every task, in completion order."""
    if scheduler == SYNCHRONOUS:
        with _torch_threads_restored():
            for item in items:
                yield _guarded(fn, item)
        return
    from distributed import as_completed

    resources = None if gpus is None else {GPU: 1}
    with dask_client(scheduler, n_workers, gpus=gpus) as client:
        if resources:
            _require_resource(client, GPU, scheduler)
        futures = client.map(_guarded, [fn] * len(items), list(items), pure=False, retries=2, resources=resources)
        for future in as_completed(futures):
            yield future.result()


def _require_resource(client: Any, name: str, scheduler: str | None) -> None:
    """Refuse a cluster whose workers all lack `name` (the tasks would wait forever); a cluster with no
    worker yet is left to wait for its workers, as for any task."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if workers and not any(worker.get("resources", {}).get(name, 0) >= 1 for worker in workers):
        raise ValueError(f"scheduler {scheduler}: no worker declares the {name} resource; start one worker per "
                         f"GPU with `CUDA_VISIBLE_DEVICES=K dask worker {scheduler} --nthreads 1 --resources "
                         f"{name}=1` (docs/CLUSTER.md), or pass --device cpu")


@contextlib.contextmanager
def _torch_threads_restored() -> Iterator[None]:
    """Tasks pin torch to one thread, as a worker process of the one-thread-per-worker cluster should;
    run in the caller's process, they give its own thread count back afterwards."""
    torch = sys.modules.get("torch")  # the stages that run tasks have it loaded
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _guarded(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any, Any]:
    """Run a task and turn an exception into data, so one bad chunk does not stop the others."""
    try:
        return True, item, fn(item)
    except Exception:  # reported to the driver with its traceback
        return False, item, traceback.format_exc()
