"""Losses shared by the torch routers.

The **quality loss** is binary cross-entropy between the predicted quality ``sigmoid(logit)`` and
the observed quality (soft targets in [0, 1]), over observed (record, model) cells only - so logged
traffic with one model per prompt trains the same head as full evaluations.

The **tradeoff loss** makes training know about cost. For a willingness to pay ``w`` (USD per unit
of quality) the router's soft choice over the models observed for a record is

    pi_w = softmax((q_hat - c_hat / w) / T)

(``c_hat``: the cost estimate the runtime will use) and its realised utility is
``U_w = sum_m pi_w[m] * u_w[m]`` with ``u_w[m] = q[m] - c[m] / w`` from the observed quality and
cost. The tradeoff term is the normalised regret ``(max_m u_w - U_w) / (max_m u_w - min_m u_w)``
(0 = the best choice for that budget, 1 = the worst), averaged over records and over ``w`` drawn
log-uniformly across the data's cost range each batch - so one router is trained for the whole
knob range rather than one budget, and every budget weighs the same. The total is

    L = BCE(q_hat, q) + tradeoff_weight * regret   [+ pairwise_weight * BT on preferences]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["bradley_terry_loss", "quality_loss", "sample_willingness", "tradeoff_loss"]


def quality_loss(logits: torch.Tensor, quality: torch.Tensor, mask: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Masked BCE between ``sigmoid(logits)`` and ``quality`` (NaN cells must be masked out).

    ``weights`` (per cell, e.g. clipped inverse propensities of logged outcomes) make it the weighted
    mean over observed cells: each model's head is then fitted as if its outcomes had been observed
    on the prompts the logging policy mostly sent elsewhere (importance weighting against the
    logging policy's covariate shift)."""
    target = torch.where(mask, quality, torch.zeros_like(quality))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weights is None:
        return (loss * mask).sum() / mask.sum().clamp_min(1)
    w = weights * mask
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


def sample_willingness(n: int, low: float, high: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` willingness-to-pay values, log-uniform in ``[low, high]`` (USD per unit quality)."""
    u = torch.rand(n, generator=generator)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def tradeoff_loss(logits: torch.Tensor, quality: torch.Tensor, cost: torch.Tensor, cost_est: torch.Tensor,
                  mask: torch.Tensor, willingness: torch.Tensor, temperature: float) -> torch.Tensor:
    """Negative expected utility of the soft choice (module doc); records with < 2 observed models
    carry no choice and are skipped."""
    rows = mask.sum(dim=1) >= 2
    if not bool(rows.any()):
        return logits.sum() * 0.0
    q_hat = torch.sigmoid(logits[rows])
    q, c, c_est, m = quality[rows], cost[rows], cost_est[rows], mask[rows]
    q = torch.where(m, q, torch.zeros_like(q))
    c = torch.where(m, c, torch.zeros_like(c))
    w = willingness.view(-1, 1, 1)                                           # (K, 1, 1)
    scores = (q_hat.unsqueeze(0) - c_est.unsqueeze(0) / w) / temperature     # (K, B, M)
    scores = scores.masked_fill(~m.unsqueeze(0), float("-inf"))
    pi = torch.softmax(scores, dim=-1)
    value = q.unsqueeze(0) - c.unsqueeze(0) / w                               # (K, B, M): no gradient
    utility = (pi * value).sum(dim=-1)                                        # (K, B)
    # normalise by the best achievable utility so every w weighs about the same
    best = value.masked_fill(~m.unsqueeze(0), float("-inf")).amax(dim=-1)
    worst = value.masked_fill(~m.unsqueeze(0), float("inf")).amin(dim=-1)
    span = (best - worst).clamp_min(1e-6)
    return ((best - utility) / span).mean()


def bradley_terry_loss(scores_a: torch.Tensor, scores_b: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss: ``P(a beats b) = sigmoid(s_a - s_b)``; ``winner`` is 1 (a), 0 (b), 0.5 (tie)."""
    return F.binary_cross_entropy_with_logits(scores_a - scores_b, winner)
