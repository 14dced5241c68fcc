"""Sentence embeddings from a local transformer encoder (MiniLM, BERT, DistilBERT, RoBERTa) with torch."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.optional import require
from router_ml.truncation import default_max_chars, prepare_text
from training.featurizers._base import (
    DEFAULT_MAX_TOKENS,
    Featurizer,
    FeaturizerError,
    check_budget,
    digest_files,
    head_tail,
    quiet_transformers,
    text_list,
)
from training.featurizers._static import minilm_path

__all__ = ["MiniLMFeaturizer", "TransformerFeaturizer"]

_FORMAT = 1
_POOLINGS = ("mean", "cls")
_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class _Layout:
    """What a model directory says about itself: where the encoder is and how its output is pooled."""

    encoder_dir: Path
    pooling: str
    normalize: bool
    max_seq_length: int | None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FeaturizerError(f"cannot read {path}: {exc}") from exc


def _pooling_mode(path: Path) -> str:
    config = _read_json(path)
    if isinstance(config.get("pooling_mode"), str):
        modes = [config["pooling_mode"]]
    else:
        modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                 for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    if len(modes) != 1 or modes[0] not in _POOLINGS:
        raise FeaturizerError(f"{path}: pooling {modes} is not supported; supported: {', '.join(_POOLINGS)} "
                              "(pass pooling= to override)")
    return modes[0]


def read_layout(model_dir: Path) -> _Layout:
    """Parse a sentence-transformers ``modules.json`` (Transformer [+ Pooling] [+ Normalize]) or a plain HF dir."""
    modules_file = model_dir / "modules.json"
    encoder_dir, pooling, normalize = model_dir, "mean", False
    if modules_file.is_file():
        for module in _read_json(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            path = model_dir / module.get("path", "")
            if kind == "Transformer":
                encoder_dir = path
            elif kind == "Pooling":
                pooling = _pooling_mode(path / "config.json")
            elif kind == "Normalize":
                normalize = True
            else:
                raise FeaturizerError(f"{modules_file}: module type {module.get('type')!r} is not supported; "
                                      f"supported: {', '.join(_MODULES)}")
    if not (encoder_dir / "config.json").is_file():
        raise FeaturizerError(f"{encoder_dir} has no config.json: not a transformers model directory")
    st_config = encoder_dir / "sentence_bert_config.json"
    max_seq = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    return _Layout(encoder_dir, pooling, normalize, max_seq)


class TransformerFeaturizer(Featurizer):
    """Pooled last hidden states of a local BERT-family encoder (any ``AutoModel`` directory).

    Pooling and normalisation follow the directory's sentence-transformers ``modules.json`` (mean
    pooling over the attention mask, L2 normalisation when a ``Normalize`` module is listed); a plain
    transformers directory gets mean pooling without normalisation. ``pooling`` ("mean" or "cls") and
    ``normalize`` override that. The special tokens ([CLS] ... [SEP]) are part of the mean, as in
    sentence-transformers, so an empty text still gets a (non-zero) vector.

    Truncation follows :mod:`router_ml.truncation`, as every router input does: lone surrogates are
    replaced, a text over ``32 * max_tokens`` characters is clipped, it is tokenized without special
    tokens; when it has more than ``max_tokens - n_special`` tokens, the first ``head`` (default 3/4
    of that budget) and the last remaining ones are kept, then the special tokens are added. (The
    character clip changes no RouteLLM MMLU or MMLU-Pro prompt: none is over 8,192 characters.)
    ``max_tokens`` defaults to 256, capped by the model's ``max_seq_length`` and position embeddings.
    Runs on CUDA when available, else CPU, under ``torch.inference_mode``; torch's thread count is
    left alone.

    >>> featurizer = TransformerFeaturizer("path/to/distilbert")  # doctest: +SKIP
    >>> featurizer.transform(["hello"]).shape  # doctest: +SKIP
    (1, 768)
    """

    name = "transformer"

    def __init__(self, model_dir: str | os.PathLike[str], *, max_tokens: int | None = None, head: int | None = None,
                 pooling: str | None = None, normalize: bool | None = None, batch_size: int = 64,
                 device: str | None = None):
        if pooling is not None and pooling not in _POOLINGS:
            raise FeaturizerError(f"pooling must be one of {', '.join(_POOLINGS)}, got {pooling!r}")
        if max_tokens is not None:
            check_budget(max_tokens, head)
        self.model_dir = Path(model_dir)
        self.max_tokens_option = max_tokens
        self.head_option = head
        self.pooling_option = pooling
        self.normalize_option = normalize
        self.batch_size = batch_size
        self.device_option = device
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("layout", "config", "tokenizer", "_template")}
        state["_model"] = None
        return state

    @cached_property
    def layout(self) -> _Layout:
        if not self.model_dir.is_dir():
            raise FeaturizerError(f"model directory {self.model_dir} does not exist")
        return read_layout(self.model_dir)

    @cached_property
    def config(self) -> Any:
        transformers = require("transformers", purpose="transformer featurizers")
        return transformers.AutoConfig.from_pretrained(self.layout.encoder_dir)

    @cached_property
    def tokenizer(self) -> Any:
        transformers = require("transformers", purpose="transformer featurizers")
        return transformers.AutoTokenizer.from_pretrained(self.layout.encoder_dir)

    @cached_property
    def _template(self) -> tuple[list[int], list[int]]:
        """Special ids around a single sequence, found by encoding a probe with and without them."""
        probe = "routing probe"
        bare = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
        for i in range(len(full) - len(bare) + 1):
            if full[i:i + len(bare)] == bare:
                return list(full[:i]), list(full[i + len(bare):])
        raise FeaturizerError(f"{self.layout.encoder_dir}: cannot locate the text between the tokenizer's "
                              "special tokens; is this a single-sequence encoder?")

    @property
    def pooling(self) -> str:
        return self.pooling_option or self.layout.pooling

    @property
    def normalize(self) -> bool:
        return self.layout.normalize if self.normalize_option is None else self.normalize_option

    @property
    def max_tokens(self) -> int:
        """Token budget per text, special tokens included."""
        limits = [self.layout.max_seq_length, getattr(self.config, "max_position_embeddings", None)]
        limits = [int(x) for x in limits if x]
        if self.max_tokens_option is None:
            return min([DEFAULT_MAX_TOKENS, *limits])
        if limits and self.max_tokens_option > min(limits):
            raise FeaturizerError(f"max_tokens={self.max_tokens_option} exceeds what {self.model_dir} supports "
                                  f"({min(limits)} tokens)")
        return self.max_tokens_option

    @property
    def content_budget(self) -> int:
        """Text tokens kept per text: ``max_tokens`` minus the special tokens."""
        prefix, suffix = self._template
        budget = self.max_tokens - len(prefix) - len(suffix)
        if budget < 1:
            raise FeaturizerError(f"max_tokens={self.max_tokens} leaves no room for text after special tokens")
        return budget

    @property
    def head(self) -> int:
        return check_budget(self.content_budget, self.head_option)

    @property
    def dim(self) -> int:
        return int(self.config.hidden_size)

    @property
    def device(self) -> str:
        if self.device_option is not None:
            return self.device_option
        torch = require("torch", purpose="transformer featurizers")
        return "cuda" if torch.cuda.is_available() else "cpu"

    def identity(self) -> dict[str, Any]:
        encoder_dir = self.layout.encoder_dir
        files = sorted(p.name for p in encoder_dir.iterdir() if p.is_file() and (
            p.suffix in (".safetensors", ".bin", ".model", ".txt") or p.name.startswith(("tokenizer", "config"))
            or p.name == "special_tokens_map.json"))
        return {
            "kind": "transformer",
            "model_dir": str(encoder_dir.resolve()),
            "files": digest_files(encoder_dir, files),
            "pooling": self.pooling,
            "normalize": self.normalize,
            "truncation": "head_tail",
            "max_tokens": self.max_tokens,
            "head": self.head,
            "dim": self.dim,
            "format": _FORMAT,
        }

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Model input ids per text: special tokens around the head + tail of the text's tokens."""
        texts = text_list(texts)
        if not texts:
            return []
        prefix, suffix = self._template
        budget, head = self.content_budget, self.head
        texts = [prepare_text(t, default_max_chars(self.max_tokens)) for t in texts]
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return [prefix + head_tail(ids, max_tokens=budget, head=head) + suffix for ids in encoded]

    def _load_model(self) -> Any:
        if self._model is None:
            torch = require("torch", purpose="transformer featurizers")
            transformers = require("transformers", purpose="transformer featurizers")
            with quiet_transformers():
                model = transformers.AutoModel.from_pretrained(self.layout.encoder_dir, dtype=torch.float32)
            self._model = model.eval().to(self.device)
        return self._model

    def transform(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        torch = require("torch", purpose="transformer featurizers")
        ids = self.token_ids(texts)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        model = self._load_model()
        device = next(model.parameters()).device
        pad_id = self.tokenizer.pad_token_id or 0
        step = batch_size or self.batch_size
        order = np.argsort([-len(x) for x in ids], kind="stable")  # similar lengths share a batch: less padding
        with torch.inference_mode():
            for start in range(0, len(order), step):
                rows = order[start:start + step]
                width = len(ids[rows[0]])
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                    mask[r, :len(ids[i])] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    weights = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.cpu().numpy()
        return out


class MiniLMFeaturizer(TransformerFeaturizer):
    """:class:`TransformerFeaturizer` on the packaged all-MiniLM-L6-v2: 384-d, unit-norm, mean-pooled."""

    name = "minilm"

    def __init__(self, *, model_dir: str | os.PathLike[str] | None = None, **options: Any):
        super().__init__(model_dir if model_dir is not None else minilm_path(), **options)
