"""The in-memory training table: validated records, stored as columns, plus the matrices training needs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from router_ml.errors import RouterMLError
from router_ml.optional import require
from training.data.columns import MATRICES, Columns, StrColumn, blank, from_records
from training.data.schema import Record

__all__ = ["TrafficTable"]

_BLOCK = 4096


class TrafficTable(Sequence[Record]):
    """An ordered collection of :class:`Record` with per-model outcome matrices.

    ``models`` lists every model with an outcome or a preference, in order of first appearance.
    ``quality`` and ``cost`` are ``(n_records, n_models)`` float arrays with NaN where a record
    has no outcome (or no known cost) for a model - the mask that lets logged traffic, with one
    model per prompt, train a router beside offline evaluations that have every model.
    ``propensity`` is the same shape: the logging policy's probability of each logged choice,
    NaN where no propensity was logged.

    The table is columnar (:class:`~training.data.columns.Columns`): matrices and Arrow strings
    instead of a Python object graph. A field no record carries (often ``propensity``) is a
    zero-memory read-only NaN view (:func:`~training.data.columns.blank`): index it only where it
    is needed, since ``table.propensity[rows]`` allocates as usual. A loaded table whose texts pass
    the load's text budget keeps them on disk (:mod:`training.data.spill`); ``texts`` then reads
    them back in blocks. On demo data a record costs ~230 bytes with its text spilled, ~460 without.
    A :class:`Record` is rebuilt only when asked for (``table[i]``, iteration, ``records``).
    ``TrafficTable(records)`` builds the columns from records (and keeps those records);
    :meth:`from_columns` wraps columns that a reader built without any record.
    """

    def __init__(self, records: Sequence[Record], *, models: Sequence[str] | None = None):
        records = list(records)
        self._setup(from_records(records), models, records)

    @classmethod
    def from_columns(cls, columns: Columns, *, models: Sequence[str] | None = None) -> TrafficTable:
        """A table over ``columns`` (no records built); ``models`` defaults to first appearance."""
        table = cls.__new__(cls)
        table._setup(columns, models, None)
        return table

    def _setup(self, columns: Columns, models: Sequence[str] | None, records: list[Record] | None) -> None:
        order = columns.first_appearance_order() if models is None else tuple(models)
        # The public models come first, in their order, so each matrix is a view of the stored one;
        # models outside them with an outcome stay stored (after them) so records come back whole.
        used = (columns.rank >= 0).any(axis=0)
        self._cols = columns.with_models(
            order + tuple(m for j, m in enumerate(columns.models) if used[j] and m not in order))
        self.models: tuple[str, ...] = order
        self._records = records
        self._fingerprint: str | None = None
        self._released: frozenset[str] = frozenset()

    @property
    def columns(self) -> Columns:
        """The stored columns (models beyond :attr:`models` last)."""
        return self._cols

    @property
    def records(self) -> list[Record]:
        """Every record as a :class:`Record`, built (once) on first access: for small data only."""
        if self._records is None:
            self._records = list(self._built())
        return self._records

    def _built(self) -> Iterator[Record]:
        """The records rebuilt a block of rows at a time (spilled texts: one read a block)."""
        self._check_whole("records")
        for start in range(0, len(self), _BLOCK):
            block = self._cols.take(np.arange(start, min(start + _BLOCK, len(self))))
            yield from (block.record(i) for i in range(len(block)))

    def __len__(self) -> int:
        return len(self._cols)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        if self._records is not None:
            return self._records[index]
        self._check_whole("records")
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for a table of {len(self)}")
        return self._cols.record(i % len(self))

    def __iter__(self) -> Iterator[Record]:
        if self._records is not None:
            return iter(self._records)
        return self._built()

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TrafficTable) and self.models == other.models and len(self) == len(other)
                and self.fingerprint() == other.fingerprint())

    __hash__ = None  # type: ignore[assignment]

    def subset(self, indices: Sequence[int] | np.ndarray) -> TrafficTable:
        """The records at ``indices``, keeping the full model list (and its column order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        table = TrafficTable.from_columns(self._cols.take(idx), models=self.models)
        table._released = self._released
        if self._records is not None:
            table._records = [self._records[int(i)] for i in idx]
        return table

    @property
    def texts(self) -> StrColumn:
        """The routed text of each record (a compact sequence of ``str``; slices and index arrays give
        lists; a :class:`~training.data.spill.SpilledText` when the texts are on disk)."""
        return self._cols.text

    def _public(self, name: str) -> np.ndarray:
        self._check_whole(name, name)
        return getattr(self._cols, name)[:, :len(self.models)]

    #: what :meth:`release` may free: the fields a training run reads only while it loads and prices
    RELEASABLE = ("input_tokens", "output_tokens", "latency_s", "messages", "timestamp", "responses")

    def release(self, *names: str) -> None:
        """Free the memory of ``names`` (of :attr:`RELEASABLE`) once the caller has read what it needs
        of them: ``train`` releases token counts, latency, messages and timestamps after pricing, about
        100 bytes a record on full-information data (1 GB at 10M records). The fingerprint is taken
        first and kept; afterwards the released fields, and records rebuilt from the table, raise."""
        unknown = sorted(set(names) - set(self.RELEASABLE))
        if unknown:
            raise RouterMLError(f"cannot release {unknown}: only {list(self.RELEASABLE)}")
        self.fingerprint()
        pa = require("pyarrow", purpose="the columnar training table")
        n, m = len(self), len(self._cols.models)
        for name in names:  # a released field costs nothing: a blank matrix, a column of the null type
            setattr(self._cols, name, blank(n, m) if name in MATRICES else StrColumn(pa.nulls(n)))
        self._released = self._released | frozenset(names)
        self._records = None

    def _check_whole(self, what: str, field: str | None = None) -> None:
        if (field in self._released) if field else self._released:
            raise RouterMLError(f"this table's {', '.join(sorted(self._released))} were released to save memory, "
                                f"so its {what} cannot be read; load the data again for them")

    @property
    def quality(self) -> np.ndarray:
        """``(n_records, n_models)`` quality in [0, 1]; NaN = no outcome."""
        return self._public("quality")

    @property
    def cost(self) -> np.ndarray:
        """``(n_records, n_models)`` cost in USD; NaN = no outcome or cost unknown."""
        return self._public("cost")

    @property
    def propensity(self) -> np.ndarray:
        """``(n_records, n_models)`` propensity in (0, 1]; NaN = no outcome or not logged."""
        return self._public("propensity")

    @property
    def input_tokens(self) -> np.ndarray:
        """``(n_records, n_models)`` prompt tokens (float64, exact integers; a copy when the table
        stores them as float32); NaN = not logged."""
        return self._public("input_tokens").astype(np.float64, copy=False)

    @property
    def output_tokens(self) -> np.ndarray:
        """``(n_records, n_models)`` completion tokens (float64, exact integers; a copy when the table
        stores them as float32); NaN = not logged."""
        return self._public("output_tokens").astype(np.float64, copy=False)

    @property
    def latency_s(self) -> np.ndarray:
        """``(n_records, n_models)`` latency in seconds; NaN = not logged."""
        return self._public("latency_s")

    def responses(self, model: str) -> np.ndarray:
        """``model``'s answer text on each record: an object array of ``str`` (``""`` when the model
        produced nothing), ``None`` where the record carries no response for it."""
        self._check_whole("responses", "responses")
        if model not in self.models:
            raise RouterMLError(f"no model {model!r} in this table (models: {', '.join(self.models)})")
        out = np.full(len(self), None, dtype=object)
        column = self._cols.responses
        for row in np.flatnonzero(~column.is_null()):
            out[row] = json.loads(column[int(row)]).get(model)
        return out

    def response_counts(self) -> dict[str, int]:
        """How many records carry a response of each model (0 for every model of most traffic)."""
        counts = dict.fromkeys(self.models, 0)
        if "responses" in self._released:
            return counts
        for text in self._cols.responses.plain().drop_null().to_pylist():
            for model in json.loads(text):
                if model in counts:
                    counts[model] += 1
        return counts

    def group_values(self, field: str) -> np.ndarray:
        """Each record's ``task`` or ``metadata.<key>`` as a numpy str array ('' where missing)."""
        if field == "task":
            pc = require("pyarrow.compute", purpose="the columnar training table")
            values = pc.fill_null(self._cols.task.plain(), "").to_numpy(zero_copy_only=False)
            return np.asarray(values, dtype=str) if len(values) else np.asarray([], dtype=str)
        if field.startswith("metadata.") and len(field) > len("metadata."):
            key = field.removeprefix("metadata.")
            return _metadata_values(self._cols.metadata, key)
        raise RouterMLError(f"router.groups takes 'task' or 'metadata.<key>', got {field!r}")

    def metadata_keys(self, sample: int = 20000) -> list[str]:
        """The ``metadata`` keys with text, integer or boolean values, sorted, seen in the distinct
        metadata objects of dictionary-encoded chunks or the first ``sample`` records of the others."""
        pa = require("pyarrow", purpose="the columnar training table")
        keys: set[str] = set()
        left = sample
        array = self._cols.metadata.array
        for chunk in array.chunks if isinstance(array, pa.ChunkedArray) else [array]:
            if pa.types.is_dictionary(chunk.type):
                texts = chunk.dictionary.to_pylist()
            elif left > 0:
                texts, left = chunk.slice(0, left).to_pylist(), left - min(left, len(chunk))
            else:
                continue
            for text in texts:
                if text:
                    keys.update(k for k, v in json.loads(text).items() if isinstance(v, str | int) and v != "")
        return sorted(keys)

    def fingerprint(self) -> str:
        """sha256 over every column, in order: the data's identity (the same for the same records
        whichever file format they came from)."""
        if self._fingerprint is None:
            self._fingerprint = self._cols.digest(self._cols.models)
        return self._fingerprint

    def summary(self) -> dict[str, Any]:
        """Counts and per-model coverage, mean quality, mean cost, propensity coverage (the share of
        the model's outcomes that carry a propensity) and min propensity (``None`` when unknown)."""
        pc = require("pyarrow.compute", purpose="the columnar training table")
        n = len(self)
        quality, cost, propensity = self.quality, self.cost, self.propensity
        coverage, mean_quality, mean_cost, p_coverage, p_min = {}, {}, {}, {}, {}
        outcomes = 0
        for j, model in enumerate(self.models):  # a column at a time: no (n, models) temporaries
            q = quality[:, j][~np.isnan(quality[:, j])]
            c = cost[:, j][~np.isnan(cost[:, j])]
            p = propensity[:, j][~np.isnan(propensity[:, j])]
            coverage[model] = q.size / n if n else 0.0
            outcomes += q.size
            mean_quality[model] = float(q.mean()) if q.size else None
            mean_cost[model] = float(c.mean()) if c.size else None
            p_coverage[model] = p.size / q.size if q.size else 0.0
            p_min[model] = float(p.min()) if p.size else None
        prefs = self._cols.preferences
        n_prefs = sum(len(json.loads(p)) for p in prefs.plain().drop_null().to_pylist())
        return {
            "records": n,
            "models": list(self.models),
            "coverage": coverage,
            "mean_quality": mean_quality,
            "mean_cost": mean_cost,
            "propensity_coverage": p_coverage,
            "min_propensity": p_min,
            "outcomes": outcomes,
            "preferences": n_prefs,
            "chat_records": int(self._cols.chat.sum()),
            "responses": self.response_counts(),
            "tasks": int(pc.count_distinct(self._cols.task.plain(), mode="only_valid").as_py()),
            "fingerprint": self.fingerprint(),
        }


def _metadata_values(column: StrColumn, key: str) -> np.ndarray:
    """``str(metadata[key])`` per row ('' where missing); a dictionary-encoded chunk parses each
    distinct metadata object once and maps its rows through the indices."""
    pa = require("pyarrow", purpose="the columnar training table")

    def value(text: str | None) -> str:
        found = None if text is None else json.loads(text).get(key)
        return "" if found is None else str(found)  # 0 and false are groups too

    array = column.array
    parts = []
    for chunk in array.chunks if isinstance(array, pa.ChunkedArray) else [array]:
        if pa.types.is_dictionary(chunk.type):
            distinct = np.asarray([value(t) for t in chunk.dictionary.to_pylist()] + [""], dtype=str)
            indices = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            parts.append(distinct[indices])  # -1 (no metadata) picks the trailing ''
        else:
            parts.append(np.asarray([value(t) for t in chunk.to_pylist()], dtype=str))
    return np.concatenate(parts) if parts else np.asarray([], dtype=str)
