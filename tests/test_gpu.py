"""CUDA paths: an encoder router fine-tuned and scored on the GPU (``train.device = "auto"``) routes
exactly as its CPU-exported ONNX artifact does. Skipped where no CUDA device is present (CI has none);
``pytest -m gpu`` runs them on a machine that has one."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from tests.conftest import DEMO

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _on(router, device: str):
    """The same fitted router, told to score on ``device``."""
    clone = copy.copy(router)
    clone.config = dataclasses.replace(router.config, train=dataclasses.replace(router.config.train, device=device))
    return clone


def test_an_encoder_router_fine_tunes_and_scores_on_cuda_and_exports_what_it_scored(tmp_path, tiny_encoder):
    from router_ml import Router
    from training.config import load_config
    from training.data import load_traffic, write_jsonl
    from training.pipeline import train_router
    from training.routers import TorchRouter
    from training.trainer import on_device

    table, _ = load_traffic(DEMO)
    data = write_jsonl(table.records[:240], tmp_path / "train.jsonl")
    config = load_config(None, ["router.kind=encoder", f"router.encoder={tiny_encoder}", "router.max_length=24",
                                f"featurizer.name={tiny_encoder}", "featurizer.max_tokens=64", "train.epochs=1",
                                "eval.n_boot=0", "eval.baselines=random", "tracking.enabled=false"])
    torch.cuda.reset_peak_memory_stats()
    summary = train_router(config, data, out_dir=tmp_path / "run", progress=False)
    assert summary["artifact"], summary["export"]
    assert torch.cuda.max_memory_allocated() > 0  # fine-tuning (and its test scoring) ran on the GPU

    router = TorchRouter.load(tmp_path / "run")
    texts = list(table.texts[240:300])
    inputs = router.tokenize(texts)
    torch.cuda.reset_peak_memory_stats()
    on_gpu = router.predict(inputs)
    assert torch.cuda.max_memory_allocated() > 0  # "auto" scored there
    assert next(router.module_.parameters()).device.type == "cpu"  # and handed the module back
    np.testing.assert_allclose(on_gpu, _on(router, "cpu").predict(inputs), atol=1e-4)
    np.testing.assert_allclose(Router.load(summary["artifact"]).predict(texts), on_gpu, atol=1e-4)

    with on_device(router.module_, "cuda") as device:
        assert device.type == "cuda" and next(router.module_.parameters()).is_cuda
    assert not next(router.module_.parameters()).is_cuda
