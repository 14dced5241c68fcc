"""scripts/lexical_study.py: token counts from the static featurizer's ids, the TF-IDF, the sparse
logistic regression it fits, and one end-to-end run on a small table."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from training.routers.baselines import LogRegRouter

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("lexical_study", ROOT / "scripts" / "lexical_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


@pytest.fixture(scope="module")
def featurizer():
    from training.featurizers import get_featurizer

    return get_featurizer("static")


def test_token_counts_count_the_featurizers_own_ids(featurizer):
    texts = ["the cat sat on the mat", "integrate x squared", ""]
    counts = study.token_counts(featurizer, texts)
    ids = featurizer.token_ids(texts)
    assert counts.shape == (3, featurizer.embedding_table.shape[0])
    for row, row_ids in enumerate(ids):
        dense = counts[row].toarray().ravel()
        assert dense.sum() == len(row_ids)
        for token in set(row_ids):
            assert dense[token] == row_ids.count(token)
    assert counts[0].toarray().ravel()[ids[0][0]] == 2  # "the" twice


def test_tfidf_is_sublinear_l2_normalised_with_the_fit_rows_document_frequencies(featurizer):
    counts = study.token_counts(featurizer, ["alpha alpha alpha beta", "beta gamma", "gamma delta"])
    fit = np.array([0, 1])
    X = study.tfidf(counts, fit).toarray()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-6)
    n = len(fit)
    df = (counts[fit].toarray() > 0).sum(axis=0)
    idf = np.log((1 + n) / (1 + df)) + 1
    raw = counts.toarray().astype(float)
    expected = np.where(raw > 0, 1 + np.log(np.maximum(raw, 1)), 0) * idf
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(X, expected, atol=1e-9)


def test_logistic_regression_fits_sparse_features_as_it_fits_dense_ones():
    from scipy import sparse

    rng = np.random.default_rng(0)
    dense = rng.random((60, 12)) * (rng.random((60, 12)) < 0.3)
    quality = np.stack([(dense[:, 0] > 0.1).astype(float), rng.random(60)], axis=1)  # binary and graded
    quality[::7, 1] = np.nan
    a = LogRegRouter(C=0.5).fit(dense, quality).predict(dense)
    b = LogRegRouter(C=0.5).fit(sparse.csr_matrix(dense), quality).predict(sparse.csr_matrix(dense))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a[:, 0].std() > 0.05  # it learned the first model's pattern, not its mean


def test_main_scores_each_representation_and_their_mean_on_a_table(tmp_path, capsys):
    lines = (ROOT / "data" / "demo" / "traffic.jsonl").read_text().splitlines()[:240]
    data = tmp_path / "small.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert study.main(["--data", str(data), "--seeds", "0", "--folds", "2", "--sentence", "minilm"]) == 0
    result = json.loads(capsys.readouterr().out)["table"]
    run = result["seeds"]["0"]
    assert run["train"] + run["test"] <= 240 and run["test"] > 0
    for rep in ("static", "lexical", "sentence"):
        assert run[rep]["C"] in study.C_GRID
        assert set(run[rep]["cv_aiq"]) == {str(c) for c in study.C_GRID}
        assert run[rep]["cv_aiq"][str(run[rep]["C"])] == max(run[rep]["cv_aiq"].values())
    for rep in ("static", "lexical", "mean", "sentence"):
        assert 0.0 < run[rep]["aiq"] <= 1.0
        assert result["mean"][rep]["aiq"] == run[rep]["aiq"]
    assert run["vocabulary_used"] > 100
