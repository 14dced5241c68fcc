"""The decision log: one JSON line per routed request, and feedback lines that rate them.

Two record types share one append-only JSONL file::

    {"type": "decision", "format_version": 1, "time": "2025-01-01T12:00:00.123Z", "request_id": "rml-...",
     "prompt_sha256": "...",
     "prompt": "...",                      # only when prompt logging is enabled
     "rule": null, "willingness_to_pay": 0.08, "scores": {"tiny-1b": 0.41, ...}, "chosen": "tiny-1b",
     "model": "small-8b", "provider_model": "small-8b", "fallbacks": [{"model": "tiny-1b", "upstream":
     "tiny-1b#0", "reason": "HTTP 500"}], "status": "ok", "stream": false, "input_tokens": 12,
     "output_tokens": 40, "cost_usd": 1.8e-05, "latency_s": 0.21, "routing_ms": 0.09,
     "propensity": 0.96, "explored": false,
     "policy": {"artifact_sha256": "...", "exploration": {"kind": "epsilon", "rate": 0.05, ...},
                "prices": {"tiny-1b": [1.3e-05, 8.6e-08], ...}, "willingness_to_pay": 0.08}}
    {"type": "feedback", "format_version": 1, "time": "...", "request_id": "rml-...", "quality": 1.0,
     "model": "small-8b"}                  # optional: which of the request's answers is rated

``propensity`` is the probability with which the routing policy chose ``chosen`` - 1.0 without
exploration and for pinned or rule-routed requests (:mod:`router_ml.exploration`) - so that the log
supports off-policy learning and evaluation; ``policy`` reproduces the decision: the sha256 of the
artifact's ``router.onnx`` (its manifest checksum), the exploration settings (null when off), the
routing prices per model as ``[fixed USD, USD per input token]`` and the knob used. Lines written
before these fields existed have none; readers take a missing ``propensity`` as 1.0 (no exploration).

Every line carries ``format_version`` (:data:`FORMAT_VERSION`); readers check it with
:func:`line_version`, so a log written by a newer release fails loudly instead of being misread.
Lines written before the field existed have none and are version 1. A feedback line's own fields
(what ``POST /v1/feedback``, ``router-ml feedback --file`` and the log share) are
:data:`FEEDBACK_FIELDS`: ``request_id``, ``quality`` or ``thumbs`` (``"up"`` is 1, ``"down"`` 0; the line
keeps both), an optional ``comment`` and an optional ``model``. Feedback without ``model`` rates the
answer the request returned. ``model`` rates that model's answer within the request: a cascade
(``training.cascade``) calls a cheap model, scores its answer and may escalate to a stronger one, so
its decision line carries a ``cascade`` object whose ``attempts`` list every call (model, status,
tokens, cost, latency, the scorer's score and, with prompt logging, the answer) - one request, several
answers, each of which can be rated. The ``decisions`` reader of ``training.data`` turns each rated
answer into an outcome.

Crash safety: each record is written with one ``os.write`` of a complete line to a file opened
with ``O_APPEND`` (``fsync=True`` adds an fsync per record). A process killed inside a write can
leave a truncated last line; opening the log moves such a fragment to ``<log>.partial`` and cuts it
off, so it is never merged into the next record. A write that fails part-way (a full disk) raises,
and the part it wrote is cut off at once, so the record is lost whole (the caller counts it) and the
next one starts its own line; where the file cannot be cut, the next record starts with a newline and
the fragment stays a line of its own, which readers reject as a corrupt line.

One writer per file: a log is held by the process writing it through an exclusive ``flock`` of
``<log>.lock`` beside it, taken when it opens and released when it closes or dies, so a second server
pointed at the same file is refused at start instead of rotating the first one's records away.
``router-ml feedback`` appends beside a live server (``exclusive=False``: one whole-line write per
record, no lock held while it appends, no rotation; the repair is left to a live server).

Rotation: when a write would pass ``max_bytes`` the file is renamed ``<stem>.1<suffix>`` (older ones
shift to ``.2`` ... ``.<backups>``, the oldest is deleted) and a new file starts.

Several writers (``router-ml serve --workers N``): each worker process writes its own file, so no two
processes ever append to one file - worker 0 the log's own path, worker ``k`` ``<stem>.w<k><suffix>``
(:func:`worker_log_path`; ``decisions.jsonl``, ``decisions.w1.jsonl``, ...), each rotated as above
(``decisions.w1.1.jsonl`` ...). A worker that dies and is restarted takes over its slot's file (one
writer at a time; opening repairs a line the dead one cut off). :func:`log_files` lists every file of
every writer, each writer's oldest first; :func:`merged_lines` reads them all as one stream in time
order (the ``time`` of each line; each writer's own order is kept), which is how the ``decisions``
reader of ``training.data`` reads a log and joins feedback to decisions, whichever worker wrote them.
"""

