"""One short training loop for every torch router, with early stopping and optional DDP.

**Memory.** The loop holds at most ``train.memory_mb`` MiB of a split's inputs and targets (and at
least one cache shard): a split that fits is read into memory once and trained on in one
permutation per epoch, exactly as before streaming existed; a larger one - features stay in the
feature cache, see :class:`~training.featurizers.FeatureMatrix` - is streamed: each epoch shuffles
the cache's shards, packs them into windows that fit the budget, and shuffles each window's records
(:func:`epoch_windows`). ``train.max_steps`` caps the optimizer steps, so time is bounded too.

**DDP.** Run under ``torchrun --nproc-per-node N`` and the loop joins the process group (gloo on
CPU, NCCL on GPUs) and wraps the module in DistributedDataParallel; each rank reads only its own
shards of the feature cache (shard ``s`` goes to rank ``s % N``) and all ranks take the same number
of steps per epoch; every rank evaluates the validation set itself so that all ranks stop at the
same epoch. Without torchrun it is a plain single-process loop.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from router_ml.errors import RouterMLError
from training.config import LossConfig, TrainLoopConfig
from training.featurizers import SHARD_ROWS
from training.losses import bradley_terry_loss, quality_loss, sample_willingness, tradeoff_loss
from training.progress import bar

__all__ = ["Batchable", "distributed_context", "epoch_windows", "fit_module", "on_device", "resolve_device",
           "window_rows"]


@dataclass
class Batchable:
    """Training arrays for one split; ``inputs`` is a tuple of arrays the module's forward takes.

    ``quality`` has NaN where unobserved; ``cost`` is the observed cost (missing values imputed);
    ``cost_est`` the runtime's estimate; ``prefs`` rows are ``(record, model_a, model_b, winner)``
    with winner 1 (a), 0 (b) or 0.5 (tie); ``groups`` (optional) names each record's group.
    With ``rows`` the inputs are the whole table's (e.g. a :class:`~training.featurizers.FeatureMatrix`
    over the feature cache) and record ``k`` of this split is their row ``rows[k]``: the loop then
    reads the inputs window by window instead of holding the split's copy.
    """

    inputs: tuple[np.ndarray, ...]
    quality: np.ndarray
    cost: np.ndarray
    cost_est: np.ndarray
    prefs: np.ndarray | None = None
    groups: np.ndarray | None = None  #: per record its group name ('' = none), when router.groups is set
    weights: np.ndarray | None = None  #: per-cell quality-loss weights (clipped inverse propensities)
    rows: np.ndarray | None = None  #: the split's rows of ``inputs``; None: ``inputs`` hold the split's own rows
    #: per cell whether ``quality`` holds an imputed target, not an outcome (completed logged records)
    imputed: np.ndarray | None = None
    #: the logging policy's propensity of each logged outcome (NaN elsewhere); None where the data logged none
    propensity: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.quality)

    def input_rows(self, local: np.ndarray) -> tuple[np.ndarray, ...]:
        """The inputs of the split's records ``local`` (positions in the split), in memory."""
        rows = local if self.rows is None else self.rows[local]
        return tuple(np.asarray(x[rows]) for x in self.inputs)

    def table_rows(self) -> np.ndarray:
        """Each record's row in ``inputs`` (the shard it lies in decides which DDP rank reads it)."""
        return np.arange(len(self)) if self.rows is None else np.asarray(self.rows)

    def take(self, local: np.ndarray) -> Batchable:
        """The records ``local`` (positions) of this split, their preferences renumbered."""
        local = np.asarray(local, dtype=np.int64)
        prefs = None
        if self.prefs is not None:
            where = np.full(len(self), -1)
            where[local] = np.arange(len(local))
            kept = self.prefs[where[self.prefs[:, 0].astype(np.int64)] >= 0]
            prefs = np.column_stack([where[kept[:, 0].astype(np.int64)], kept[:, 1:]]) if len(kept) else None

        def part(a):
            return None if a is None else a[local]
        shared = self.rows is not None  # the whole table's inputs stay shared; else the records' own copies
        return Batchable(inputs=self.inputs if shared else tuple(x[local] for x in self.inputs),
                         quality=self.quality[local], cost=self.cost[local], cost_est=self.cost_est[local],
                         prefs=prefs, groups=part(self.groups), weights=part(self.weights), rows=part(self.rows),
                         imputed=part(self.imputed), propensity=part(self.propensity))

    def concat(self, other: Batchable | None) -> Batchable:
        """This split and ``other`` as one pool of records (this one first), e.g. train + validation."""
        if other is None or not len(other):
            return self

        def cat(x, y):
            return None if x is None or y is None else np.concatenate([x, y])
        prefs = self.prefs
        if other.prefs is not None:
            shifted = np.column_stack([other.prefs[:, 0] + len(self), other.prefs[:, 1:]])
            prefs = shifted if prefs is None else np.concatenate([prefs, shifted])
        same_inputs = (self.rows is not None and other.rows is not None
                       and all(x is y for x, y in zip(self.inputs, other.inputs, strict=True)))
        inputs = self.inputs if same_inputs else tuple(
            np.concatenate([np.asarray(x[self.table_rows()]), np.asarray(y[other.table_rows()])])
            for x, y in zip(self.inputs, other.inputs, strict=True))
        weights = None
        if self.weights is not None or other.weights is not None:  # 1 for a part without any
            weights = np.concatenate([np.ones(x.quality.shape, np.float32) if x.weights is None else x.weights
                                      for x in (self, other)])
        imputed = None
        if self.imputed is not None or other.imputed is not None:  # none imputed in a part without the mask
            imputed = np.concatenate([np.zeros(x.quality.shape, bool) if x.imputed is None else x.imputed
                                      for x in (self, other)])
        return Batchable(inputs=inputs, quality=np.concatenate([self.quality, other.quality]),
                         cost=np.concatenate([self.cost, other.cost]),
                         cost_est=np.concatenate([self.cost_est, other.cost_est]), prefs=prefs,
                         groups=cat(self.groups, other.groups), weights=weights,
                         rows=cat(self.rows, other.rows) if same_inputs else None, imputed=imputed,
                         propensity=cat(self.propensity, other.propensity))


