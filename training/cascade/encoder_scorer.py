"""The encoder answer scorer: a fine-tuned BERT-class cross-encoder over ``[CLS] prompt [SEP] response [SEP]``.

The module is the encoder router's (:class:`~training.routers.neural.EncoderModule`: mean pooling,
one logit per model), built from ``router.encoder`` / ``router.encoder_layers`` / ``router.dropout``
and trained by the routers' loop (:func:`training.trainer.fit_module`) with the plain masked quality
loss: each training triple's target row holds its quality in its answering model's column and NaN
elsewhere, so one encoder learns every model's head. Pairs are cut to ``router.max_length`` ids by
:func:`router_ml._answer_inputs.pair_ids` - the rule the runtime applies - keeping the response's end.

On 2 CPU cores the fine-tuning must take minutes, so ``scorer.train_triples`` samples the triples
(the shipped config: 6,000 triples, 3 layers, 192 tokens, one epoch; README, "Answer scorer").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from router_ml._answer_inputs import TextTokens, pair_ids
from router_ml.errors import RouterMLError
from router_ml.formats import VERSION_FIELD
from training.cascade.scorer import SCORER_JSON_VERSION, WEIGHTS_FILE, SavedScorer, ScorerData, cell_texts, cells
from training.config import TrainConfig

__all__ = ["EncoderScorer"]

#: pairs per forward pass when scoring
PREDICT_BATCH = 64


class EncoderScorer(SavedScorer):
    """A cross-encoder with one quality logit per model (module docstring)."""

    kind = "encoder"

    def __init__(self, *, config: TrainConfig, models: tuple[str, ...] | list[str]):
        self.config = config
        self.models = tuple(models)
        self._tokens: TextTokens | None = None

    def _router(self) -> Any:
        """An :class:`~training.routers.neural.EncoderRouter` with this config: its checkpoint resolution
        and module construction are the scorer's."""
        from training.routers.neural import EncoderRouter

        return EncoderRouter(config=self.config, n_models=len(self.models))

    def checkpoint(self) -> str:
        return self._router().checkpoint()

    def tokenizer_file(self) -> Path:
        path = Path(self.checkpoint()) / "tokenizer.json"
        if not path.is_file():
            raise RouterMLError(f"{self.checkpoint()}: no tokenizer.json; the scorer's runtime needs the encoder's "
                                "fast tokenizer file")
        return path

    def input_limits(self) -> dict[str, Any]:
        """What the scorer reads of a pair (saved in the artifact's manifest for the runtime)."""
        tokens = self.tokens()
        length = self.config.router.max_length
        return {"max_length": length, "prompt_tokens": self.config.scorer.prompt_tokens, "max_chars": 32 * length,
                "cls_id": tokens.token_id("[CLS]"), "sep_id": tokens.token_id("[SEP]"), "pad_id": 0}

    def tokens(self) -> TextTokens:
        if self._tokens is None:
            self._tokens = TextTokens(self.tokenizer_file(), max_chars=32 * self.config.router.max_length)
        return self._tokens

    def encode(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int64, padded to ``router.max_length``: the runtime's ids."""
        limits = self.input_limits()
        tokens = self.tokens()
        length = limits["max_length"]
        ids = np.zeros((len(prompts), length), dtype=np.int64)
        mask = np.zeros((len(prompts), length), dtype=np.int64)
        for k, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            pair = pair_ids(tokens.ids(p), tokens.ids(r), max_length=length, prompt_tokens=limits["prompt_tokens"],
                            cls_id=limits["cls_id"], sep_id=limits["sep_id"])
            ids[k, :len(pair)] = pair
            mask[k, :len(pair)] = 1
        return ids, mask

    def _batch(self, data: ScorerData, row: np.ndarray, model: np.ndarray) -> Any:
        from training.trainer import Batchable

        ids, mask = self.encode(*cell_texts(data, row, model))
        target = np.full((len(row), len(self.models)), np.nan, dtype=np.float32)
        target[np.arange(len(row)), model] = data.quality[row, model]
        zeros = np.zeros_like(target)
        return Batchable(inputs=(ids, mask), quality=target, cost=zeros, cost_est=zeros)

    def fit(self, data: ScorerData, train_rows: np.ndarray, val_rows: np.ndarray) -> EncoderScorer:
        """Fine-tune on (a sample of) the training triples; early stopping on the validation triples."""
        import torch

        from training.trainer import fit_module

        s, seed = self.config.scorer, self.config.data.seed
        row, model = cells(data, train_rows, cap=s.train_triples, seed=seed)
        if not len(row):
            raise RouterMLError("no training triple: the training records carry no (quality, response) pair")
        v_row, v_model = cells(data, val_rows, cap=s.val_triples, seed=seed + 1)
        train = self._batch(data, row, model)
        val = self._batch(data, v_row, v_model) if len(v_row) else None
        loss = dataclasses.replace(self.config.loss, tradeoff_weight=0.0, pairwise_weight=0.0)
        threads = self.config.train.threads
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            torch.manual_seed(seed)
            self.module_ = self._router().build_module()
            self.history_ = fit_module(self.module_, train, val, loss=loss, loop=self.config.train,
                                       wtp_range=(1.0, 1.0), seed=seed)
        finally:
            torch.set_num_threads(previous)
        self.triples_ = int(len(row))
        return self

    def predict(self, prompts: list[str], model_index: np.ndarray, responses: list[str]) -> np.ndarray:
        """P(quality) of each response, in its answering model's column, batched by length."""
        import torch

        from training.progress import chunks
        from training.trainer import on_device

        n = len(prompts)
        out = np.zeros(n)
        if not n:
            return out
        ids, mask = self.encode(list(prompts), list(responses))
        order = np.argsort(mask.sum(axis=1), kind="stable")
        model_index = np.asarray(model_index, dtype=np.int64)
        self.module_.eval()
        with torch.no_grad(), on_device(self.module_, self.config.train.device) as device:
            for start, stop in chunks(n, PREDICT_BATCH, desc="score", unit="answer"):
                pick = order[start:stop]
                logits = self.module_(torch.as_tensor(ids[pick]).to(device),
                                      torch.as_tensor(mask[pick]).to(device)).float().cpu().numpy()
                out[pick] = 1.0 / (1.0 + np.exp(-logits[np.arange(len(pick)), model_index[pick]]))
        return out

    def predict_cells(self, data: ScorerData, row: np.ndarray, model: np.ndarray) -> np.ndarray:
        prompts, responses = cell_texts(data, row, model)
        return self.predict(prompts, model, responses)

    def describe(self) -> dict[str, Any]:
        return {VERSION_FIELD: SCORER_JSON_VERSION, "kind": self.kind, "models": list(self.models),
                "config": self.config.to_flat(), "triples": getattr(self, "triples_", None)}

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.module_.state_dict().items()}
        self.write(directory, lambda path: save_file(state, str(path)))

    @classmethod
    def load(cls, directory: str | Path, info: dict[str, Any] | None = None) -> EncoderScorer:
        from safetensors.torch import load_file

        scorer, info = cls.unfitted(directory, info)
        scorer.module_ = scorer._router().build_module(pretrained=False)
        scorer.module_.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))
        scorer.module_.eval()
        scorer.triples_ = info.get("triples")
        return scorer
