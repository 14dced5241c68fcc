"""``router-ml featurize --shard K/N``: featurize one worker's share of a data set into the feature cache.

Why: featurizing is the part of training that grows with the corpus (an encoder over millions of
prompts), and it is embarrassingly parallel. The feature cache (:mod:`training.featurizers._cache`)
already works in shards of :data:`~training.featurizers.DEFAULT_SHARD_SIZE` texts, each saved as
its own file under a key of the featurizer's identity and the data's fingerprint. This module lets
N independent processes - a Slurm array, one Kubernetes job per shard, ``xargs -P`` - each compute
a contiguous block of those shard files, with the very names and contents ``featurize`` would
write. The worker that finds the set complete assembles ``features.npy``, so ``router-ml train``
(every torchrun rank) finds the entry complete and computes nothing.

The cache's shard layout is the contract: worker K of N takes cache shards
``[K*S//N, (K+1)*S//N)`` of the ``S`` shards, so the blocks are contiguous, disjoint, cover every
row and do not depend on which worker runs first. With fewer cache shards than workers some
workers have nothing to do (they still report whether the entry is complete).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from router_ml.errors import RouterMLError
from training.config import TrainConfig
from training.featurizers import DEFAULT_SHARD_SIZE, cache_root, feature_cache_key, featurize, get_featurizer
from training.featurizers._cache import _FINAL, _FORMAT, _atomic_path, _load_final, _save, _shard_path

__all__ = ["featurize_shard", "parse_shard", "worker_shards"]

log = logging.getLogger("router_ml.featurize")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N`` (K is 0-based, like ``$SLURM_ARRAY_TASK_ID`` from 0)."""
    index, sep, count = str(text).partition("/")
    try:
        k, n = int(index), int(count)
    except ValueError:
        k = n = -1
    if not sep or n < 1 or not 0 <= k < n:
        raise RouterMLError(f"--shard expects K/N with 0 <= K < N (e.g. 0/4 ... 3/4), got {text!r}")
    return k, n


def worker_shards(n: int, index: int, count: int, shard_size: int = DEFAULT_SHARD_SIZE) -> list[tuple[int, int]]:
    """The cache shards ``(start, stop)`` worker ``index`` of ``count`` computes for ``n`` texts:
    a contiguous block of the cache's own shard list (possibly empty)."""
    shards = [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
    total = len(shards)
    return shards[index * total // count:(index + 1) * total // count]


def featurize_shard(config: TrainConfig, data: str | Path, *, shard: tuple[int, int],
                    cache_dir: str | Path | None = None, prices: str | Path | None = None,
                    **load_options: Any) -> dict[str, Any]:
    """Compute worker ``shard = (K, N)``'s cache shards of ``data`` for ``config``'s featurizer.

    ``data``, ``prices`` and ``load_options`` must be what ``router-ml train`` is given: the cache key
    holds the loaded table's fingerprint, so other data (or other load options that change the
    records) is another entry. Shards already on disk are kept (a rerun after a failure resumes).
    Returns the JSON the CLI prints: the entry, this worker's rows, what it computed, and whether
    the entry is complete (``features.npy`` assembled, ready for ``train``).
    """
    from training.data import load_traffic

    started = time.perf_counter()
    index, count = shard
    table, _ = load_traffic(data, prices=prices, **load_options)
    texts, fingerprint = table.texts, table.fingerprint()
    f = config.featurizer
    # exactly as training.pipeline.featurize_texts builds it: the identity is part of the cache key
    featurizer = get_featurizer(f.name, max_tokens=f.max_tokens)
    n = len(texts)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "features"
    entry = root / feature_cache_key(featurizer, texts, data_fingerprint=fingerprint)
    mine = worker_shards(n, index, count)
    computed = 0
    if _load_final(entry / _FINAL, n, featurizer.dim, mmap=True) is None:
        entry.mkdir(parents=True, exist_ok=True)
        meta = entry / "meta.json"
        if not meta.is_file():  # featurize() writes the same document; it is informational
            with _atomic_path(meta) as tmp:
                tmp.write_text(json.dumps({"format": _FORMAT, "featurizer": featurizer.identity(), "n": n,
                                           "dim": featurizer.dim, "data_fingerprint": fingerprint,
                                           "shard_size": DEFAULT_SHARD_SIZE}, indent=2, sort_keys=True) + "\n")
        for a, b in mine:
            path = _shard_path(entry, a, b)
            if path.is_file():
                continue
            log.info("featurizing rows %d-%d of %d into %s", a, b, n, path.name)
            _save(path, featurizer.transform(texts[a:b], batch_size=f.batch_size))
            computed += 1
    complete = _assemble_if_complete(featurizer, texts, root, fingerprint, f.batch_size)
    return {"shard": f"{index}/{count}", "records": n, "data_fingerprint": fingerprint,
            "featurizer": f.name, "cache_entry": str(entry),
            "rows": [mine[0][0], mine[-1][1]] if mine else None, "cache_shards": [list(s) for s in mine],
            "computed": computed, "already_cached": len(mine) - computed, "complete": complete,
            "seconds": round(time.perf_counter() - started, 2)}


def _assemble_if_complete(featurizer, texts: list[str], root: Path, fingerprint: str, batch_size: int) -> bool:
    """When every cache shard is on disk, let :func:`featurize` assemble ``features.npy`` (it computes
    nothing then). Two workers finishing together may both assemble; the one that finds its
    shards already consumed by the other sees the finished file instead."""
    n = len(texts)
    entry = root / feature_cache_key(featurizer, texts, data_fingerprint=fingerprint)
    if _load_final(entry / _FINAL, n, featurizer.dim, mmap=True) is not None:
        return True
    if any(not _shard_path(entry, a, b).is_file() for a, b in worker_shards(n, 0, 1)):
        return False
    try:
        featurize(featurizer, texts, cache_dir=root, data_fingerprint=fingerprint, batch_size=batch_size,
                  progress=False, mmap=True)
    except FileNotFoundError:  # the other assembler deleted the shards after writing features.npy
        if _load_final(entry / _FINAL, n, featurizer.dim, mmap=True) is None:
            raise
    return True