def window_rows(data: Batchable, memory_mb: int) -> int:
    """How many of ``data``'s records the loop holds at once within ``memory_mb`` MiB: their inputs
    plus the float32 copies of their targets (at least one batch's worth is always allowed)."""
    per_row = sum(int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize for x in data.inputs)
    per_row += 4 * 5 * int(np.prod(data.quality.shape[1:], dtype=np.int64))
    return max(1, memory_mb * 2**20 // max(1, per_row))


def epoch_windows(table_rows: np.ndarray, rng: np.random.Generator, *, window: int, rank: int = 0, world: int = 1,
                  shard_rows: int = SHARD_ROWS, local_rng: np.random.Generator | None = None,
                  ) -> tuple[list[np.ndarray], int]:
    """One epoch's order of a split's records (positions into ``table_rows``) as windows of at most
    ``window`` records, and the number of records this rank trains on this epoch.

    One process whose split fits one window: a single permutation of every record (the loop's order
    before streaming, so small runs train exactly as before). Otherwise the records are grouped by
    the feature-cache shard their row lies in (``row // shard_rows``); the shards are shuffled with
    ``rng`` (the same draw on every rank), this rank keeps the shards ``s % world == rank``, packs
    them whole into windows and shuffles each window's records with ``local_rng``. Under DDP every
    rank must take the same number of steps, so the count returned is the smallest rank's record
    count (the others drop the tail of their last window this epoch); a split smaller than
    ``world * 16`` shards is cut into finer shards so that every rank gets records."""
    n = len(table_rows)
    if world == 1 and n <= window:
        return [rng.permutation(n)], n
    local_rng = rng if local_rng is None else local_rng
    if n and world > 1:
        shard_rows = max(1, min(shard_rows, (int(table_rows.max()) + 1) // (16 * world)))
    shard = np.asarray(table_rows, dtype=np.int64) // shard_rows
    order = np.argsort(shard, kind="stable")
    ids, starts, counts = np.unique(shard[order], return_index=True, return_counts=True)
    per_rank = np.bincount(ids % world, weights=counts, minlength=world)
    windows: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for k in rng.permutation(len(ids)):
        if ids[k] % world != rank:
            continue
        if current and size + counts[k] > window:
            windows.append(np.concatenate(current))
            current, size = [], 0
        current.append(order[starts[k]:starts[k] + counts[k]])
        size += int(counts[k])
    if current:
        windows.append(np.concatenate(current))
    return [w[local_rng.permutation(len(w))] for w in windows], int(per_rank.min())


def _in_memory(data: Batchable, window: int) -> Batchable:
    """``data`` with its inputs read into memory when its records fit in ``window``; else as it is."""
    if data.rows is None or len(data) > window:
        return data
    return dataclasses.replace(data, inputs=data.input_rows(np.arange(len(data))), rows=None)


def _batches(data: Batchable, windows: list[np.ndarray], batch_size: int, limit: int):
    """``(positions, inputs)`` of consecutive batches over the windows, loading one window at a time;
    a batch may span two windows (the rows left at a window's end join the next one's first), so the
    batches are those of the concatenated order, up to ``limit`` records."""
    carry_pos: np.ndarray | None = None
    carry_x: tuple[np.ndarray, ...] = ()
    done = 0
    for w in windows:
        w = w[: max(0, limit - done - (0 if carry_pos is None else len(carry_pos)))]
        xs = data.input_rows(w)
        start = 0
        if carry_pos is not None:
            start = batch_size - len(carry_pos)
            pos = np.concatenate([carry_pos, w[:start]])
            inputs = tuple(np.concatenate([c, x[:start]]) for c, x in zip(carry_x, xs, strict=True))
            carry_pos = None
            if len(pos) < batch_size:
                carry_pos, carry_x = pos, inputs
                continue
            done += len(pos)
            yield pos, inputs
        full = start + (len(w) - start) // batch_size * batch_size
        for a in range(start, full, batch_size):
            done += batch_size
            yield w[a:a + batch_size], tuple(x[a:a + batch_size].copy() for x in xs)  # (no view of the window)
        if full < len(w):  # copies: a view would keep the whole window alive while the next one loads
            carry_pos, carry_x = w[full:], tuple(x[full:].copy() for x in xs)
        del xs
    if carry_pos is not None and len(carry_pos):
        yield carry_pos, carry_x


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is CUDA where a device is there, else the CPU; ``cuda`` on a machine without
    one is an error saying so (it was torch's "not compiled with CUDA" at the first fit, after the features)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RouterMLError("train.device = \"cuda\": this machine has no CUDA device torch can use; set "
                            "train.device = \"auto\" (CUDA where there is one) or \"cpu\"")
    return torch.device(name)


@contextlib.contextmanager
def on_device(module: torch.nn.Module, name: str):
    """Run ``module`` on ``train.device`` (CUDA when present for ``"auto"``) inside the block and hand it
    back on the CPU: a fitted module lives on the CPU (saving, export and the ONNX parity check read it
    there), but scoring thousands of test prompts through a fine-tuned encoder belongs on the GPU that
    fine-tuned it. Yields the device the block should put its inputs on."""
    device = resolve_device(name)
    module.to(device)
    try:
        yield device
    finally:
        module.to("cpu")


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
    q = torch.as_tensor(data.quality[index], dtype=torch.float32, device=device)
    mask = ~torch.isnan(q)
    c = torch.as_tensor(np.nan_to_num(data.cost[index]), dtype=torch.float32, device=device)
    c_est = torch.as_tensor(data.cost_est[index], dtype=torch.float32, device=device)
    w = None if data.weights is None else torch.as_tensor(data.weights[index], dtype=torch.float32, device=device)
    return torch.nan_to_num(q), c, c_est, mask, w


def _batch_loss(module, data, index, inputs, device, loss_cfg, wtp_range, generator, pref_index=None):
    """The loss of the split's records ``index`` whose ``inputs`` (in memory) are given."""
    q, c, c_est, mask, weights = _tensors(data, index, device)
    logits = module(*(torch.as_tensor(x).to(device) for x in inputs))
    loss = quality_loss(logits, q, mask, weights)
    if loss_cfg.tradeoff_weight > 0:
        w = sample_willingness(loss_cfg.knob_samples, *wtp_range, generator=generator).to(device)
        loss = loss + loss_cfg.tradeoff_weight * tradeoff_loss(logits, q, c, c_est, mask, w, loss_cfg.temperature)
    if pref_index is not None and len(pref_index) and loss_cfg.pairwise_weight > 0:
        prefs = data.prefs[pref_index]
        p_inputs = tuple(torch.as_tensor(x).to(device) for x in data.input_rows(prefs[:, 0].astype(np.int64)))
        scores = module(*p_inputs)
        rows = torch.arange(len(prefs), device=device)
        a = torch.as_tensor(prefs[:, 1].astype(np.int64), device=device)
        b = torch.as_tensor(prefs[:, 2].astype(np.int64), device=device)
        won = torch.as_tensor(prefs[:, 3], dtype=torch.float32, device=device)
        loss = loss + loss_cfg.pairwise_weight * bradley_terry_loss(scores[rows, a], scores[rows, b], won)
    return loss


#: records per validation forward pass: the activations of one pass over a whole memory window (a
#: 512-wide hidden layer over 238k records: 1 GB) were the largest allocation of a 10M-record fit
VALIDATION_CHUNK = 65536


def _validation_loss(module, val: Batchable, device, loss_cfg, wtp_range, seed: int, window: int) -> float:
    """The validation loss, computed ``min(window, VALIDATION_CHUNK)`` records at a time (each chunk
    draws the same willingness values; the chunks' losses are averaged by their record counts)."""
    module.eval()
    total = 0.0
    window = max(1, min(window, VALIDATION_CHUNK))
    with torch.no_grad():
        for a in range(0, len(val), window):
            index = np.arange(a, min(a + window, len(val)))
            eval_gen = torch.Generator().manual_seed(seed + 10_000)
            chunk = _batch_loss(module, val, index, val.input_rows(index), device, loss_cfg, wtp_range, eval_gen)
            total += float(chunk) * len(index)
    return total / len(val)


def _epoch_bar(epoch: int, loop: TrainLoopConfig, steps: int, steps_done: int, *, enabled: bool):
    """One epoch's bar (:mod:`training.progress`): steps, rate, ETA and the running training loss,
    ending on the epoch's training and validation losses. Only rank 0 draws one under DDP."""
    if loop.max_steps:
        steps = max(0, min(steps, loop.max_steps - steps_done))
    return bar(total=steps, desc=f"train epoch {epoch + 1}/{loop.epochs}", unit="step", enabled=enabled)


def fit_module(module: torch.nn.Module, train: Batchable, val: Batchable | None, *, loss: LossConfig,
               loop: TrainLoopConfig, wtp_range: tuple[float, float], seed: int,
               on_epoch: Callable[[int, float, float | None], None] | None = None) -> list[dict]:
    """Train ``module`` (inputs -> per-model quality logits) and return the per-epoch history.

    Keeps the weights of the epoch with the lowest validation loss (training loss without a
    validation split) and stops after ``loop.patience`` epochs without improvement, or once
    ``loop.max_steps`` optimizer steps are done. At most ``loop.memory_mb`` MiB of inputs and
    targets are held at once: a larger split streams window by window (:func:`epoch_windows`).
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
    window = max(window_rows(train, loop.memory_mb), loop.batch_size)
    if world == 1:  # a split that fits the budget is read once and kept for every epoch
        train = _in_memory(train, window)
    val = None if val is None else _in_memory(val, window_rows(val, loop.memory_mb))
    table_rows = train.table_rows()
    n_prefs = 0 if train.prefs is None else len(train.prefs)
    best, best_state, stale, history, steps_done = math.inf, None, 0, [], 0
    for epoch in range(loop.epochs):
        module.train()
        windows, count = epoch_windows(table_rows, rng, window=window, rank=rank, world=world,
                                       local_rng=np.random.default_rng([seed, epoch, rank]))
        pref_order = rng.permutation(n_prefs) if n_prefs else None
        if world > 1 and pref_order is not None:  # same permutation on every rank (same seed), each takes a share
            pref_order = pref_order[: len(pref_order) // world * world][rank::world]
        steps = max(1, math.ceil(count / loop.batch_size))
        total, seen = 0.0, 0
        progress = _epoch_bar(epoch, loop, steps, steps_done, enabled=rank == 0)
        for step, (index, inputs) in enumerate(_batches(train, windows, loop.batch_size, count)):
            p_index = None
            if pref_order is not None:
                per = math.ceil(len(pref_order) / steps)
                p_index = pref_order[step * per:(step + 1) * per]
            batch_loss = _batch_loss(model, train, index, inputs, device, loss, wtp_range, generator, p_index)
            optim.zero_grad(set_to_none=True)
            batch_loss.backward()
            optim.step()
            total += float(batch_loss.detach()) * len(index)
            seen += len(index)
            steps_done += 1
            progress.set_postfix(loss=f"{total / seen:.4f}", refresh=False)  # the epoch's running mean
            progress.update()
            if loop.max_steps and steps_done >= loop.max_steps:
                break
        train_loss = total / max(1, seen)
        val_loss = None
        if val is not None and len(val):
            progress.set_postfix(loss=f"{train_loss:.4f}", val_loss="...")
            val_loss = _validation_loss(module, val, device, loss, wtp_range, seed,
                                        max(window_rows(val, loop.memory_mb), 1))
        progress.set_postfix(loss=f"{train_loss:.4f}", **({} if val_loss is None else {"val_loss": f"{val_loss:.4f}"}),
                             refresh=False)
        progress.close()
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "steps": steps_done,
                        "records": seen})  # this rank's records this epoch (its shards under DDP)
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
        if loop.max_steps and steps_done >= loop.max_steps:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    module.to("cpu")
    return history
