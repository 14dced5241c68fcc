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
from training.progress import bar as progress_bar

__all__ = ["DEFAULT_SHARD_SIZE", "cache_entry", "cache_shards", "feature_cache_key", "featurize", "featurize_part",
           "texts_digest", "worker_shards"]

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


def _texts(texts: Sequence[str]) -> Sequence[str]:
    if isinstance(texts, str) or not (hasattr(texts, "__getitem__") and hasattr(texts, "__len__")):
        return text_list(texts)  # one string raises; any other iterable becomes a list
    # the texts are read shard by shard (each shard's transform checks them): a million prompts are
    # never all held as one more list here, and a columnar table's text column is sliced, not copied
    return texts


def cache_shards(n: int, shard_size: int = DEFAULT_SHARD_SIZE) -> list[tuple[int, int]]:
    """The ``(start, stop)`` row ranges a cache entry of ``n`` texts is computed and resumed in."""
    if shard_size < 1:
        raise FeaturizerError(f"shard_size must be positive, got {shard_size}")
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def worker_shards(n: int, index: int, count: int, shard_size: int = DEFAULT_SHARD_SIZE) -> list[tuple[int, int]]:
    """The cache shards worker ``index`` of ``count`` computes for ``n`` texts: a contiguous block of
    :func:`cache_shards` (empty when there are more workers than shards)."""
    shards = cache_shards(n, shard_size)
    return shards[index * len(shards) // count:(index + 1) * len(shards) // count]


def cache_entry(featurizer: Featurizer, texts: Sequence[str], *, cache_dir: str | os.PathLike[str] | None = None,
                data_fingerprint: str | None = None) -> Path:
    """The directory :func:`featurize` caches ``featurizer(texts)`` in."""
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "features"
    if root.exists() and not root.is_dir():
        raise FeaturizerError(f"feature cache {root}: exists and is not a directory; pass a directory as "
                              "cache_dir (--cache-dir), or move the file")
    return root / feature_cache_key(featurizer, texts, data_fingerprint=data_fingerprint)


def featurize(featurizer: Featurizer, texts: Sequence[str], *, cache_dir: str | os.PathLike[str] | None = None,
              data_fingerprint: str | None = None, batch_size: int | None = None,
              shard_size: int = DEFAULT_SHARD_SIZE, num_proc: int = 1, progress: bool = True,
              mmap: bool = False) -> np.ndarray:
    """``featurizer.transform(texts)``, computed once per (featurizer identity, data) and cached on disk.

    The cache entry is :func:`cache_entry` (``<cache_dir or cache_root()/"features">/<key>/``, ``key``
    from :func:`feature_cache_key`); pass ``data_fingerprint`` (e.g. ``TrafficTable.fingerprint()``) to
    skip hashing the texts - it must then identify exactly these texts in this order. Work runs in
    shards of ``shard_size`` texts, each saved as its own ``.npy`` when done, so an interrupted run
    resumes at the first missing shard and memory stays at one shard per process. The shards are
    then appended to ``features.npy`` one by one and deleted. :func:`featurize_part` computes one
    worker's share of the same shards, for a batch engine to fan out.

    ``num_proc > 1`` runs shards in that many spawned worker processes (featurizers with
    ``supports_multiprocessing``, i.e. ``static``); results are identical to ``num_proc=1``.
    Returns an in-memory float32 ``(n, dim)`` array, or a read-only memory map of the cached file
    when ``mmap=True`` (for corpora larger than RAM). A tqdm bar counts texts on stderr when ``progress`` and
    stderr is a terminal (:mod:`training.progress` has the rules).

    >>> from training.featurizers import featurize, get_featurizer
    >>> X = featurize(get_featurizer("static"), table.texts, data_fingerprint=table.fingerprint())  # doctest: +SKIP
    """
    texts = _texts(texts)
    shards = cache_shards(len(texts), shard_size)
    if num_proc < 1:
        raise FeaturizerError(f"num_proc must be positive, got {num_proc}")
    if num_proc > 1 and not featurizer.supports_multiprocessing:
        raise FeaturizerError(f"num_proc={num_proc}: the {featurizer.name!r} featurizer runs in one process "
                              "(torch already uses every core); use num_proc=1")
    n, dim = len(texts), featurizer.dim
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    entry = cache_entry(featurizer, texts, cache_dir=cache_dir, data_fingerprint=data_fingerprint)
    if (cached := _load_final(entry / _FINAL, n, dim, mmap)) is not None:
        return cached
    _start_entry(entry, featurizer, n, data_fingerprint, shard_size)
    todo = [(a, b) for a, b in shards if not _shard_path(entry, a, b).is_file()]
    _compute(featurizer, texts, entry, todo, n=n, batch_size=batch_size, num_proc=num_proc, progress=progress)
    _assemble(entry, shards, n, dim)
    result = _load_final(entry / _FINAL, n, dim, mmap)
    assert result is not None
    return result


def featurize_part(featurizer: Featurizer, texts: Sequence[str], *, part: tuple[int, int],
                   cache_dir: str | os.PathLike[str] | None = None, data_fingerprint: str | None = None,
                   batch_size: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                   progress: bool = True) -> dict[str, Any]:
    """Worker ``part = (K, N)``'s share of :func:`featurize`: the :func:`worker_shards` block K of N of
    the same cache entry, written exactly as ``featurize`` writes it, so any batch engine can fan the
    work out and ``featurize`` (``router-ml train``) then finds the entry complete. Shards already on
    disk are skipped (a retried task resumes); whichever worker finds every shard present assembles
    ``features.npy``. Returns ``entry``, this worker's ``shards``, how many it ``computed`` and whether
    the entry is ``complete``."""
    texts = _texts(texts)
    n, dim = len(texts), featurizer.dim
    index, count = part
    shards, mine = cache_shards(n, shard_size), worker_shards(n, index, count, shard_size)
    entry = cache_entry(featurizer, texts, cache_dir=cache_dir, data_fingerprint=data_fingerprint)
    computed = 0
    if _load_final(entry / _FINAL, n, dim, mmap=True) is None:
        _start_entry(entry, featurizer, n, data_fingerprint, shard_size)
        todo = [(a, b) for a, b in mine if not _shard_path(entry, a, b).is_file()]
        _compute(featurizer, texts, entry, todo, n=n, batch_size=batch_size, num_proc=1, progress=progress)
        computed = len(todo)
        if all(_shard_path(entry, a, b).is_file() for a, b in shards):
            _assemble(entry, shards, n, dim)
    return {"entry": entry, "shards": mine, "computed": computed,
            "complete": _load_final(entry / _FINAL, n, dim, mmap=True) is not None}


def _start_entry(entry: Path, featurizer: Featurizer, n: int, data_fingerprint: str | None, shard_size: int) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "featurizer": featurizer.identity(), "n": n, "dim": featurizer.dim,
            "data_fingerprint": data_fingerprint, "shard_size": shard_size}
    with _atomic_path(entry / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _assemble(entry: Path, shards: list[tuple[int, int]], n: int, dim: int) -> None:
    """``features.npy`` from the shard files, which are then deleted. Several processes may assemble
    the same entry at once (torchrun ranks, sharded workers finishing together): one that finds its
    shards consumed by another sees that one's finished file instead."""
    final = entry / _FINAL
    if _load_final(final, n, dim, mmap=True) is not None:  # a concurrent run finished first
        return
    try:
        # written by plain file writes, one shard at a time: the pages of a memory map being filled would
        # all count in this process's resident set (a gigabyte at a million prompts)
        with _atomic_path(final) as tmp, tmp.open("wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                     "fortran_order": False, "shape": (n, dim)})
            for a, b in shards:
                shard = np.load(_shard_path(entry, a, b))
                if shard.shape != (b - a, dim):
                    raise FeaturizerError(f"{_shard_path(entry, a, b)} has shape {shard.shape}, "
                                          f"expected {(b - a, dim)}")
                f.write(np.ascontiguousarray(shard, dtype=np.float32).tobytes())
    except FileNotFoundError:
        if _load_final(final, n, dim, mmap=True) is None:
            raise
        return
    for a, b in shards:
        _shard_path(entry, a, b).unlink(missing_ok=True)


def _compute(featurizer: Featurizer, texts: Sequence[str], entry: Path, todo: list[tuple[int, int]], *, n: int,
             batch_size: int | None, num_proc: int, progress: bool) -> None:
    done = n - sum(b - a for a, b in todo)
    bar: Any = progress_bar(total=n, initial=done, unit="text", desc=f"featurize {featurizer.name}", enabled=progress)
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
