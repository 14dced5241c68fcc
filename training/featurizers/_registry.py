"""Featurizers by name, and building one from a spec string."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from training.featurizers._base import Featurizer, FeaturizerError
from training.featurizers._static import StaticFeaturizer
from training.featurizers._transformer import MiniLMFeaturizer, TransformerFeaturizer

__all__ = ["FEATURIZERS", "get_featurizer"]

#: Featurizers selectable by name; any other spec must be a local model directory.
FEATURIZERS: dict[str, type[Featurizer]] = {
    "static": StaticFeaturizer,
    "minilm": MiniLMFeaturizer,
}


def _is_model2vec_dir(path: Path) -> bool:
    config = path / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text()).get("model_type") == "model2vec"
    except (OSError, json.JSONDecodeError):
        return False


def get_featurizer(spec: str | os.PathLike[str], **options: Any) -> Featurizer:
    """Build the featurizer named by ``spec`` with keyword ``options`` for its constructor.

    ``spec`` is a name from :data:`FEATURIZERS` (``"static"``, ``"minilm"``) or the path of a local
    model directory: a model2vec static model gives a :class:`StaticFeaturizer`, anything else
    (sentence-transformers, BERT, DistilBERT, RoBERTa checkpoints) a :class:`TransformerFeaturizer`.

    >>> get_featurizer("minilm", batch_size=16).name
    'minilm'
    """
    args: tuple[Any, ...] = ()
    if isinstance(spec, str) and spec in FEATURIZERS:
        cls = FEATURIZERS[spec]
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise FeaturizerError(f"unknown featurizer {str(spec)!r}: choose one of {', '.join(sorted(FEATURIZERS))}, "
                                  "or give the path of an existing local model directory "
                                  "(sentence-transformers, BERT, DistilBERT or model2vec)")
        if _is_model2vec_dir(path):
            cls, options = StaticFeaturizer, {**options, "model_dir": path}
        else:
            cls, args = TransformerFeaturizer, (path,)
    try:
        return cls(*args, **options)
    except TypeError as exc:
        raise FeaturizerError(f"bad option for the {cls.name!r} featurizer: {exc}") from exc
