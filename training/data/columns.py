"""Columnar storage behind :class:`~training.data.table.TrafficTable`: matrices and Arrow strings.

A table of 10M records cannot hold a Python ``Record`` (a dict of ``Outcome`` objects) per row, so
the table keeps what records hold as columns: one ``(n, m)`` float64 matrix per outcome field
(NaN = unset), an int8 ``rank`` matrix (each outcome's position in its record, so records and the
model order come back exactly), and Arrow ``large_string`` arrays (offsets + UTF-8 bytes, about
``len + 8`` bytes a row) for the texts and for the free-form parts stored as canonical JSON text
(messages, metadata, preferences, and the outcomes' response texts as one ``{model: text}`` object
per row - null for the rows that carry none, which is most logged traffic).

:class:`Assembler` builds columns a row at a time from either a validated :class:`Record` or the
fast readers' pre-checked values; :func:`concat` and :meth:`Columns.take` combine and select them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from router_ml.optional import require
from training.data.schema import OUTCOME_FIELDS, Outcome, Preference, Record

__all__ = ["MATRICES", "STRINGS", "Assembler", "Columns", "StrColumn", "blank", "canonical_json", "concat", "is_blank",
           "join_strings"]

_CHUNK = 65536
STRINGS = ("text", "messages", "sample_id", "task", "timestamp", "metadata", "preferences", "responses")


def _pa():
    return require("pyarrow", purpose="the columnar training table")


def canonical_json(value: Any) -> str:
    """The one JSON spelling of messages/metadata/preferences in a table (ASCII, so lone surrogates
    survive, and identical whichever reader produced the value - the fingerprint hashes it)."""
    return json.dumps(value, ensure_ascii=True, default=str)


class StrColumn(Sequence[str]):
    """A read-only sequence of strings (``None`` where unset) backed by one Arrow array.

    Indexing with an int gives a ``str``; a slice or an index array gives a plain ``list`` (what
    tokenizers and featurizers expect); iteration converts 64k values at a time.
    """

    __slots__ = ("array",)

    def __init__(self, array: Any):
        """``array``: a ``large_string`` Arrow array or chunked array (kept as it is, no copy)."""
        self.array = array

    @classmethod
    def from_values(cls, values: Iterable[str | None]) -> StrColumn:
        pa = _pa()
        return cls(pa.array(values if isinstance(values, list) else list(values), type=pa.large_string()))

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self.array))
            if step == 1:
                return self.array.slice(start, max(stop - start, 0)).to_pylist()
            index = range(start, stop, step)
        if isinstance(index, int | np.integer):
            i = int(index)
            return self.array[i + len(self.array) if i < 0 else i].as_py()
        return self.take(index).to_list()

    def __iter__(self) -> Iterator[str]:
        for block in self.blocks():
            yield from block.to_pylist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StrColumn):
            return len(self) == len(other) and self.digest() == other.digest()
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StrColumn({len(self)} strings)"

    def plain(self) -> Any:
        """The values as ``large_string`` (decoded where the column is dictionary-encoded)."""
        pa = _pa()
        return self.array if pa.types.is_large_string(self.array.type) else self.array.cast(pa.large_string())

    def compact(self) -> StrColumn:
        """Dictionary-encoded when few distinct values repeat (a task, templated metadata): 4 bytes a row."""
        pa = _pa()
        pc = require("pyarrow.compute", purpose="the columnar training table")
        n = len(self.array)
        if n < 1024 or not pa.types.is_large_string(self.array.type):
            return self
        if pc.count_distinct(self.array.slice(0, 4096), mode="all").as_py() > 1024:
            return self  # mostly distinct values: encoding would not pay
        encoded = pc.dictionary_encode(self.array)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.unify_dictionaries()
        dictionary = encoded.chunk(0).dictionary if isinstance(encoded, pa.ChunkedArray) and encoded.num_chunks \
            else getattr(encoded, "dictionary", None)
        return StrColumn(encoded) if dictionary is not None and len(dictionary) <= n // 4 else self

    def to_list(self) -> list[str | None]:
        return self.array.to_pylist()

    def take(self, indices: Any) -> StrColumn:
        pa = _pa()
        return StrColumn(self.array.take(pa.array(np.asarray(indices, dtype=np.int64))))

    def is_null(self) -> np.ndarray:
        return self.array.is_null().to_numpy(zero_copy_only=False)

    def null_count(self) -> int:
        return int(self.array.null_count)

    def blocks(self, size: int = _CHUNK) -> Iterator[Any]:
        """The values ``size`` rows at a time, each a plain (one-chunk) ``large_string`` Arrow array."""
        pa = _pa()
        for start in range(0, len(self.array), size):
            part = StrColumn(self.array.slice(start, size)).plain()
            if isinstance(part, pa.ChunkedArray):
                part = part.combine_chunks() if part.num_chunks else pa.array([], pa.large_string())
            yield part

    def digest(self, into: Any = None) -> str:
        """sha256 of the values (length-prefixed UTF-8, -1 for null), whatever the Arrow layout."""
        pc = require("pyarrow.compute", purpose="the columnar training table")
        h = into if into is not None else hashlib.sha256()
        for part in self.blocks():
            lengths = pc.fill_null(pc.binary_length(part), -1).to_numpy(zero_copy_only=False)
            h.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
            if len(part):  # the values between the slice's first and last offset, without a copy
                offsets = np.frombuffer(part.buffers()[1], dtype="<i8")[part.offset:part.offset + len(part) + 1]
                h.update(memoryview(part.buffers()[2])[int(offsets[0]):int(offsets[-1])])
        return h.hexdigest()


MATRICES = ("quality", "cost", "input_tokens", "output_tokens", "latency_s", "propensity")


def blank(n: int, m: int) -> np.ndarray:
    """An all-NaN float64 ``(n, m)`` matrix that takes no memory: a read-only zero-stride view, which
    is how a field no record carries (propensity or latency of most data) is stored. Reading it, and
    slicing it, costs nothing; arithmetic on it allocates its result as usual."""
    return np.broadcast_to(np.float64(np.nan), (n, m))


def is_blank(matrix: np.ndarray) -> bool:
    """Whether ``matrix`` is a :func:`blank` (zero strides: every element is the one NaN)."""
    return matrix.ndim == 2 and matrix.strides == (0, 0) and matrix.size > 0


@dataclass
class Columns:
    """The columns of ``n`` records over ``models`` (the storage order: first appearance).

    Matrices are ``(n, len(models))``: the six outcome fields as float64 with NaN = unset (quality
    NaN = no outcome), ``rank`` int8, each outcome's position among its record's outcomes (-1 =
    none). ``chat`` marks records given as messages (their ``prompt`` is None, ``text`` derived).
    """

    models: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    latency_s: np.ndarray
    propensity: np.ndarray
    rank: np.ndarray
    chat: np.ndarray
    text: StrColumn
    messages: StrColumn
    sample_id: StrColumn
    task: StrColumn
    timestamp: StrColumn
    metadata: StrColumn
    preferences: StrColumn
    responses: StrColumn

    def __len__(self) -> int:
        return len(self.chat)

    def take(self, indices: Any) -> Columns:
        """The rows at ``indices`` (an int array or a boolean mask)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in (*MATRICES, "rank", "chat"):
            m = out[name]
            out[name] = blank(len(idx), m.shape[1]) if is_blank(m) else m[idx]
        for name in STRINGS:
            out[name] = out[name].take(idx)
        return Columns(**out)

    def with_models(self, models: Sequence[str]) -> Columns:
        """The same rows with matrix columns in ``models`` order (absent models: all unset)."""
        models = tuple(models)
        if models == self.models:
            return self
        where = {m: j for j, m in enumerate(self.models)}
        src = np.array([where.get(m, -1) for m in models], dtype=np.int64)
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in (*MATRICES, "rank"):
            old = out[name]
            if is_blank(old):
                out[name] = blank(len(self), len(models))
                continue
            new = np.full((len(self), len(models)), -1 if name == "rank" else np.nan, dtype=old.dtype)
            ok = src >= 0
            new[:, ok] = old[:, src[ok]]
            out[name] = new
        out["models"] = models
        return Columns(**out)

    def compact(self) -> Columns:
        """The same rows in less memory: repetitive strings dictionary-encoded, a field no row carries
        as a :func:`blank`, token counts as float32 when every count is exact in it (below 2**24)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("task", "metadata", "timestamp", "preferences", "messages", "responses"):
            out[name] = out[name].compact()
        for name in MATRICES:
            if not is_blank(out[name]) and out[name].size and np.isnan(out[name]).all():
                out[name] = blank(*out[name].shape)
        for name in ("input_tokens", "output_tokens"):
            m = out[name]
            if is_blank(m):
                continue
            with np.errstate(invalid="ignore"):
                if m.dtype == np.float64 and not (m >= 2.0 ** 24).any():
                    out[name] = m.astype(np.float32)
        return Columns(**out)

    def first_appearance_order(self) -> tuple[str, ...]:
        """Models in order of first appearance over the records (outcomes, then preference models)."""
        n = len(self)
        keys: dict[str, tuple[int, int]] = {}
        if not n:
            return ()
        present = self.rank >= 0
        any_ = present.any(axis=0)
        first = np.argmax(present, axis=0)
        for j, m in enumerate(self.models):
            if any_[j]:
                keys[m] = (int(first[j]), int(self.rank[first[j], j]))
        pref_rows = np.flatnonzero(~self.preferences.is_null())
        for i in pref_rows:
            base = int((self.rank[i] >= 0).sum())
            seen: dict[str, None] = {}
            for p in json.loads(self.preferences[int(i)]):
                seen.update(dict.fromkeys((p["model_a"], p["model_b"])))
            for r, m in enumerate(seen):
                if m not in keys or keys[m] > (int(i), base + r):
                    keys[m] = (int(i), base + r)
        return tuple(sorted(keys, key=keys.__getitem__))

    def record(self, i: int) -> Record:
        """Rebuild record ``i`` (its outcomes in their original order)."""
        ranks = self.rank[i]
        outcomes = {}
        texts = self.responses[i]
        responses = json.loads(texts) if texts is not None else {}
        for j in sorted(np.flatnonzero(ranks >= 0), key=lambda j: ranks[j]):
            values = [self.quality[i, j], self.cost[i, j], self.input_tokens[i, j],
                      self.output_tokens[i, j], self.latency_s[i, j], self.propensity[i, j]]
            args = [None if v != v else float(v) for v in values]
            for k in (2, 3):
                args[k] = None if args[k] is None else int(args[k])
            outcomes[self.models[j]] = Outcome(*args, responses.get(self.models[j]))
        chat = bool(self.chat[i])
        prefs = self.preferences[i]
        meta = self.metadata[i]
        return Record(
            prompt=None if chat else self.text[i],
            messages=tuple(json.loads(self.messages[i])) if chat else None,
            outcomes=outcomes,
            preferences=tuple(Preference(**p) for p in json.loads(prefs)) if prefs is not None else (),
            sample_id=self.sample_id[i], task=self.task[i], timestamp=self.timestamp[i],
            metadata=json.loads(meta) if meta is not None else {},
        )

    def digest(self, models: Sequence[str]) -> str:
        """sha256 of every column (matrices in ``models`` order, NaN canonical): the data's identity."""
        cols = self.with_models(models)
        h = hashlib.sha256()
        h.update(json.dumps([len(cols), list(cols.models)]).encode())
        for name in MATRICES:
            m = getattr(cols, name)
            for start in range(0, len(m), _CHUNK):  # a block at a time: no full-size temporaries
                block = m[start:start + _CHUNK].astype("<f8")
                block[np.isnan(block)] = np.nan  # one NaN bit pattern, whichever a reader produced
                h.update(block.tobytes())
        h.update((cols.rank >= 0).astype(np.int8).tobytes())
        h.update(cols.chat.astype(np.int8).tobytes())
        for name in STRINGS:
            column = getattr(cols, name)
            if name == "responses" and column.null_count() == len(column):
                continue  # data without responses keeps the identity it had before they existed
            column.digest(h)
        return h.hexdigest()


