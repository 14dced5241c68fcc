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

import logging
import time
from pathlib import Path
from typing import Any

from router_ml.errors import RouterMLError
from training.config import TrainConfig
from training.featurizers import featurize_part, worker_shards

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


def featurize_shard(config: TrainConfig, data: str | Path, *, shard: tuple[int, int],
                    cache_dir: str | Path | None = None, prices: str | Path | None = None,
                    **load_options: Any) -> dict[str, Any]:
    """Compute worker ``shard = (K, N)``'s cache shards of ``data`` for ``config``'s featurizer
    (:func:`training.featurizers.featurize_part`).

    ``data``, ``prices`` and ``load_options`` must be what ``router-ml train`` is given: the cache key
    holds the loaded table's fingerprint, so other data (or other load options that change the
    records) is another entry. Returns the JSON the CLI prints: the entry, this worker's rows, what
    it computed, and whether the entry is complete (``features.npy`` assembled, ready for ``train``).
    """
    from training.data import load_traffic
    from training.pipeline import config_featurizer

    started = time.perf_counter()
    index, count = shard
    table, _ = load_traffic(data, prices=prices, **load_options)
    fingerprint = table.fingerprint()
    log.info("featurizing worker %d of %d's shards of %d records", index, count, len(table))
    part = featurize_part(config_featurizer(config), table.texts, part=shard, cache_dir=cache_dir,
                          data_fingerprint=fingerprint, batch_size=config.featurizer.batch_size)
    mine = part["shards"]
    return {"shard": f"{index}/{count}", "records": len(table), "data_fingerprint": fingerprint,
            "featurizer": config.featurizer.name, "cache_entry": str(part["entry"]),
            "rows": [mine[0][0], mine[-1][1]] if mine else None, "cache_shards": [list(s) for s in mine],
            "computed": part["computed"], "already_cached": len(mine) - part["computed"],
            "complete": part["complete"], "seconds": round(time.perf_counter() - started, 2)}
