"""Independent fits on worker processes (training/parallel.py): order, processes, the automatic count."""

from __future__ import annotations

import os
import signal

import pytest

from training.parallel import PARALLEL_FROM, available_cpus, in_background, ordered_map, share_cores, workers_for


def _pid_and_square(x: int) -> tuple[int, int]:
    import time

    time.sleep(0.05 * (x % 3))  # finish out of order
    return os.getpid(), x * x


def test_ordered_map_yields_in_task_order_from_worker_processes_or_this_one():
    here = list(ordered_map(_pid_and_square, [(x,) for x in range(7)], 1))
    assert [sq for _, sq in here] == [x * x for x in range(7)] and {pid for pid, _ in here} == {os.getpid()}
    there = list(ordered_map(_pid_and_square, [(x,) for x in range(7)], 2))
    assert [sq for _, sq in there] == [x * x for x in range(7)]
    assert os.getpid() not in {pid for pid, _ in there}
    assert list(ordered_map(_pid_and_square, [], 2)) == []


_KEPT: list = []


def _grow_and_free(mb: int) -> int:
    """Allocate ``mb`` MB in 96 KB blocks (glibc's heap, under its mmap threshold), keep every tenth for the
    worker's life and free the rest: freed memory between live blocks stays resident until it is trimmed."""
    import time

    import numpy as np

    blocks = [np.ones(12_000) for _ in range(mb * 1024 // 96)]
    _KEPT.extend(blocks[::10])
    del blocks
    time.sleep(1.1)  # loky looks at a worker's memory at most once a second
    return os.getpid()


@pytest.mark.filterwarnings("default::UserWarning")  # loky warns from a thread: as an error it would hang the pool
def test_a_workers_freed_memory_goes_back_so_loky_does_not_restart_it_as_a_leak():
    # loky restarts a worker whose resident set grew 300 MB past what it held after its first task (with a
    # "worker stopped" warning, and a new process importing torch again); a fitted candidate's freed heap
    # is not a leak, and the worker hands it back after each task
    pids = list(ordered_map(_grow_and_free, [(1,), (1,), (400,), (400,), (1,), (1,)], 2))
    assert len(set(pids)) == 2 and os.getpid() not in pids


def _touch(path: str, x: int) -> tuple[int, int]:
    from pathlib import Path

    Path(path).write_text(str(x))
    return os.getpid(), x


def test_in_background_runs_a_single_task_on_a_worker_before_its_result_is_read(tmp_path):
    import time

    marker = tmp_path / "started"
    results = in_background(_touch, [(str(marker), 7)], 2)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:  # the generator is not read meanwhile
        time.sleep(0.05)
    assert marker.exists(), "the task did not run until its result was read"
    pid, x = next(results)
    assert x == 7 and pid != os.getpid()
    # one worker: nothing runs until the result is read, in this process
    later = tmp_path / "later"
    results = in_background(_touch, [(str(later), 8)], 1)
    time.sleep(0.2)
    assert not later.exists() and next(results) == (os.getpid(), 8) and later.exists()
    assert list(in_background(_touch, [], 2)) == []


def test_ordered_map_raises_a_workers_exception_in_this_process():
    with pytest.raises(ZeroDivisionError):
        list(ordered_map(divmod, [(1, 1), (1, 0)], 2))


def _killed_in_a_worker(parent: int, x: int) -> int:
    if x == 3 and os.getpid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return 10 * x


def test_a_worker_that_dies_leaves_the_tasks_left_to_this_process(caplog):
    caplog.set_level("WARNING", logger="router_ml.train")
    assert list(ordered_map(_killed_in_a_worker, [(os.getpid(), x) for x in range(6)], 2)) == [10 * x for x in range(6)]
    assert "a worker process stopped" in caplog.text and "run in this process" in caplog.text
    assert [sq for _, sq in ordered_map(_pid_and_square, [(x,) for x in range(3)], 2)] == [0, 1, 4]  # workers again


def test_automatic_workers_by_records_cores_and_threads(monkeypatch):
    cores = available_cpus()
    assert workers_for(0, PARALLEL_FROM - 1, 30) == 1  # small data: a worker's start costs more than it saves
    assert workers_for(0, PARALLEL_FROM, 30) == cores
    assert workers_for(0, PARALLEL_FROM, 1) == 1  # never more than the tasks
    assert workers_for(0, 10**6, 30, threads=cores) == 1  # each task's threads use every core
    assert workers_for(3, 10, 30) == 3 and workers_for(3, 10, 2) == 2 and workers_for(1, 10**6, 30) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: every rank takes part in each fit
    assert workers_for(0, 10**6, 30) == 1 and workers_for(3, 10**6, 30) == 1


def test_trainings_run_side_by_side_share_the_cores(monkeypatch):
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    cores = available_cpus()
    share_cores(1)
    assert "LOKY_MAX_CPU_COUNT" not in os.environ
    share_cores(2)
    assert os.environ["LOKY_MAX_CPU_COUNT"] == str(max(1, cores // 2)) and available_cpus() == max(1, cores // 2)
    assert workers_for(0, 10**6, 30) == max(1, cores // 2)
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "3")
    share_cores(4)  # a limit the user set stays
    assert os.environ["LOKY_MAX_CPU_COUNT"] == "3"
