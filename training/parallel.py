"""Independent fits on several worker processes, results in task order.

The auto router's cross-validation fits (every candidate on every fold) do not depend on each other,
and each seeds itself and runs on one thread, so they give the same numbers in any process. On a
machine with more than one core they run on joblib's ``loky`` workers: spawned processes (never a
fork of a process whose thread pools are running), reused within the run, each task's arguments
pickled to it (large numpy arrays through memory-mapped files). One worker runs them in this
process, in order, with no pickling at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["PARALLEL_FROM", "available_cpus", "in_background", "ordered_map", "share_cores", "workers_for"]

#: automatic ``train.workers``: fits go to worker processes from this many training records (a worker
#: starts in about 3 s, importing torch; the auto router's cross-validation on 2,000 records is 20-30 s
#: of fits on one core)
PARALLEL_FROM = 2000
log = logging.getLogger("router_ml.train")


def available_cpus() -> int:
    """The cores this process may use: its CPU affinity and a container's CPU quota (cgroups) counted,
    and at most ``LOKY_MAX_CPU_COUNT`` where that is set (joblib's count)."""
    from joblib import cpu_count

    return max(1, cpu_count())


def workers_for(configured: int, records: int, tasks: int, threads: int = 1) -> int:
    """How many processes run ``tasks`` independent fits on ``records`` training records: ``configured``
    (``train.workers``) when set, else (0: automatic) one per available core, ``threads`` cores each,
    from :data:`PARALLEL_FROM` records, and this process alone below that. Never more than the tasks.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) always this process: each fit is collective, every rank in it."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return 1
    if configured:
        return max(1, min(configured, tasks))
    if records < PARALLEL_FROM:
        return 1
    return max(1, min(tasks, available_cpus() // max(1, threads)))


def share_cores(jobs: int) -> None:
    """For a script that runs ``jobs`` trainings side by side: each one's automatic ``train.workers``
    counts only its share of the cores (``LOKY_MAX_CPU_COUNT`` in this process's environment, which the
    trainings inherit; left alone where it is set already)."""
    if jobs > 1:
        os.environ.setdefault("LOKY_MAX_CPU_COUNT", str(max(1, available_cpus() // jobs)))


def ordered_map(fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """``fn(*task)`` for each task, yielded in task order as they finish; ``workers`` > 1 runs them on
    that many worker processes (``fn`` must then be a module-level function and the tasks picklable).
    A worker that dies (killed for memory, say) costs nothing but time: the tasks not yet returned run
    in this process, with a warning. An exception ``fn`` raises is raised here, as in this process."""
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        return (fn(*task) for task in tasks)
    return _in_workers(fn, tasks, min(workers, len(tasks)))


def in_background(fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """:func:`ordered_map`, with the tasks already sent to the worker processes when this returns - even a
    single task - so that this process does other work meanwhile and reads the results after; with
    ``workers`` <= 1 they run in this process as the results are read."""
    tasks = list(tasks)
    if workers <= 1 or not tasks:
        return (fn(*task) for task in tasks)
    return _in_workers(fn, tasks, workers)


def _in_workers(fn: Callable[..., Any], tasks: list[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """The tasks' results in order; they are dispatched before this returns (joblib starts a generator's
    dispatch when it is called)."""
    from concurrent.futures import BrokenExecutor

    from joblib import Parallel, delayed

    # inner_max_num_threads: each worker's BLAS/OpenMP pools on one thread, as in this process
    parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator", inner_max_num_threads=1)
    try:
        output = parallel(delayed(_quietly)(fn, *task) for task in tasks)
    except BrokenExecutor as exc:  # the pool broke before the tasks were sent
        _here_instead(exc, len(tasks))
        return (fn(*task) for task in tasks)
    return _results(output, fn, tasks)


def _results(output: Iterator[Any], fn: Callable[..., Any], tasks: list[tuple[Any, ...]]) -> Iterator[Any]:
    """``output``'s results in order; once the pool breaks, the tasks not yet returned run in this process."""
    from concurrent.futures import BrokenExecutor

    done = 0
    try:
        for result in output:
            done += 1
            yield result
    except BrokenExecutor as exc:
        _here_instead(exc, len(tasks) - done)
        for task in tasks[done:]:
            yield fn(*task)


def _here_instead(exc: BaseException, left: int) -> None:
    log.warning("a worker process stopped (%s); the %d tasks left run in this process",
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__, left)


def _quietly(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker: without progress bars (several processes drawing bars on one terminal garble
    it, and a ``--quiet`` run's scope does not reach a worker; the caller reports progress as results come
    back), and with the memory the task freed handed back to the system before the worker reports
    (:func:`~training.stages.return_free_memory`). loky takes a worker whose resident set grew 300 MB past
    what it held after its first task for a leak and replaces it, with a warning and a new process that
    imports torch again; glibc keeps a fitted candidate's freed heap resident, which on MMLU-Pro-29's
    cross-validation reached that (+340 MB: a worker replaced in some runs) and stays near +160 MB handed
    back, for about 5 ms a task."""
    from training.progress import progress_scope
    from training.stages import return_free_memory

    try:
        with progress_scope(False):
            return fn(*args)
    finally:
        return_free_memory()
