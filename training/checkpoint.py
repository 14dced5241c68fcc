"""A training checkpoint on disk: the format ``router-ml train`` writes into a router directory, and
what its readers (:mod:`training.saved`, :mod:`training.evaluate_saved`) need of it.

Besides the router's weights the directory holds ``manifest.json`` (:data:`CHECKPOINT_FORMAT`, checked
when read), the resolved config, the featurizer's identity, the cost model (with the knob grid the
router was scored on), ``split.json`` (the split's identity, the test records' sample ids and a short
hash of every prompt trained on, so that evaluation can drop them) and the test metrics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.errors import RouterMLError
from router_ml.policy import CostModel, wtp_from_json
from training.data import Split, TrafficTable, normalize_prompt
from training.data.loader import check_out_directory
from training.evaluation import read_metrics_file

__all__ = ["CHECKPOINT_FORMAT", "check_out_dir", "checked_checkpoint", "checkpoint_manifest", "id_blocks",
           "portable_identity", "prompt_hash", "sample_ids", "saved_knob_grid", "seen_prompt_digests", "write_split"]

CHECKPOINT_FORMAT = "router-ml-checkpoint/1"


def check_out_dir(out_dir: str | Path, *, fmt: str = CHECKPOINT_FORMAT, what: str = "router",
                  partial: frozenset[str] = frozenset()) -> None:
    """Before any work: ``--out`` is a new or empty directory, or an earlier checkpoint of this kind (``fmt``
    in its ``manifest.json``), which the run replaces, or what an interrupted run left (only names in
    ``partial``, the files a run writes before its manifest). Any other non-empty directory is refused, so
    that training never writes ``config.json``, ``summary.json`` or ``metrics.json`` over a user's own
    files (``--out .`` in a project, ``--out data/``); a file there is refused too."""
    path = Path(out_dir)
    check_out_directory(path, f"the {what}")
    if not path.is_dir() or {p.name for p in path.iterdir()} <= partial:
        return
    try:
        found = json.loads((path / "manifest.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != fmt:
        names = sorted(p.name for p in path.iterdir())
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise RouterMLError(f"--out {path}: a directory holding {shown}, not a {what} checkpoint ({fmt}); train "
                            "into a new or empty directory, or into an earlier checkpoint to replace it - nothing "
                            "was written")


def portable_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A featurizer identity without where its files happen to lie (their digests stay)."""
    return {k: v for k, v in identity.items() if k not in ("model_dir", "source_dir")}


def _prompt_digest(text: str) -> bytes:
    return hashlib.sha256(normalize_prompt(text).encode()).digest()[:10]


def prompt_hash(text: str) -> str:
    """The saved hash of a prompt (its normalised form's sha256, 20 hex digits)."""
    return _prompt_digest(text).hex()


def sample_ids(table: TrafficTable, rows: np.ndarray) -> list[str | None]:
    """The records' ``sample_id``, from the table's column (no record is built)."""
    return table.columns.sample_id.take(rows).to_list()


_ID_BLOCK = 1 << 16


def id_blocks(table: TrafficTable, rows: np.ndarray) -> Iterator[tuple[int, list[str | None]]]:
    """(offset in ``rows``, the sample ids of the next block of ``rows``): no list of every id at once."""
    for start in range(0, len(rows), _ID_BLOCK):
        yield start, sample_ids(table, rows[start:start + _ID_BLOCK])


def seen_prompt_digests(table: TrafficTable, rows: np.ndarray) -> np.ndarray:
    """The sorted distinct prompt hashes (:func:`prompt_hash`, as 10 raw bytes) of the records
    ``rows``: texts read in order a block at a time, 10 bytes a prompt (10M prompts: 100 MB, where
    a set of hex strings took 0.9 GB)."""
    wanted = np.zeros(len(table), dtype=bool)
    wanted[np.asarray(rows, dtype=np.int64)] = True
    parts, start = [], 0
    for block in table.texts.blocks():
        texts = block.to_pylist()
        keep = wanted[start:start + len(texts)]
        parts.append(np.frombuffer(b"".join(_prompt_digest(t) for t, k in zip(texts, keep, strict=True) if k),
                                   dtype=np.uint8))
        start += len(texts)
    digests = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    return np.unique(digests.reshape(-1, 10), axis=0)