def concat(parts: Sequence[Columns]) -> Columns:
    """Rows of ``parts`` one after another, over the union of their models (first-seen order):
    matrices in one allocation (of the parts' widest dtype), strings chunked (no copy)."""
    if len(parts) == 1:
        return parts[0]
    models: dict[str, None] = {}
    for part in parts:
        models.update(dict.fromkeys(part.models))
    n = sum(len(p) for p in parts)
    out: dict[str, Any] = {"models": tuple(models), "chat": np.concatenate([p.chat for p in parts])}
    names = [name for name in (*MATRICES, "rank") if not all(is_blank(getattr(p, name)) for p in parts)]
    for name in (*MATRICES, "rank"):
        if name not in names:
            out[name] = blank(n, len(models))
            continue
        dtype = np.result_type(*[getattr(p, name) for p in parts])
        out[name] = np.full((n, len(models)), -1 if name == "rank" else np.nan, dtype=dtype)
    where = {m: j for j, m in enumerate(models)}
    row = 0
    for part in parts:
        cols = np.array([where[m] for m in part.models], dtype=np.int64)
        for name in names:
            out[name][row:row + len(part), cols] = getattr(part, name)
        row += len(part)
    for name in STRINGS:
        out[name] = join_strings([getattr(p, name) for p in parts])
    return Columns(**out)


