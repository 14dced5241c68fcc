"""Featurizers: prompt texts -> float32 matrices for router training, and a disk cache for them.

``get_featurizer("static" | "minilm" | <model directory>)`` builds one; :func:`featurize` runs it over
a corpus once and caches the result. Importing this package is cheap: torch, transformers and
model2vec load only when a featurizer first needs them.

>>> from training.featurizers import featurize, get_featurizer
>>> X = featurize(get_featurizer("static"), ["What is 2 + 2?", "Write a haiku"])  # doctest: +SKIP
>>> X.shape, X.dtype  # doctest: +SKIP
((2, 256), dtype('float32'))
"""

from training.featurizers._base import (
    DEFAULT_MAX_TOKENS,
    Featurizer,
    FeaturizerError,
    cache_root,
    default_head,
    file_digest,
    head_tail,
)
from training.featurizers._cache import (
    DEFAULT_SHARD_SIZE,
    cache_entry,
    cache_shards,
    feature_cache_key,
    featurize,
    featurize_part,
    texts_digest,
    worker_shards,
)
from training.featurizers._registry import FEATURIZERS, get_featurizer
from training.featurizers._static import StaticFeaturizer, distill_static, distilled_static, minilm_path
from training.featurizers._stream import SHARD_ROWS, FeatureMatrix, as_feature_matrix
from training.featurizers._transformer import MiniLMFeaturizer, TransformerFeaturizer

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SHARD_SIZE",
    "FEATURIZERS",
    "FeatureMatrix",
    "Featurizer",
    "FeaturizerError",
    "MiniLMFeaturizer",
    "SHARD_ROWS",
    "StaticFeaturizer",
    "TransformerFeaturizer",
    "as_feature_matrix",
    "cache_entry",
    "cache_root",
    "cache_shards",
    "default_head",
    "distill_static",
    "distilled_static",
    "feature_cache_key",
    "featurize",
    "featurize_part",
    "file_digest",
    "get_featurizer",
    "head_tail",
    "minilm_path",
    "texts_digest",
    "worker_shards",
]
