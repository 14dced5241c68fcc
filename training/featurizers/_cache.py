"""Featurize a corpus once: sharded, resumable, cached on disk by featurizer identity and data."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from training.featurizers._base import Featurizer, FeaturizerError, cache_root, text_list

__all__ = ["DEFAULT_SHARD_SIZE", "feature_cache_key", "featurize", "texts_digest"]

_FORMAT = 1
#: Texts per shard: each shard is computed, saved and resumed as one unit.
DEFAULT_SHARD_SIZE = 4096
_FINAL = "features.npy"


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 of the texts in order (length-prefixed UTF-8, so no two lists collide by concatenation)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def feature_cache_key(featurizer: Featurizer, texts: Sequence[str], *, data_fingerprint: str | None = None) -> str:
    """The cache key: sha256 of the featurizer's identity, the data's fingerprint (or texts hash) and the count."""
    doc = {
        "format": _FORMAT,
        "featurizer": featurizer.identity(),
        "data": data_fingerprint if data_fingerprint is not None else texts_digest(texts),
        "n": len(texts),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` that replaces it atomically when the block succeeds."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save(path: Path, array: np.ndarray) -> None:
    with _atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, array)


def _shard_path(entry: Path, start: int, stop: int) -> Path:
    return entry / f"shard-{start:010d}-{stop:010d}.npy"


def _load_final(path: Path, n: int, dim: int, mmap: bool) -> np.ndarray | None:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError):
        return None
    return array if array.shape == (n, dim) and array.dtype == np.float32 else None


_worker: Featurizer | None = None


def _init_worker(featurizer: Featurizer) -> None:
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # this worker process only: processes, not threads, share cores
    _worker = featurizer


def _run_shard(task: tuple[list[str], str, int | None]) -> int:
    texts, path, batch_size = task
    assert _worker is not None
    _save(Path(path), _worker.transform(texts, batch_size=batch_size))
    return len(texts)


def featurize(featurizer: Featurizer, texts: Sequence[str], *, cache_dir: str | os.PathLike[str] | None = None,
              data_fingerprint: str | None = None, batch_size: int | None = None,
              shard_size: int = DEFAULT_SHARD_SIZE, num_proc: int = 1, progress: bool = True,
              mmap: bool = False) -> np.ndarray:
    """``featurizer.transform(texts)``, computed once per (featurizer identity, data) and cached on disk.

    The cache entry is ``<cache_dir or cache_root()/"features">/<key>/`` with ``key`` from
    :func:`feature_cache_key`; pass ``data_fingerprint`` (e.g. ``TrafficTable.fingerprint()``) to skip
    hashing the texts - it must then identify exactly these texts in this order. Work runs in shards
    of ``shard_size`` texts, each saved as its own ``.npy`` when done, so an interrupted run resumes
    at the first missing shard and memory stays at one shard per process. The shards are then
    appended to ``features.npy`` one by one and deleted.

    ``num_proc > 1`` runs shards in that many spawned worker processes (featurizers with
    ``supports_multiprocessing``, i.e. ``static``); results are identical to ``num_proc=1``.
    Returns an in-memory float32 ``(n, dim)`` array, or a read-only memory map of the cached file
    when ``mmap=True`` (for corpora larger than RAM). A tqdm bar counts texts when ``progress`` and
    stderr is a terminal.

    >>> from training.featurizers import featurize, get_featurizer
    >>> X = featurize(get_featurizer("static"), table.texts, data_fingerprint=table.fingerprint())  # doctest: +SKIP
    """
    if isinstance(texts, str) or not (hasattr(texts, "__getitem__") and hasattr(texts, "__len__")):
        texts = text_list(texts)  # one string raises; any other iterable becomes a list
    # the texts are read shard by shard (each shard's transform checks them): a million prompts are
    # never all held as one more list here, and a columnar table's text column is sliced, not copied
    if shard_size < 1:
        raise FeaturizerError(f"shard_size must be positive, got {shard_size}")
    if num_proc < 1:
        raise FeaturizerError(f"num_proc must be positive, got {num_proc}")
    if num_proc > 1 and not featurizer.supports_multiprocessing:
        raise FeaturizerError(f"num_proc={num_proc}: the {featurizer.name!r} featurizer runs in one process "
                              "(torch already uses every core); use num_proc=1")
    n, dim = len(texts), featurizer.dim
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "features"
    entry = root / feature_cache_key(featurizer, texts, data_fingerprint=data_fingerprint)
    final = entry / _FINAL
    if (cached := _load_final(final, n, dim, mmap)) is not None:
        return cached
    entry.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "featurizer": featurizer.identity(), "n": n, "dim": dim,
            "data_fingerprint": data_fingerprint, "shard_size": shard_size}
    with _atomic_path(entry / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    shards = [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
    todo = [(a, b) for a, b in shards if not _shard_path(entry, a, b).is_file()]
    _compute(featurizer, texts, entry, todo, n=n, batch_size=batch_size, num_proc=num_proc, progress=progress)

    if (cached := _load_final(final, n, dim, mmap)) is not None:  # a concurrent run finished first
        return cached
    # written by plain file writes, one shard at a time: the pages of a memory map being filled would
    # all count in this process's resident set (a gigabyte at a million prompts)
    with _atomic_path(final) as tmp, tmp.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                 "fortran_order": False, "shape": (n, dim)})
        for a, b in shards:
            shard = np.load(_shard_path(entry, a, b))
            if shard.shape != (b - a, dim):
                raise FeaturizerError(f"{_shard_path(entry, a, b)} has shape {shard.shape}, expected {(b - a, dim)}")
            f.write(np.ascontiguousarray(shard, dtype=np.float32).tobytes())
    for a, b in shards:
        _shard_path(entry, a, b).unlink(missing_ok=True)
    result = _load_final(final, n, dim, mmap)
    assert result is not None
    return result


def _compute(featurizer: Featurizer, texts: Sequence[str], entry: Path, todo: list[tuple[int, int]], *, n: int,
             batch_size: int | None, num_proc: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    done = n - sum(b - a for a, b in todo)
    bar: Any = tqdm(total=n, initial=done, unit="text", desc=f"featurize {featurizer.name}",
                    disable=None if progress else True)
    with bar:
        if num_proc == 1 or len(todo) <= 1:
            for a, b in todo:
                _save(_shard_path(entry, a, b), featurizer.transform(list(texts[a:b]), batch_size=batch_size))
                bar.update(b - a)
            return
        tasks = ((list(texts[a:b]), str(_shard_path(entry, a, b)), batch_size) for a, b in todo)
        # spawn, not fork: forking a process that holds torch or tokenizers threads can deadlock. An executor,
        # unlike multiprocessing.Pool, fails instead of hanging when a worker dies.
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(min(num_proc, len(todo)), mp_context=context, initializer=_init_worker,
                                   initargs=(featurizer,))
        try:  # at most two shards per worker in flight: the texts of the others are not copied yet
            running: set = set()
            for task in tasks:
                running.add(pool.submit(_run_shard, task))
                if len(running) >= 2 * num_proc:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        bar.update(future.result())
            for future in as_completed(running):
                bar.update(future.result())
        except BrokenProcessPool as exc:
            raise FeaturizerError(
                f"a featurize worker process died ({exc}); with num_proc > 1 the calling script must be a "
                "file whose top-level code is guarded by `if __name__ == \"__main__\":`") from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on error, do not run the remaining shards