def join_strings(columns: Sequence[StrColumn]) -> StrColumn:
    """One chunked column of ``columns`` in order, without copying; dictionary-encoded chunks stay
    encoded (each chunk keeps its own dictionary). Where some parts are encoded and some not (a
    short last batch is never encoded), the minority's rows are converted: the plain ones encoded
    when most rows are encoded, else the encoded ones decoded."""
    pa = _pa()
    pc = require("pyarrow.compute", purpose="the columnar training table")
    encoded = [pa.types.is_dictionary(c.array.type) for c in columns]
    mixed = len({c.array.type for c in columns}) > 1
    encode = mixed and 2 * sum(len(c) for c, e in zip(columns, encoded, strict=True) if e) >= sum(map(len, columns))
    chunks: list = []
    for c, e in zip(columns, encoded, strict=True):
        array = c.array if not mixed or (e and encode) else c.plain()
        if mixed and encode and not e:
            array = pc.dictionary_encode(array)
        chunks.extend(array.chunks if isinstance(array, pa.ChunkedArray) else [array])
    return StrColumn(pa.chunked_array(chunks, type=chunks[0].type if chunks else pa.large_string()))


class Assembler:
    """Builds :class:`Columns` a row at a time (a reader's batch, or a list of records)."""

    def __init__(self) -> None:
        self.models: dict[str, int] = {}
        self.cells: list[tuple] = []  # (row, model index, rank, six outcome values)
        self.strings: dict[str, list] = {name: [] for name in STRINGS}
        self.chat: list[bool] = []

    def __len__(self) -> int:
        return len(self.chat)

    def add(self, *, text: str, messages: str | None, sample_id: str | None, task: str | None,
            timestamp: str | None, metadata: str | None, preferences: str | None,
            outcomes: Iterable[tuple[str, Sequence[float | None]]], responses: str | None = None) -> None:
        """Append one pre-validated row; ``outcomes`` yields (model, the six values in OUTCOME_FIELDS
        order, None or NaN where unset); ``responses``: the canonical JSON ``{model: text}`` or None."""
        row = len(self.chat)
        models = self.models
        cells = self.cells
        for rank, (model, values) in enumerate(outcomes):
            cells.append((row, models.setdefault(model, len(models)), rank, *values))
        s = self.strings
        s["text"].append(text)
        s["messages"].append(messages)
        s["sample_id"].append(sample_id)
        s["task"].append(task)
        s["timestamp"].append(timestamp)
        s["metadata"].append(metadata)
        s["preferences"].append(preferences)
        s["responses"].append(responses)
        self.chat.append(messages is not None)

    def add_record(self, record: Record) -> None:
        responses = {m: o.response for m, o in record.outcomes.items() if o.response is not None}
        self.add(
            text=record.text,
            messages=None if record.messages is None else canonical_json([dict(m) for m in record.messages]),
            sample_id=record.sample_id, task=record.task, timestamp=record.timestamp,
            metadata=canonical_json(dict(record.metadata)) if record.metadata else None,
            preferences=canonical_json([p.to_dict() for p in record.preferences]) if record.preferences else None,
            outcomes=((m, [getattr(o, k) for k in OUTCOME_FIELDS]) for m, o in record.outcomes.items()),
            responses=canonical_json(responses) if responses else None,
        )

    def finish(self) -> Columns:
        n, m = len(self.chat), len(self.models)
        mats = {name: np.full((n, m), np.nan) for name in MATRICES}
        rank = np.full((n, m), -1, dtype=np.int8)
        if self.cells:
            cells = np.array(self.cells, dtype=np.float64)
            rows, cols = cells[:, 0].astype(np.int64), cells[:, 1].astype(np.int64)
            if cells[:, 2].max() > 127:
                rank = rank.astype(np.int16)
            rank[rows, cols] = cells[:, 2]
            for k, name in enumerate(MATRICES):
                mats[name][rows, cols] = cells[:, 3 + k]
        return Columns(
            models=tuple(self.models), rank=rank, chat=np.array(self.chat, dtype=bool),
            **mats, **{name: StrColumn.from_values(v) for name, v in self.strings.items()})


def from_records(records: Iterable[Record]) -> Columns:
    """Columns of ``records`` (in order)."""
    asm = Assembler()
    for record in records:
        asm.add_record(record)
    return asm.finish()
