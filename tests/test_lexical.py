"""The ``lexical`` candidate's parts (training/routers/lexical.py): token counts from the static
featurizer's ids, the TF-IDF, and the torch head that computes the fitted regression from padded ids
exactly as scikit-learn does from the sparse vectors - in training and in the exported ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.routers.baselines import LogRegRouter
from training.routers.lexical import LexicalMix, fit_lexical, padded_ids, tfidf, token_counts


@pytest.fixture(scope="module")
def featurizer():
    from training.featurizers import get_featurizer

    return get_featurizer("static")


def test_token_counts_count_the_featurizers_own_ids(featurizer):
    texts = ["the cat sat on the mat", "integrate x squared", ""]
    counts = token_counts(featurizer, texts)
    ids = featurizer.token_ids(texts)
    assert counts.shape == (3, featurizer.embedding_table.shape[0])
    for row, row_ids in enumerate(ids):
        dense = counts[row].toarray().ravel()
        assert dense.sum() == len(row_ids)
        for token in set(row_ids):
            assert dense[token] == row_ids.count(token)
    assert counts[0].toarray().ravel()[ids[0][0]] == 2  # "the" twice


def test_tfidf_is_sublinear_l2_normalised_with_the_fit_rows_document_frequencies(featurizer):
    counts = token_counts(featurizer, ["alpha alpha alpha beta", "beta gamma", "gamma delta"])
    fit = np.array([0, 1])
    X = tfidf(counts, fit)[0].toarray()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-6)
    n = len(fit)
    df = (counts[fit].toarray() > 0).sum(axis=0)
    idf = np.log((1 + n) / (1 + df)) + 1
    raw = counts.toarray().astype(float)
    expected = np.where(raw > 0, 1 + np.log(np.maximum(raw, 1)), 0) * idf
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(X, expected, atol=1e-9)


def _prompts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Prompts with repeated words and a two-model outcome that depends on one word."""
    rng = np.random.default_rng(seed)
    words = ["algebra", "poem", "integral", "history", "python", "the", "of", "proof", "essay", "code"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(n)]
    quality = np.stack([[float("integral" in t or "proof" in t) for t in texts], rng.random(n).round(1)], axis=1)
    return texts, quality


def test_the_head_computes_the_fitted_regression_from_padded_ids(featurizer):
    texts, quality = _prompts(120, 0)
    texts += ["", "the the the the of"]  # no token at all; one token repeated
    quality = np.vstack([quality, [[0.0, 0.5], [1.0, 0.5]]])
    quality[5, 1] = np.nan
    counts = token_counts(featurizer, texts)
    fit = np.arange(100)
    head = fit_lexical(counts, quality, 0.7, fit_rows=fit)
    vectors, _ = tfidf(counts, fit)
    expected = LogRegRouter(C=0.7).fit(vectors[fit], quality[fit]).predict(vectors)
    ids, mask = padded_ids(featurizer, texts)
    assert ids.shape[1] == max(len(x) for x in featurizer.token_ids(texts)) and mask[-2].sum() == 0
    with torch.no_grad():
        batch = torch.sigmoid(head(torch.as_tensor(ids), torch.as_tensor(mask))).numpy()
        one = np.stack([torch.sigmoid(head(torch.as_tensor(ids[i:i + 1, :max(1, m.sum())]),
                                           torch.as_tensor(m[None, :max(1, m.sum())]))).numpy()[0]
                        for i, m in enumerate(mask)])
    np.testing.assert_allclose(batch, expected, atol=1e-5)
    np.testing.assert_allclose(one, batch, atol=1e-6)  # padding changes nothing
    assert expected[:100, 0].std() > 0.1  # it learned the first model's word, not its mean


def test_a_padded_batch_scores_each_prompt_as_alone_whatever_its_ids():
    """Padding is id 0 with mask 0, and 0 (or 255, what a uint8 mask minus one would give) can be a real token's
    id: a padded position must count as no token, in the compact int32 / uint8 inputs and the graph's int64."""
    from training.routers.lexical import LexicalHead

    torch.manual_seed(0)
    head = LexicalHead(300, 3)
    with torch.no_grad():
        head.idf.copy_(torch.rand(300) * 5)
        head.weight.copy_(torch.randn(300, 3))
        head.bias.copy_(torch.randn(3))
    ids = np.array([[5, 255, 5, 0, 7, 0], [255, 9, 0, 0, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], np.uint8)
    with torch.no_grad():
        compact = head(torch.as_tensor(ids), torch.as_tensor(mask))
        wide = head(torch.as_tensor(ids.astype(np.int64)), torch.as_tensor(mask.astype(np.int64)))
        alone = torch.cat([head(torch.as_tensor(ids[i:i + 1, :m.sum()].astype(np.int64)),
                                torch.as_tensor(mask[i:i + 1, :m.sum()].astype(np.int64))) for i, m in enumerate(mask)])
    torch.testing.assert_close(compact, wide, atol=0, rtol=0)
    torch.testing.assert_close(compact, alone, atol=1e-6, rtol=0)
    assert not torch.allclose(alone[0], alone[1])


def test_cell_weights_of_zero_leave_those_cells_out():
    from scipy import sparse

    rng = np.random.default_rng(1)
    X = sparse.csr_matrix(rng.random((80, 10)) * (rng.random((80, 10)) < 0.4))
    quality = rng.random((80, 2)).round(1)
    weights = np.ones_like(quality)
    weights[::3, 0] = 0.0
    dropped = quality.copy()
    dropped[::3, 0] = np.nan
    a = LogRegRouter(C=0.5).fit(X, quality, weights=weights).predict(X)
    b = LogRegRouter(C=0.5).fit(X, dropped).predict(X)
    np.testing.assert_allclose(a, b, atol=1e-4)
    doubled = LogRegRouter(C=0.5).fit(X, quality, weights=2 * np.ones_like(quality)).predict(X)
    stronger = LogRegRouter(C=1.0).fit(X, quality).predict(X)  # twice every weight = twice C
    np.testing.assert_allclose(doubled, stronger, atol=1e-4)


def test_the_mix_averages_probabilities_and_exports_to_onnx(featurizer, tmp_path):
    import onnxruntime as ort

    from training.export import _export_onnx

    texts, quality = _prompts(60, 2)
    counts = token_counts(featurizer, texts)
    words = fit_lexical(counts, quality, 1.0, fit_rows=np.arange(60))
    base = torch.nn.Linear(4, 2)
    mix = LexicalMix(base, words, 0.25).eval()
    ids, mask = padded_ids(featurizer, texts[:5])
    x = torch.randn(5, 4)
    with torch.no_grad():
        got = torch.sigmoid(mix(x, torch.as_tensor(ids), torch.as_tensor(mask)))
        want = 0.75 * torch.sigmoid(base(x)) + 0.25 * torch.sigmoid(words(torch.as_tensor(ids), torch.as_tensor(mask)))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)

    class Graph(torch.nn.Module):  # the lexical head alone between the graph's own inputs
        def __init__(self):
            super().__init__()
            self.head = LexicalMix(None, words, 1.0)

        def forward(self, input_ids, attention_mask):
            return torch.sigmoid(self.head(torch.zeros(input_ids.shape[0], 4), input_ids, attention_mask))

    path = tmp_path / "lexical.onnx"
    _export_onnx(Graph().eval(), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert ids.dtype == np.int32 and mask.dtype == np.uint8  # compact while a table's prompts are held
    out = session.run(None, {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, Graph()(torch.as_tensor(ids), torch.as_tensor(mask)).numpy(), atol=1e-6)
