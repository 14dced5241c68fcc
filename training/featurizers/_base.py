"""What every featurizer shares: the base class, the truncation rule, file digests and the cache root."""

from __future__ import annotations

import contextlib
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from router_ml.errors import RouterMLError
from router_ml.truncation import default_head, head_tail  # noqa: F401 - re-exported

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "Featurizer",
    "FeaturizerError",
    "cache_root",
    "default_head",
    "file_digest",
    "head_tail",
]

#: Token budget per prompt unless a featurizer is told otherwise (sentence-transformers' MiniLM default too).
DEFAULT_MAX_TOKENS = 256

_DIGEST_CHUNK = 1 << 20  # 1 MiB
_digests: dict[tuple[str, int, int], str] = {}


class FeaturizerError(RouterMLError, ValueError):
    """A featurizer cannot be built or used: unknown spec, missing files, unsupported model layout."""


class Featurizer(ABC):
    """Turns prompt texts into a float32 ``(n, dim)`` matrix for router training.

    Subclasses keep ``__init__`` cheap (store options, load nothing heavy) and load lazily, so building
    one, pickling it to a worker process or asking for ``identity()`` costs little.
    ``identity()`` names everything that determines the output: the feature cache is keyed by it.
    """

    #: Registry name of the featurizer kind.
    name: ClassVar[str] = "featurizer"
    #: Whether :func:`training.featurizers.featurize` may run shards in worker processes (CPU-light kinds).
    supports_multiprocessing: ClassVar[bool] = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of one feature vector."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description of everything that determines ``transform``'s output."""

    @abstractmethod
    def transform(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Features of ``texts`` as a ``(len(texts), dim)`` float32 array, one row per text, in order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def check_budget(max_tokens: int, head: int | None) -> int:
    """Validate a token budget and return the head length (default: :func:`default_head`)."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise FeaturizerError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if head is None:
        return default_head(max_tokens)
    if not isinstance(head, int) or not 0 <= head <= max_tokens:
        raise FeaturizerError(f"head must be an integer in [0, max_tokens={max_tokens}], got {head!r}")
    return head


def cache_root() -> Path:
    """Where router-ml caches distilled models and features: ``$ROUTER_ML_CACHE`` or ``~/.cache/router-ml``."""
    env = os.environ.get("ROUTER_ML_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "router-ml"
    if root.exists() and not root.is_dir():
        raise FeaturizerError(f"{'ROUTER_ML_CACHE=' if env else ''}{root}: the cache root exists and is not a "
                              "directory; point ROUTER_ML_CACHE at a directory (it is created if missing)")
    return root


def file_digest(path: str | os.PathLike[str]) -> str:
    """A content hash of one file: sha256 of its size, its first MiB and its last MiB.

    Cheap on multi-GB weight files, and it changes whenever a re-trained or re-distilled file is
    written in its place (any change of size, header or final tensors). Memoised per (path, size, mtime).
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256(str(stat.st_size).encode() + b"\0")
        with path.open("rb") as f:
            digest.update(f.read(_DIGEST_CHUNK))
            if stat.st_size > 2 * _DIGEST_CHUNK:
                f.seek(-_DIGEST_CHUNK, os.SEEK_END)
            digest.update(f.read())
        _digests[key] = digest.hexdigest()
    return _digests[key]


def digest_files(directory: Path, names: Sequence[str]) -> dict[str, str]:
    """``{name: file_digest}`` for each of ``names`` that exists in ``directory``."""
    return {name: file_digest(directory / name) for name in names if (directory / name).is_file()}


def text_list(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, refusing a bare string and non-string items (a common slip)."""
    if isinstance(texts, str):
        raise FeaturizerError("texts must be a sequence of strings, not one string: wrap it in a list")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise FeaturizerError(f"texts[{i}] is {type(text).__name__}, not str")
    return texts


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading progress bars for the duration of the block only.

    ``HF_HUB_DISABLE_PROGRESS_BARS`` is read when huggingface_hub is imported, so setting it here
    would come too late; transformers' own switch is flipped and restored instead.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
