"""The ``lexical`` candidate of ``router.kind = "auto"``: a logistic regression per model over the prompt's words.

The static featurizer averages 256-dimensional token embeddings, so every other candidate sees a prompt
through 256 numbers; a linear model over the same tokens' TF-IDF vector has one weight per token of the
vocabulary (30,522) and per model, and recognises words the average blurs (docs/auto-router-studies.md,
"Lexical features"). Here:

- :func:`token_counts`: the sparse (prompts, vocabulary) count matrix of the static featurizer's own
  token ids - the same tokenizer, ``[UNK]`` dropping and head + tail truncation as the ids the exported
  graph receives;
- :func:`tfidf`: scikit-learn's ``TfidfTransformer(sublinear_tf=True)`` (``1 + ln(count)``, smoothed
  inverse document frequency, L2-normalised), its document frequencies from the fitted rows only;
- :func:`fit_lexical`: :class:`~training.routers.baselines.LogRegRouter` on those vectors, kept as a
  :class:`LexicalHead` - the same computation as torch ops on ``(input_ids, attention_mask)``, so it
  exports into the router's one ONNX graph;
- :class:`LexicalMix`: a head over the pooled features mixed with a lexical head in probability space
  (the chosen router with the lexical blend kept, or the lexical candidate alone), the one module a saved
  auto router keeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["LexicalHead", "LexicalMix", "fit_lexical", "fitted_columns", "lexical_featurizer", "padded_ids", "tfidf",
           "token_counts"]


def lexical_featurizer(config):
    """The static featurizer ``config`` names, whose token ids the lexical regression reads; None for any
    other featurizer (its exported graph receives other ids, or none)."""
    from training.featurizers import get_featurizer

    featurizer = get_featurizer(config.featurizer.name, max_tokens=config.featurizer.max_tokens)
    return featurizer if getattr(featurizer, "name", None) == "static" else None


def token_counts(featurizer, texts: Sequence[str]):
    """A sparse CSR (prompts, vocabulary) matrix of token counts, from ``featurizer.token_ids``."""
    from scipy import sparse

    ids = featurizer.token_ids(texts)
    rows = np.repeat(np.arange(len(ids)), [len(x) for x in ids])
    cols = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]) if ids else np.zeros(0, np.int64)
    shape = (len(ids), featurizer.embedding_table.shape[0])
    return sparse.csr_matrix((np.ones(len(cols), dtype=np.float64), (rows, cols)), shape=shape)


def tfidf(counts, fit_rows: np.ndarray):
    """``(the sublinear, L2-normalised TF-IDF of every row of counts, the fitted transformer)``, the
    document frequencies from ``fit_rows`` only."""
    from sklearn.feature_extraction.text import TfidfTransformer

    transformer = TfidfTransformer(sublinear_tf=True).fit(counts[fit_rows])
    return transformer.transform(counts), transformer


def fitted_columns(vectors, fit_rows: np.ndarray) -> np.ndarray:
    """The vocabulary columns that some prompt of ``fit_rows`` uses. A column none of them uses has a zero
    gradient from the solver's zero start and keeps weight 0, so fitting on these columns alone finds
    the same coefficients (to 1e-11) in less time: the solver's own work per iteration is one pass over
    the columns (MMLU-Pro-29: 17,463 of 29,525 used, the grid of three C fitted in 8.2 s instead of 9.7)."""
    return np.unique(vectors[fit_rows].indices)


def padded_ids(featurizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` of ``texts``, the ids the exported graph receives, padded with 0s to
    the longest (at least one column). Held for a whole table's prompts while it is scored, so int32 ids
    and a uint8 mask: 5 bytes a token instead of 16 (the heads index and compare them as they are; the
    graph's own inputs are the runtime's int64)."""
    ids = featurizer.token_ids(texts)
    width = max([1] + [len(x) for x in ids])
    out, mask = np.zeros((len(ids), width), np.int32), np.zeros((len(ids), width), np.uint8)
    for i, row in enumerate(ids):
        out[i, :len(row)], mask[i, :len(row)] = row, 1
    return out, mask


