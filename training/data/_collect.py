"""What the loader keeps while it reads: committed column chunks, a sample-id index, merged records."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from router_ml.optional import require
from training.data.batches import Locations
from training.data.columns import (
    MATRICES,
    STRINGS,
    Assembler,
    Columns,
    StrColumn,
    blank,
    concat,
    is_blank,
    join_strings,
)
from training.data.schema import Record
from training.data.spill import SpillWriter

__all__ = ["Collector", "id_hashes"]


def id_hashes(ids: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a sample_id, their 64-bit hashes). ``hash`` is salted per process, which is fine:
    the index lives only as long as one load."""
    rows = np.fromiter((i for i, s in enumerate(ids) if s is not None), dtype=np.int64)
    hashes = np.fromiter((hash(ids[i]) for i in rows), dtype=np.int64, count=len(rows))
    return rows, hashes


class _IdIndex:
    """sample_id hash -> first row, as sorted runs merged like a log-structured tree: duplicate
    detection at 10M rows without a dict of 10M strings. A hash hit is confirmed on the ids."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        run = (hashes[order], rows[order])
        while self.runs and len(self.runs[-1][0]) <= len(run[0]):
            last = self.runs.pop()
            h, r = np.concatenate([last[0], run[0]]), np.concatenate([last[1], run[1]])
            del last, run  # at 10M rows each copy is 80 MB: hold as few at once as possible
            order = np.argsort(h, kind="stable")
            h = h[order]
            r = r[order]
            del order
            run = (h, r)
        self.runs.append(run)

    def hits(self, hashes: np.ndarray) -> np.ndarray:
        """Which of ``hashes`` some added row shares (maybe by collision)."""
        out = np.zeros(len(hashes), dtype=bool)
        for h, _ in self.runs:
            pos = np.minimum(np.searchsorted(h, hashes), len(h) - 1)
            out |= h[pos] == hashes
        return out

    def rows(self, value: int) -> list[int]:
        found: list[int] = []
        for h, r in self.runs:
            lo, hi = np.searchsorted(h, value, "left"), np.searchsorted(h, value, "right")
            found.extend(int(x) for x in r[lo:hi])
        return sorted(found)


def _joined(parts: list[Locations]) -> Locations:
    """One Locations for many (numbered ones stay numbers when they share a template)."""
    if all(p.strings is None and p.template == parts[0].template for p in parts):
        return Locations(parts[0].template, np.concatenate([p.numbers for p in parts]))
    return Locations(strings=[p[i] for p in parts for i in range(len(p))])


class _Numbers:
    """The kept rows' matrices, each one allocation grown in place (``ndarray.resize``: a realloc,
    no second copy of the data), so a load never holds its matrices twice. A field no row has carried
    yet takes no memory (None here, a :func:`~training.data.columns.blank` at the end). No view of
    them is handed out before :meth:`finish`."""

    def __init__(self) -> None:
        self.models: dict[str, int] = {}
        self.n = 0
        self.arrays: dict[str, np.ndarray | None] = dict.fromkeys(MATRICES)
        self.arrays["rank"] = np.full((0, 0), -1, dtype=np.int8)
        self.arrays["chat"] = np.zeros(0, dtype=bool)

    @staticmethod
    def _fill(name: str) -> Any:
        return -1 if name == "rank" else (False if name == "chat" else np.nan)

    def append(self, cols: Columns) -> None:
        new = [m for m in cols.models if m not in self.models]
        if new:  # a model not seen before: one more column (a copy, rare after the first batches)
            base = len(self.models)
            self.models.update((m, base + i) for i, m in enumerate(new))
            for name, a in self.arrays.items():
                if a is not None and a.ndim == 2:
                    wider = np.full((len(a), len(self.models)), self._fill(name), dtype=a.dtype)
                    wider[:, :a.shape[1]] = a
                    self.arrays[name] = wider
        k, cap = len(cols), len(self.arrays["chat"])
        if self.n + k > cap:
            grown = max(self.n + k, cap + cap // 8, 4096)  # resize zero-fills: unused room is resident
            for a in self.arrays.values():
                if a is not None:
                    a.resize((grown, *a.shape[1:]), refcheck=False)
            for name, a in self.arrays.items():
                if a is not None:
                    a[cap:] = self._fill(name)
        where = np.array([self.models[m] for m in cols.models], dtype=np.int64)
        for name in (*MATRICES, "rank"):
            values = getattr(cols, name)
            if is_blank(values):
                continue  # all NaN: what the rows already hold
            a = self.arrays[name]
            if a is None:  # the first values of this field: its matrix starts now, in the batch's dtype
                a = self.arrays[name] = np.full((len(self.arrays["chat"]), len(self.models)), np.nan,
                                                dtype=values.dtype)
            elif values.dtype != a.dtype and np.result_type(values, a) != a.dtype:  # float32 tokens widen
                a = self.arrays[name] = a.astype(np.result_type(values, a))
            a[self.n:self.n + k, where] = values
        self.arrays["chat"][self.n:self.n + k] = cols.chat
        self.n += k

    def _get(self, name: str, rows: slice) -> np.ndarray:
        a = self.arrays[name]
        return blank(len(range(self.n)[rows]), len(self.models)) if a is None else a[rows]

    def rows(self, g: int) -> dict[str, np.ndarray]:
        return {name: self._get(name, slice(g, g + 1)).copy() for name in self.arrays}

    def finish(self) -> dict[str, np.ndarray]:
        for a in self.arrays.values():
            if a is not None:
                a.resize((self.n, *a.shape[1:]), refcheck=False)
        return {name: self._get(name, slice(0, self.n)) for name in self.arrays}


def _text_bytes(column: StrColumn) -> int:
    return column.array.nbytes


def _no_text(n: int) -> StrColumn:
    """A stand-in text column of ``n`` rows that costs nothing (Arrow nulls of the null type), for the
    row shuffling of :meth:`Collector.finish` while the real texts are on disk."""
    return StrColumn(require("pyarrow", purpose="the columnar training table").nulls(n))


class Collector:
    """The rows kept so far, in order (global row numbers), with their locations: numbers in
    :class:`_Numbers`, strings as the batches' Arrow arrays (joined without a copy at the end).

    Once the kept texts pass ``text_budget`` bytes they move to a spill file
    (:class:`~training.data.spill.SpillWriter`, in row order) and each later batch's texts are
    appended there as it is kept; the strings of a spilled part hold no ``text``."""

    def __init__(self, text_budget: int | None = None) -> None:
        self.text_budget = text_budget
        self.text_bytes = 0
        self.spill: SpillWriter | None = None
        self.numbers = _Numbers()
        self.strings: list[dict[str, StrColumn]] = []
        self.locations: list[Locations] = []
        self.starts: list[int] = []
        self.n = 0
        self.ids = _IdIndex()
        self.patches: dict[int, Record] = {}

    def _part(self, g: int) -> tuple[int, int]:
        c = bisect.bisect_right(self.starts, g) - 1
        return c, g - self.starts[c]

    def location(self, g: int) -> str:
        c, i = self._part(g)
        return self.locations[c][i]

    def record(self, g: int) -> Record:
        if g in self.patches:
            return self.patches[g]
        c, i = self._part(g)
        strings = {name: column.take([i]) for name, column in self.strings[c].items()}
        if "text" not in strings:
            strings["text"] = StrColumn.from_values([self.spill.text(g)])
        return Columns(models=tuple(self.numbers.models), **self.numbers.rows(g), **strings).record(0)

    def find(self, sample_id: str) -> int | None:
        """The row holding ``sample_id``, if one was kept."""
        for g in self.ids.rows(hash(sample_id)):
            c, i = self._part(g)
            if self.strings[c]["sample_id"][i] == sample_id:
                return g
        return None

    def commit(self, columns: Columns, locations: Locations) -> None:
        if not len(columns):
            return
        columns = columns.compact()  # batch by batch, so the kept rows never sit uncompressed
        rows, hashes = id_hashes(columns.sample_id.to_list())
        self.ids.add(hashes, rows + self.n)
        self.numbers.append(columns)
        self.strings.append({name: getattr(columns, name) for name in STRINGS})
        self._spill_texts(columns.text)
        self.locations.append(locations)
        self.starts.append(self.n)
        self.n += len(columns)

    def _spill_texts(self, text: StrColumn) -> None:
        """Move the kept texts to disk once they pass the budget (then every new part's at once)."""
        if self.spill is None:
            self.text_bytes += _text_bytes(text)
            if self.text_budget is None or self.text_bytes <= self.text_budget:
                return
            self.spill = SpillWriter(self.text_budget)
        for part in self.strings:
            if "text" in part:
                self.spill.append(part.pop("text"))

    def finish(self) -> Columns:
        """All kept rows as one set of columns, merged duplicates in place of their first row.
        The collector is spent afterwards except for :meth:`location` (its id index is dropped)."""
        self.ids = _IdIndex()  # duplicates are settled: 16 bytes a row that the table does not need
        names = STRINGS if self.spill is None else [name for name in STRINGS if name != "text"]
        strings = {name: join_strings([part[name] for part in self.strings]) for name in names}
        spilled = None
        if self.spill is not None:
            spilled = self.spill.finish()
            strings["text"] = _no_text(len(spilled))
        columns = Columns(models=tuple(self.numbers.models), **self.numbers.finish(), **strings)
        self.numbers, self.strings, self.spill = _Numbers(), [], None
        if self.patches:
            rows = sorted(self.patches)
            asm = Assembler()
            for g in rows:
                asm.add_record(self.patches[g])
            patched = asm.finish()
            if spilled is not None:  # a merge keeps the text (records with different texts conflict)
                patched = replace(patched, text=_no_text(len(patched)))
            index = np.arange(len(columns))
            index[rows] = len(columns) + np.arange(len(rows))
            columns = concat([columns, patched]).take(index).compact()
        if spilled is not None:
            columns = replace(columns, text=spilled)
        self.locations = [_joined(self.locations)] if self.locations else [Locations(strings=[])]
        self.starts, self.patches = [0], {}
        return columns
