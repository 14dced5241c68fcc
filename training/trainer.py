"""One short training loop for every torch router, with early stopping and optional DDP.

Run under ``torchrun --nproc-per-node N`` and the loop joins the process group (gloo on CPU,
NCCL on GPUs), wraps the module in DistributedDataParallel and shards each epoch with a
DistributedSampler; every rank evaluates the (small) validation set itself so that all ranks
stop at the same epoch. Without torchrun it is a plain single-process loop.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from training.config import LossConfig, TrainLoopConfig
from training.losses import bradley_terry_loss, quality_loss, sample_willingness, tradeoff_loss

__all__ = ["Batchable", "distributed_context", "fit_module", "resolve_device"]


@dataclass
class Batchable:
    """Training arrays for one split; ``inputs`` is a tuple of arrays the module's forward takes.

    ``quality`` has NaN where unobserved; ``cost`` is the observed cost (missing values imputed);
    ``cost_est`` the runtime's estimate; ``prefs`` rows are ``(record, model_a, model_b, winner)``
    with winner 1 (a), 0 (b) or 0.5 (tie); ``groups`` (optional) names each record's group.
    """

    inputs: tuple[np.ndarray, ...]
    quality: np.ndarray
    cost: np.ndarray
    cost_est: np.ndarray
    prefs: np.ndarray | None = None
    groups: np.ndarray | None = None  #: per record its group name ('' = none), when router.groups is set
    weights: np.ndarray | None = None  #: per-cell quality-loss weights (clipped inverse propensities)

    def __len__(self) -> int:
        return len(self.quality)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def distributed_context() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _tensors(data: Batchable, index: np.ndarray, device: torch.device):
    inputs = tuple(torch.as_tensor(x[index]).to(device) for x in data.inputs)
    q = torch.as_tensor(data.quality[index], dtype=torch.float32, device=device)
    mask = ~torch.isnan(q)
    c = torch.as_tensor(np.nan_to_num(data.cost[index]), dtype=torch.float32, device=device)
    c_est = torch.as_tensor(data.cost_est[index], dtype=torch.float32, device=device)
    w = None if data.weights is None else torch.as_tensor(data.weights[index], dtype=torch.float32, device=device)
    return inputs, torch.nan_to_num(q), c, c_est, mask, w


def _batch_loss(module, data, index, device, loss_cfg, wtp_range, generator, pref_index=None):
    inputs, q, c, c_est, mask, weights = _tensors(data, index, device)
    logits = module(*inputs)
    loss = quality_loss(logits, q, mask, weights)
    if loss_cfg.tradeoff_weight > 0:
        w = sample_willingness(loss_cfg.knob_samples, *wtp_range, generator=generator).to(device)
        loss = loss + loss_cfg.tradeoff_weight * tradeoff_loss(logits, q, c, c_est, mask, w, loss_cfg.temperature)
    if pref_index is not None and len(pref_index) and loss_cfg.pairwise_weight > 0:
        prefs = data.prefs[pref_index]
        p_inputs = tuple(torch.as_tensor(x[prefs[:, 0].astype(np.int64)]).to(device) for x in data.inputs)
        scores = module(*p_inputs)
        rows = torch.arange(len(prefs), device=device)
        a = torch.as_tensor(prefs[:, 1].astype(np.int64), device=device)
        b = torch.as_tensor(prefs[:, 2].astype(np.int64), device=device)
        won = torch.as_tensor(prefs[:, 3], dtype=torch.float32, device=device)
        loss = loss + loss_cfg.pairwise_weight * bradley_terry_loss(scores[rows, a], scores[rows, b], won)
    return loss


def fit_module(module: torch.nn.Module, train: Batchable, val: Batchable | None, *, loss: LossConfig,
               loop: TrainLoopConfig, wtp_range: tuple[float, float], seed: int,
               on_epoch: Callable[[int, float, float | None], None] | None = None) -> list[dict]:
    """Train ``module`` (inputs -> per-model quality logits) and return the per-epoch history.

    Keeps the weights of the epoch with the lowest validation loss (training loss without a
    validation split) and stops after ``loop.patience`` epochs without improvement.
    """
    rank, world = distributed_context()
    device = resolve_device(loop.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1 + rank)
    module.to(device)
    model = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    optim = torch.optim.AdamW(module.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    rng = np.random.default_rng(seed)
    n = len(train)
    n_prefs = 0 if train.prefs is None else len(train.prefs)
    best, best_state, stale, history = math.inf, None, 0, []
    for epoch in range(loop.epochs):
        module.train()
        order = rng.permutation(n)
        pref_order = rng.permutation(n_prefs) if n_prefs else None
        if world > 1:  # same permutation on every rank (same seed), each takes an equal shard
            order = order[: len(order) // world * world][rank::world]
            if pref_order is not None:
                pref_order = pref_order[: len(pref_order) // world * world][rank::world]
        steps = max(1, math.ceil(len(order) / loop.batch_size))
        total = 0.0
        for step in range(steps):
            index = order[step * loop.batch_size:(step + 1) * loop.batch_size]
            if len(index) == 0:
                continue
            p_index = None
            if pref_order is not None:
                per = math.ceil(len(pref_order) / steps)
                p_index = pref_order[step * per:(step + 1) * per]
            batch_loss = _batch_loss(model, train, index, device, loss, wtp_range, generator, p_index)
            optim.zero_grad(set_to_none=True)
            batch_loss.backward()
            optim.step()
            total += float(batch_loss.detach()) * len(index)
        train_loss = total / max(1, len(order))
        val_loss = None
        if val is not None and len(val):
            module.eval()
            with torch.no_grad():
                eval_gen = torch.Generator().manual_seed(seed + 10_000)
                val_loss = float(_batch_loss(module, val, np.arange(len(val)), device, loss, wtp_range, eval_gen))
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if on_epoch is not None and rank == 0:
            on_epoch(epoch, train_loss, val_loss)
        score = val_loss if val_loss is not None else train_loss
        if score < best - 1e-5:
            best, stale = score, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            stale += 1
            if stale >= loop.patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    module.to("cpu")
    return history