from __future__ import annotations

import glob
import heapq
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from router_ml import _json, formats
from router_ml.errors import RouterMLError

__all__ = ["DecisionLog", "FEEDBACK_FIELDS", "FORMAT_VERSION", "FeedbackError", "NewerFormatError", "VERSION_FIELD",
           "check_is_log", "feedback_from", "feedback_record", "line_version", "log_chains", "log_files",
           "merged_lines", "repair", "utc_now", "worker_log_path"]

#: the version of the line format this release writes (and the newest it reads)
FORMAT_VERSION = 1
#: the key of the version in every line; a line without it was written before versioning, i.e. version 1
VERSION_FIELD = formats.VERSION_FIELD
#: what a rating carries, in the feedback endpoint, a ``router-ml feedback --file`` line and the log alike
FEEDBACK_FIELDS = ("request_id", "quality", "thumbs", "comment", "model")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")


class FeedbackError(RouterMLError, ValueError):
    """A feedback record is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"field '{field}': {message}")


class NewerFormatError(RouterMLError, ValueError):
    """A log line was written by a newer router-ml than this one (its ``format_version`` is unknown here)."""


_second: list[tuple[int, str]] = [(-1, "")]  # the last whole second and its text: strftime once a second


def utc_now() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a ``Z``."""
    now = time.time()
    second, text = _second[0]  # one tuple, read at once: threads never pair one second with another's text
    if second != int(now):
        second = int(now)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second[0] = (second, text)
    return f"{text}.{int(now % 1 * 1000):03d}Z"


def line_version(obj: Mapping[str, Any]) -> int:
    """The format version of one parsed log line (1 when absent: an earlier release wrote it).

    Raises :class:`NewerFormatError` when the line is newer than this release reads, :class:`ValueError`
    when the version is not a positive integer; each says what to do, the caller adds the file and line."""
    version = obj.get(VERSION_FIELD, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"'{VERSION_FIELD}' must be a positive integer, got {version!r}; the line is corrupt")
    if version > FORMAT_VERSION:
        raise NewerFormatError(f"decision-log format version {version} is newer than this router-ml reads "
                         f"(up to {FORMAT_VERSION}); upgrade router-ml to read this log")
    return version


def feedback_from(obj: Any, *, logged: bool = False) -> dict[str, Any]:
    """A validated feedback record from a JSON object with :data:`FEEDBACK_FIELDS`.

    ``logged=False`` (a request body or a ratings file): any other key is an error. ``logged=True`` (a
    feedback line read back from the log): the line's envelope (type, version, time) is ignored, and
    its ``quality`` too when ``thumbs`` is present, since the writer stores both."""
    if not isinstance(obj, Mapping):
        raise FeedbackError("request_id", 'must be a JSON object {"request_id", "quality" | "thumbs"}')
    if not logged:
        unknown = sorted(set(obj) - set(FEEDBACK_FIELDS))
        if unknown:
            raise FeedbackError(unknown[0], f"unknown field; allowed: {', '.join(FEEDBACK_FIELDS)}")
    thumbs = obj.get("thumbs")
    quality = None if logged and thumbs is not None else obj.get("quality")
    return feedback_record(obj.get("request_id"), quality=quality, thumbs=thumbs, comment=obj.get("comment"),
                           model=obj.get("model"))