class LexicalHead(nn.Module):
    """Per-model logits ``tfidf(ids) W + b``, the sublinear TF-IDF computed from the padded ids in the graph.

    A token occurring ``c`` times has term frequency ``1 + ln c``; the graph finds ``c`` for every position
    by comparing the ids pairwise (a ``(T, T)`` Equal per prompt: standard ONNX ops, no sparse tensors; a
    padded position takes the id -1, which no token has, so the mask is applied to ``T`` values, not
    ``T^2``) and gives each occurrence ``1 / c`` of the token's weight ``(1 + ln c) idf``: the sum over
    positions of ``share * W[id]`` is the TF-IDF vector times ``W``, and the sum of ``weight * share`` its
    squared L2 norm."""

    def __init__(self, vocab: int, n_models: int):
        super().__init__()
        self.register_buffer("idf", torch.zeros(vocab))
        self.register_buffer("weight", torch.zeros(vocab, n_models))
        self.register_buffer("bias", torch.zeros(n_models))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)  # (B, T)
        keyed = torch.where(attention_mask > 0, input_ids, -1)  # a padded position: -1, no token's id
        count = (keyed.unsqueeze(2) == keyed.unsqueeze(1)).to(torch.float32).sum(dim=-1)  # (B, T), >= 1
        weighted = (1.0 + torch.log(count)) * self.idf[input_ids] * mask  # the token's tf * idf
        share = weighted / count  # (B, T): each occurrence's part of it
        norm = (weighted * share).sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)  # (B, 1)
        scores = torch.bmm(share.unsqueeze(1), self.weight[input_ids]).squeeze(1)  # (B, M)
        return scores / norm + self.bias


def fit_lexical(counts, quality: np.ndarray, C: float, *, fit_rows: np.ndarray,
                weights: np.ndarray | None = None) -> LexicalHead:
    """A :class:`LexicalHead` fitted on the records ``fit_rows`` of the count matrix (their document
    frequencies, their outcomes; ``weights`` per cell of ``quality``)."""
    from training.routers.baselines import LogRegRouter

    vectors, transformer = tfidf(counts, fit_rows)
    used = fitted_columns(vectors, fit_rows)
    fitted = LogRegRouter(C=C).fit(vectors[fit_rows][:, used], quality[fit_rows],
                                   weights=None if weights is None else weights[fit_rows])
    head = LexicalHead(counts.shape[1], quality.shape[1])
    with torch.no_grad():
        head.idf.copy_(torch.as_tensor(transformer.idf_, dtype=torch.float32))
        for j, model in enumerate(fitted.models_):
            if isinstance(model, float):  # a constant model: its mean, as LogRegRouter predicts it
                q = min(max(model, 1e-6), 1 - 1e-6)
                head.bias[j] = float(np.log(q) - np.log1p(-q))
            else:
                head.weight[used, j] = torch.as_tensor(model.coef_[0], dtype=torch.float32)
                head.bias[j] = float(model.intercept_[0])
    return head


class LexicalMix(nn.Module):
    """``(1 - weight) * sigmoid(base(x)) + weight * sigmoid(lexical(ids, mask))`` as a logit; without a base,
    the lexical head alone. ``reads_tokens`` tells the exported graph to pass the token ids along."""

    reads_tokens = True

    def __init__(self, base: nn.Module | None, lexical: nn.Module, weight: float):
        super().__init__()
        self.base = base
        self.lexical = lexical
        self.weight = float(weight)

    def probabilities(self, x: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from training.routers.neural import EPS, probabilities

        words = torch.sigmoid(self.lexical(input_ids, attention_mask))
        if self.base is None:
            return words
        return ((1.0 - self.weight) * probabilities(self.base, x) + self.weight * words).clamp(EPS, 1 - EPS)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from training.routers.heads import logit

        if self.base is None:
            return self.lexical(input_ids, attention_mask)
        return logit(self.probabilities(x, input_ids, attention_mask))
