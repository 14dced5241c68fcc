"""scripts/lexical_study.py: the sparse logistic regression it fits and one end-to-end run on a small
table (its token counts and TF-IDF are the lexical candidate's: tests/test_lexical.py)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np

from training.routers.baselines import LogRegRouter

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("lexical_study", ROOT / "scripts" / "lexical_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


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