def feedback_record(request_id: Any, *, quality: Any = None, thumbs: Any = None,
                    comment: Any = None, model: Any = None) -> dict[str, Any]:
    """A validated feedback record: a ``quality`` in [0, 1] or ``thumbs`` ``"up"`` (1) / ``"down"`` (0), for
    the answer the request returned or, with ``model``, for that model's answer within the request (a
    cascade holds one answer per model it called)."""
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise FeedbackError("request_id", f"must be the request id a response carried (letters, digits, ._:-), "
                            f"got {request_id!r}")
    if (quality is None) == (thumbs is None):
        raise FeedbackError("quality", "give exactly one of 'quality' (a number in [0, 1]) or 'thumbs' (up/down)")
    if thumbs is not None:
        if thumbs not in ("up", "down"):
            raise FeedbackError("thumbs", f"must be \"up\" or \"down\", got {thumbs!r}")
        quality = 1.0 if thumbs == "up" else 0.0
    if isinstance(quality, bool) or not isinstance(quality, int | float) or not 0 <= quality <= 1:
        raise FeedbackError("quality", f"must be a number in [0, 1], got {quality!r}")
    record: dict[str, Any] = {"type": "feedback", VERSION_FIELD: FORMAT_VERSION, "time": utc_now(),
                              "request_id": request_id, "quality": float(quality)}
    if thumbs is not None:
        record["thumbs"] = thumbs
    if comment is not None:
        if not isinstance(comment, str) or len(comment) > 10_000:
            raise FeedbackError("comment", "must be a string of at most 10,000 characters")
        record["comment"] = comment
    if model is not None:
        if not isinstance(model, str) or not model.strip() or len(model) > 200:
            raise FeedbackError("model", f"must be the name of a model the request called (a non-empty string of "
                                f"at most 200 characters), got {model!r}; leave it out to rate the returned answer")
        record["model"] = model
    return record


def _rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.stem}.{n}{path.suffix}")


def worker_log_path(path: str | Path, slot: int) -> Path:
    """The file worker ``slot`` of ``router-ml serve --workers N`` writes: slot 0 ``path`` itself (so one
    worker writes exactly what a single process always wrote), slot ``k`` ``<stem>.w<k><suffix>``."""
    path = Path(path)
    if slot < 0:
        raise ValueError(f"a worker slot is >= 0, got {slot}")
    return path if slot == 0 else path.with_name(f"{path.stem}.w{slot}{path.suffix}")


def _chain(path: Path) -> list[Path]:
    """One writer's files, oldest first: ``<stem>.N<suffix>`` ... ``.1``, then ``path`` itself."""
    pattern = re.compile(re.escape(path.stem) + r"\.(\d+)" + re.escape(path.suffix) + "$")
    rotated = sorted(((int(m.group(1)), p) for p in path.parent.glob(f"{glob.escape(path.stem)}.*{path.suffix}")
                      if (m := pattern.match(p.name))), reverse=True)
    return [p for _, p in rotated] + ([path] if path.exists() else [])


def log_chains(path: str | Path) -> list[list[Path]]:
    """Each writer's files (oldest first): the log's own (a single process, or worker 0), then every
    worker ``k``'s (``<stem>.w<k><suffix>`` and its rotations) by slot; writers with no file are left out."""
    path = Path(path)
    worker = re.compile(re.escape(path.stem) + r"\.w(\d+)(?:\.\d+)?" + re.escape(path.suffix) + "$")
    slots = sorted({int(m.group(1)) for p in path.parent.glob(f"{glob.escape(path.stem)}.w*")
                    if (m := worker.match(p.name))})
    chains = [_chain(path)] + [_chain(worker_log_path(path, k)) for k in slots if k > 0]
    return [c for c in chains if c]


def log_files(path: str | Path) -> list[Path]:
    """Every file of a (rotated, possibly multi-worker) log: each writer's oldest first, writer by writer
    (:func:`log_chains`). :func:`merged_lines` reads them in time order."""
    return [file for chain in log_chains(path) for file in chain]


_TIME = re.compile(rb'"time"\s*:\s*"([^"]*)"')


