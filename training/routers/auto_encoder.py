"""The auto router's ``encoder`` candidate: which fine-tuned encoder, when it is tried, how it is fitted.

It reads token ids rather than the static features the other candidates share, so it is fitted on a
copy of the training pool with ``(input_ids, attention_mask)`` as inputs, is never averaged into the
ensemble, and - when it wins - the run goes on as an ordinary encoder run (its checkpoint, its ONNX
graph with the tokenizer). Fine-tuning once per cross-validation fold is what a GPU makes cheap
(RouteLLM's 1,500 prompts: about 35 s for five folds and the final fit on an H200, against about six
minutes per fit on two CPU cores), so by default it is tried only where CUDA is present.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from training.routers.neural import EncoderRouter
from training.trainer import Batchable, resolve_device

__all__ = ["AUTO_ENCODER", "encoder_candidate_config", "encoder_skipped", "fit_encoder"]

#: ``router.auto_encoder``: when the fine-tuned encoder candidate is fitted
AUTO_ENCODER = ("cuda", "always", "never")
#: torch's thread count before any candidate narrowed it (the encoder fine-tunes with all of them)
_PROCESS_THREADS = torch.get_num_threads()


def encoder_candidate_config(config):
    """The ``encoder`` candidate's config: ``router.auto_encoder_config``'s ``[router]``, ``[loss]`` and
    ``[train]`` (which encoder, and how to fine-tune it: settings an MLP's 80 epochs at lr 1e-3 would
    wreck) with the auto run's own ``[data]``, ``[featurizer]``, ``[eval]``, ``[tracking]`` and
    ``train.device``, so the candidate sees the same split, seed and device."""
    from training.config import ConfigError, TrainConfig, load_config, packaged_config

    name = config.router.auto_encoder_config
    path = Path(name)
    if not path.suffix:  # a packaged config's name, e.g. "encoder_fast"
        path = packaged_config(name)
    if not path.is_file():
        raise ConfigError(f"router.auto_encoder_config = {name!r}: no config at {path}; name one in "
                          "training/configs (e.g. encoder_fast) or give a TOML path")
    encoder = load_config(path)
    if encoder.router.kind != "encoder":
        raise ConfigError(f"router.auto_encoder_config: {path} has router.kind = {encoder.router.kind!r}; the "
                          "encoder candidate needs a config with router.kind = \"encoder\"")
    flat = encoder.to_flat()
    flat.update({key: value for key, value in config.to_flat().items()
                 if key.partition(".")[0] in ("data", "featurizer", "eval", "tracking") or key == "train.device"})
    return TrainConfig.from_flat(flat)


@contextlib.contextmanager
def _threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def encoder_skipped(config, records: int, has_prompts: bool) -> str | None:
    """Why the ``encoder`` candidate is not fitted on ``records`` train + validation records (None: it is)."""
    r = config.router
    if r.auto_encoder == "never":
        return "router.auto_encoder = \"never\""
    if r.auto_encoder == "cuda" and resolve_device(config.train.device).type != "cuda":
        return ("no CUDA device (router.auto_encoder = \"always\" fine-tunes it on the CPU: minutes per "
                "thousand prompts, once per fold)")
    if not has_prompts:
        return "the training pool's prompts were not given (AutoRouter.inputs keeps them)"
    if records > r.auto_encoder_records:
        return f"{records} train + validation records > router.auto_encoder_records = {r.auto_encoder_records}"
    return None


def fit_encoder(config, n_models: int, fit: Batchable, stop: Batchable | None, wtp_range) -> EncoderRouter:
    """An :class:`EncoderRouter` fine-tuned on ``fit``, early-stopped on ``stop``, with all of torch's threads
    (the selection runs the small heads on one)."""
    router = EncoderRouter(config=config, n_models=n_models)
    with _threads(config.train.threads or _PROCESS_THREADS):
        return router.fit(fit, stop, wtp_range=wtp_range)