def write_split(path: Path, table: TrafficTable, split: Split, seed: int, fingerprint: str) -> None:
    """``split.json``: the split's identity, the test records' sample ids (null where the data has none)
    and rows (their positions among the records loaded, as ``test_predictions.jsonl``'s ``row``) and the
    hashes of every prompt trained on (so evaluation can drop them), written a block at a time."""
    head = {"seed": seed, "sizes": split.sizes(), "data_fingerprint": fingerprint}
    digests = seen_prompt_digests(table, np.concatenate([split.train, split.val]))
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(head)[:-1] + ', "test_sample_ids": [')
        for start, ids in id_blocks(table, split.test):
            f.write((", " if start else "") + ", ".join(map(json.dumps, ids)))
        f.write('], "test_rows": [')
        for start in range(0, len(split.test), _ID_BLOCK):
            f.write((", " if start else "") + ", ".join(map(str, split.test[start:start + _ID_BLOCK].tolist())))
        f.write('], "seen_prompt_hashes": [')
        for start in range(0, len(digests), _ID_BLOCK):
            hexes = (f'"{d.tobytes().hex()}"' for d in digests[start:start + _ID_BLOCK])
            f.write((", " if start else "") + ", ".join(hexes))
        f.write("]}\n")


def checkpoint_manifest(router_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((router_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise RouterMLError(f"{router_dir}: not a router directory (manifest.json unreadable: {exc})") from exc
    fmt = manifest.get("format")
    if isinstance(fmt, str) and fmt.startswith("router-ml-scorer"):
        raise RouterMLError(f"{router_dir}: an answer scorer ({fmt}), not a router; give a router's checkpoint or "
                            "artifact here (a scorer goes to 'router-ml cascade evaluate --scorer')")
    if fmt != CHECKPOINT_FORMAT:
        raise RouterMLError(f"{router_dir}: unsupported router format {fmt!r}; this router-ml "
                            f"reads {CHECKPOINT_FORMAT} - upgrade router-ml or retrain")
    return manifest


def checked_checkpoint(router_dir: Path) -> dict[str, Any]:
    """:func:`checkpoint_manifest`, after checking that the checkpoint's files agree on its models: the
    manifest's model order is the order of the router's outputs and of the cost model's columns (a reordered
    or copied-in file once exported a router that priced each model as another)."""
    manifest = checkpoint_manifest(router_dir)
    models = manifest.get("models")
    try:
        cost_models = json.loads((router_dir / "cost_model.json").read_text())["models"]
        outputs = json.loads((router_dir / "router.json").read_text())["n_models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RouterMLError(f"{router_dir}: cost_model.json or router.json unreadable ({type(exc).__name__}: {exc}); "
                            "restore the checkpoint directory as train wrote it, or retrain") from None
    if not isinstance(models, list) or cost_models != models or outputs != len(models):
        raise RouterMLError(f"{router_dir}: its files disagree on the models - manifest.json {models}, cost_model.json "
                            f"{cost_models}, router.json {outputs} outputs; they come from different checkpoints or "
                            "were edited: restore the directory as train wrote it, or retrain")
    return manifest


def saved_knob_grid(router_dir: str | Path) -> np.ndarray:
    """The willingness-to-pay grid a saved router was scored on in training (saved with its cost model;
    routers saved before that have it only in their metrics' curve)."""
    router_dir = Path(router_dir)
    cost_model = CostModel.from_dict(json.loads((router_dir / "cost_model.json").read_text()))
    if cost_model.knob_grid:
        return np.asarray(cost_model.knob_grid)
    curve = read_metrics_file(router_dir / "metrics.json")["curve"]
    return np.array([wtp_from_json(w) for w in curve["willingness_to_pay"]])