def _timed(chain: list[Path], writer: int) -> Iterator[tuple[tuple[bytes, int], Path, int, bytes]]:
    last = b""
    for file in chain:
        with open(file, "rb") as f:
            for n, raw in enumerate(f, start=1):
                m = _TIME.search(raw, 0, 400)  # "time" is the third key of every line the writer makes
                if m:
                    last = max(last, m.group(1))  # a clock step back never reorders one writer's lines
                yield (last, writer), file, n, raw


def merged_lines(path: str | Path) -> Iterator[tuple[Path, int, bytes]]:
    """Every line of every file of the log at ``path`` as ``(file, line number, raw bytes)``: one writer's
    lines in their file order, several writers' merged by their ``time`` (ties: the lower slot first).

    A line without a readable time keeps its place after its writer's previous line, so a corrupt line
    is still yielded (and reported by the reader) rather than dropped."""
    chains = log_chains(path)
    streams = [_timed(chain, w) for w, chain in enumerate(chains)]
    for _, file, n, raw in heapq.merge(*streams, key=lambda item: item[0]):
        yield file, n, raw


def repair(path: str | Path) -> int:
    """Cut a truncated last line (no newline: a crash inside a write) off ``path`` and append it, as one
    line, to ``<path>.partial``. Returns the number of bytes moved aside (0 when the file was whole)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # find the last newline, reading backwards in blocks
        end, cut = size, 0
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            i = block.rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            end = start
        f.seek(cut)
        fragment = f.read()
        with open(path.with_name(path.name + ".partial"), "ab") as aside:
            aside.write(fragment.replace(b"\n", b" ") + b"\n")
        f.truncate(cut)
    return size - cut


#: how every line the writer makes begins (``type`` is the first key of every record), whitespace aside
_RECORD_STARTS = (b'{"type":"decision"', b'{"type":"feedback"')


def _begins_like_a_record(line: bytes) -> bool:
    """Whether ``line`` (whole, or cut off anywhere by a crash) begins the way every log line begins."""
    start = line[:200].translate(None, b" \t\r\n")
    return start.startswith(b"{") and any(start.startswith(s) or s.startswith(start) for s in _RECORD_STARTS)


def check_is_log(path: str | Path) -> None:
    """Refuse to append to (and repair) an existing file that is not a decision log - a mistyped
    ``--decision-log`` naming a catalog, a ratings file or a data file: its first line must be a
    ``decision`` or ``feedback`` record. A first line without a newline (a crash inside the log's first
    write, or one long first line) passes only when it begins as every record does
    (``{"type": "decision"`` or ``{"type": "feedback"``), so a one-line JSON file of the user's is never
    taken for a crashed log and cut off."""
    path = Path(path)
    if path.is_dir():
        raise RouterMLError(f"decision log {path}: is a directory; give a file path")
    if not path.is_file():  # absent (a new log), or a device such as /dev/null
        return
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head:
        return
    line, newline, _ = head.partition(b"\n")
    if not newline:
        ok = _begins_like_a_record(head)
    else:
        try:
            first = _json.loads(line)
        except ValueError:
            first = None
        ok = isinstance(first, dict) and first.get("type") in ("decision", "feedback")
    if not ok:
        raise RouterMLError(f"decision log {path}: exists and is not a router-ml decision log (its first line is not "
                            "a decision or feedback record); give another path - nothing was written to it")


def _lock(path: Path) -> tuple[int | None, str | None]:
    """Take the exclusive ``flock`` of ``<path>.lock``: ``(its file descriptor, None)`` (closing it releases
    the lock), ``(None, pid)`` when another process holds it, ``(None, None)`` for a device such as
    /dev/null, which has no lock beside it."""
    if path.exists() and not path.is_file():
        return None, None
    try:
        import fcntl  # POSIX; elsewhere one writer per file is the operator's to keep
    except ImportError:
        return None, None
    real = Path(os.path.realpath(path))  # two names of one file (a symlink) share one lock
    lock = real.with_name(real.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise RouterMLError(f"decision log {path}: cannot create its lock file {lock} ({exc.strerror}); make the "
                            "directory writable or give another --decision-log path") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        return None, holder
    except OSError:  # a file system without flock (some network mounts): as on a platform without fcntl
        os.close(fd)
        return None, None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the message of a refused second writer
    return fd, None


def _default(value: Any) -> Any:
    return str(value)


class DecisionLog:
    """An append-only, size-rotated JSONL log (see the module doc). Thread-safe; close it when done.

    ``exclusive`` (the default): hold the log's lock for this object's life - one writer per file, a second
    one is refused with an error naming the file. ``exclusive=False``: append beside the process that holds
    it, if any (``router-ml feedback`` while ``router-ml serve`` runs): the lock is only taken, when free, to
    repair a crash's remnant at opening, then released; such a log never rotates (its writer does)."""

    def __init__(self, path: str | Path, *, max_bytes: int = 64 << 20, backups: int = 5, fsync: bool = False,
                 exclusive: bool = True):
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be at least 1024, got {max_bytes}")
        if backups < 1:
            raise ValueError(f"backups must be at least 1, got {backups}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self.repaired_bytes = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._torn = False  # a failed write left a fragment at the end that could not be cut off
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_is_log(self.path)
        self._lock_fd, holder = _lock(self.path)
        # the writer rotates (a device, an appender beside a live writer never does), lock or no lock to take
        self._rotates = exclusive and (not self.path.exists() or self.path.is_file())
        if holder is not None and exclusive:
            if holder == str(os.getpid()):
                raise RouterMLError(f"decision log {self.path}: this process already writes it through another "
                                    "DecisionLog (or a client that opened one); close that one first, or share it")
            raise RouterMLError(f"decision log {self.path}: process {holder} is already writing it (it holds "
                                f"{self.path}.lock), and two writers on one file lose records when it rotates; give "
                                "this server its own --decision-log path (--workers N shares one path safely: each "
                                "worker writes its own file) or stop the other one first")
        try:
            if holder is None:  # with a live writer, a line it is writing is no crash remnant
                self.repaired_bytes = repair(self.path)
            self._open()
        except BaseException:
            self._unlock()
            raise
        if not exclusive:  # a server starting while this appends a few lines must not be refused
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open(self) -> None:
        # read access too: a failed write's fragment is read back before it is cut off (_cut)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        oldest = _rotated(self.path, self.backups)
        if oldest.exists():
            oldest.unlink()
        for n in range(self.backups - 1, 0, -1):
            src = _rotated(self.path, n)
            if src.exists():
                src.rename(_rotated(self.path, n + 1))
        self.path.rename(_rotated(self.path, 1))
        self._open()

    def _cut(self, fragment: bytes) -> None:
        """After a write failed part-way: cut the ``fragment`` it left off the end of the file (only when the
        end is still that fragment: ``router-ml feedback`` may have appended since), so that the next record
        starts a line; where that cannot be done, the next record starts with a newline instead."""
        assert self._fd is not None
        try:
            end = os.fstat(self._fd).st_size
            start = end - len(fragment)
            if start >= 0 and os.pread(self._fd, len(fragment), start) == fragment:
                os.ftruncate(self._fd, start)
                return
        except OSError:
            pass
        self._torn = True

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as one complete line. An :class:`OSError` (a full disk) means this record was not
        written, none of it: the log stays whole and the next record is written normally."""
        # JSON has no inf/NaN: written as null; a lone surrogate stays a JSON escape
        data = _json.dumps(record, default=_default) + b"\n"
        with self._lock:
            if self._fd is None:
                raise RouterMLError(f"decision log {self.path} is closed")
            # only the writer rotates (_rotates): never a device, nor an appender beside a live writer
            if self._rotates and self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            if self._torn:  # the fragment a failed write left stays a (corrupt) line of its own
                data = b"\n" + data
            view, written = memoryview(data), 0
            try:
                while written < len(data):
                    written += os.write(self._fd, view[written:])
            except OSError:
                if written:
                    self._cut(data[:written])
                raise
            self._torn = False
            self._size += len(data)
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._unlock()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
