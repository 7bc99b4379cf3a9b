"""run_tasks keeps one contract on every scheduler: every task runs, failures are collected and raised
together at the end, on_result sees every success. Checked in process and on a real LocalCluster."""
from __future__ import annotations

from pathlib import Path

import pytest

from cmkd_pipe.pipeline.parallel import SYNCHRONOUS, StageTasksFailed, run_tasks


def square_unless_odd(item: tuple[str, int]) -> int:
    """Leaves a marker file (the task ran), then fails for odd numbers."""
    folder, number = item
    (Path(folder) / f"ran-{number}").touch()
    if number % 2:
        raise ValueError(f"odd number {number}")
    return number * number


@pytest.fixture(params=["synchronous", "cluster"])
def where(request) -> str:
    return SYNCHRONOUS if request.param == "synchronous" else request.getfixturevalue("dask_cluster")


def test_every_task_runs_and_results_reach_on_result(where: str, tmp_path: Path) -> None:
    seen = []
    results = run_tasks(square_unless_odd, [(str(tmp_path), n) for n in (0, 2, 4, 6)], scheduler=where,
                        progress=False, on_result=seen.append)
    assert sorted(results) == [0, 4, 16, 36] and sorted(seen) == sorted(results)


def test_failures_are_collected_after_every_task_ran(where: str, tmp_path: Path) -> None:
    seen = []
    with pytest.raises(StageTasksFailed, match=r"demo: 2 task\(s\) failed .*odd number") as caught:
        run_tasks(square_unless_odd, [(str(tmp_path), n) for n in range(5)], scheduler=where, desc="demo",
                  progress=False, on_result=seen.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ran-{n}" for n in range(5)]
    assert sorted(seen) == [0, 4, 16]
    assert sorted(f.item[1] for f in caught.value.failures) == [1, 3]
    assert all("ValueError: odd number" in f.error for f in caught.value.failures)


def test_no_items_start_nothing(tmp_path: Path) -> None:
    assert run_tasks(square_unless_odd, [], scheduler="tcp://127.0.0.1:1") == []  # no connection tried


def pin_one_thread(item: int) -> int:
    import torch  # here, not at the top: the cluster's workers import this module and need no torch

    torch.set_num_threads(1)  # as the feature and logits tasks do on a worker
    return torch.get_num_threads()


def test_synchronous_tasks_give_the_callers_torch_threads_back() -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_tasks(pin_one_thread, [0, 1], scheduler=SYNCHRONOUS, progress=False) == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def malloc_trim_setting(item: int) -> str | None:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_cluster_workers_do_not_get_distributeds_malloc_trim_setting(dask_cluster: str) -> None:
    """distributed's MALLOC_TRIM_THRESHOLD_=65536 slows a torch forward 2.3-3x; our clusters leave it out."""
    assert run_tasks(malloc_trim_setting, [0, 1], scheduler=dask_cluster, progress=False) == [None, None]


def busy_interval(item: int) -> tuple[int, float, float, str | None]:
    """(worker process, start, end, the GPUs it sees) of a task that holds its worker for 0.3 s."""
    import os
    import time

    start = time.monotonic()
    time.sleep(0.3)
    return os.getpid(), start, time.monotonic(), os.environ.get("CUDA_VISIBLE_DEVICES")


def overlaps_within_a_worker(results: list[tuple[int, float, float, str | None]]) -> bool:
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for pid, start, end, _ in results:
        by_worker.setdefault(pid, []).append((start, end))
    return any(later[0] < earlier[1] for spans in by_worker.values()
               for earlier, later in zip(sorted(spans), sorted(spans)[1:]))


def test_gpu_tasks_run_one_at_a_time_on_workers_declaring_the_resource() -> None:
    """Workers with two threads and one (fake) GPU: GPU tasks never share a worker, other tasks do."""
    from cmkd_pipe.pipeline.parallel import local_cluster

    with local_cluster(2, threads_per_worker=2, resources={"GPU": 1}) as cluster:
        address = cluster.scheduler_address
        gpu = run_tasks(busy_interval, list(range(6)), scheduler=address, gpus=[0], progress=False)
        plain = run_tasks(busy_interval, list(range(6)), scheduler=address, progress=False)
    assert len({pid for pid, *_ in gpu}) == 2 and not overlaps_within_a_worker(gpu)
    assert overlaps_within_a_worker(plain)


def test_a_cluster_started_for_gpu_tasks_pins_one_worker_per_gpu(monkeypatch) -> None:
    """GPU k of this process is the k-th of its CUDA_VISIBLE_DEVICES (here 5 and 7)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    results = run_tasks(busy_interval, list(range(6)), gpus=[0, 1], progress=False)
    seen = {pid: visible for pid, _, _, visible in results}
    assert sorted(seen.values()) == ["5", "7"] and not overlaps_within_a_worker(results)


def test_gpu_tasks_refuse_a_cluster_without_gpu_workers(dask_cluster: str) -> None:
    with pytest.raises(ValueError, match=rf"scheduler {dask_cluster}: no worker declares the GPU resource; start "
                                         r"one worker per GPU with `CUDA_VISIBLE_DEVICES=K dask worker"):
        run_tasks(busy_interval, [0], scheduler=dask_cluster, gpus=[0], progress=False)
