"""Replay a benchmark's test prompts through the served cascade and check it does what the evaluation said.

``router-ml cascade evaluate`` scores a policy offline, on matrices. This script serves the same
policy the way production does - :class:`router_ml.client.AsyncRoutedClient` with a
:class:`router_ml.cascade.Cascade`, real HTTP calls to a fake OpenAI-compatible upstream on
127.0.0.1 (``tests/fake_upstream.py``) that answers each (model, prompt) with the response text the
data recorded - and compares, prompt by prompt, which models the served cascade called and whose
answer it returned with the offline policy's choices (:func:`router_ml.cascade.policy.run_point` on
the same test rows, signals built as ``cascade evaluate`` builds them). Quality and cost of the
served answers are read from the data (observed quality, observed cost of every call made), so
they equal the offline numbers exactly when the decisions do.

It also reports what a cascade adds per request: the scorer's time (median and p99 of the
``score_ms`` the client logs per scored answer) and the mean number of calls, beside the router's
decision time of the same requests (``routing_ms``).

    python scripts/cascade_replay.py --router runs/router/s0/artifact --scorer runs/scorer/s0/artifact \\
        --policy runs/cascade/s0/policy.json --data $DATA --train-size 0.7 --seed 0 --limit 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def knob_values(policy, count: int) -> list[float]:
    """``count`` knob values spread over the policy's points: each one's start of range (0 for the first)."""
    picks = np.unique(np.linspace(0, len(policy.points) - 1, count).round().astype(int))
    return [policy.points[i].min_wtp for i in picks]


async def replay(client, prompts: list[str], rows: list[int], knob: float, concurrency: int) -> list:
    """Send every prompt (its data row in ``user``, which the fake upstream reads) and return RouteInfos."""
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: str, row: int):
        async with gate:
            answer = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}],
                                                          user=str(row), willingness_to_pay=knob)
            return answer.router_ml

    return await asyncio.gather(*(one(p, r) for p, r in zip(prompts, rows, strict=True)))


def main(argv: list[str] | None = None) -> int:
    from router_ml.cli import bounded

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--router", required=True)
    parser.add_argument("--scorer", required=True)
    parser.add_argument("--policy", required=True, help="policy.json written by 'router-ml cascade evaluate'")
    parser.add_argument("--data", required=True)
    parser.add_argument("--train-size", type=float, default=0.7)
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--limit", type=bounded(int, 1), default=600,
                        help="test prompts replayed per knob (default 600)")
    parser.add_argument("--knobs", type=bounded(int, 1), default=4,
                        help="knob values spread over the policy (default 4)")
    parser.add_argument("--concurrency", type=bounded(int, 1), default=8, help="requests in flight (default 8)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from router_ml import Router
    from router_ml.cascade import Cascade
    from router_ml.cascade.policy import run_point
    from router_ml.client import AsyncRoutedClient
    from router_ml.providers import ProviderCatalog
    from tests.fake_upstream import FakeUpstream
    from training.cascade.command import build_signals
    from training.costs import observed_costs
    from training.data import load_traffic, split_table

    router = Router.load(args.router, intra_op_threads=1)
    cascade = Cascade.load(args.policy, args.scorer, intra_op_threads=1)
    table, _ = load_traffic(args.data)
    config = (router.manifest.get("training") or {}).get("config") or {}
    split = split_table(table, train_size=args.train_size, val_size=config.get("data.val_size", 0.1), seed=args.seed)
    order = [table.models.index(m) for m in router.models]
    quality, cost = table.quality[:, order], observed_costs(table, split.train)[:, order]
    responses = [table.responses(m) for m in router.models]
    complete = split.test[np.all([[r[i] is not None for i in split.test] for r in responses], axis=0)
                          & ~np.isnan(quality[split.test]).any(axis=1)]
    rows = complete[:args.limit]
    texts = [table.texts[i] for i in rows]

    t0 = time.perf_counter()
    signals = build_signals(table, rows, router=router, score_fn=cascade.scorer.score_many).subset(rows)
    offline_s = time.perf_counter() - t0
    by_name = {m: j for j, m in enumerate(router.models)}
    upstream = FakeUpstream()
    upstream.reply = lambda model, body: responses[by_name[model]][int(body["user"])]
    upstream.start()
    catalog = ProviderCatalog({"settings": {"request_timeout_s": 30.0, "max_retries": 0},
                               "models": {m: {"base_url": upstream.base_url, "input_per_mtok": 1.0,
                                              "output_per_mtok": 1.0} for m in router.models}},
                              source="cascade_replay")
    report = {"router": args.router, "scorer": args.scorer, "policy": args.policy, "data": args.data,
              "seed": args.seed, "test_prompts": len(rows), "scorer_kind": cascade.scorer.kind,
              "offline_signals_s": round(offline_s, 2), "knobs": []}
    try:
        for knob in knob_values(cascade.policy, args.knobs):
            point = cascade.policy.point(knob)
            offline = run_point(point, signals, cascade.policy.combiner, cost[rows])

            async def run(knob: float = knob) -> list:
                async with AsyncRoutedClient(router, catalog, upstream="http1", cascade=cascade) as client:
                    return await replay(client, texts, [int(i) for i in rows], knob, args.concurrency)

            t1 = time.perf_counter()
            infos = asyncio.run(run())
            wall = time.perf_counter() - t1
            answered = np.array([by_name[i.model] for i in infos])
            called = [[by_name[a["model"]] for a in i.cascade["attempts"]] for i in infos]
            paid = np.array([sum(cost[r, j] for j in c) for r, c in zip(rows, called, strict=True)])
            same_answer = answered == offline.answered
            same_calls = np.array([len(c) for c in called]) == offline.calls
            score_ms = [a["score_ms"] for i in infos for a in i.cascade["attempts"] if "score_ms" in a]
            report["knobs"].append({
                "willingness_to_pay": knob, "point": point.to_json(cascade.policy.models),
                "same_answering_model": float(same_answer.mean()), "same_number_of_calls": float(same_calls.mean()),
                "served": {"quality": float(quality[rows, answered].mean()), "mean_cost": float(paid.mean()),
                           "calls_per_request": float(np.mean([len(c) for c in called]))},
                "offline": {"quality": float(offline.quality(quality[rows]).mean()),
                            "mean_cost": float(offline.cost.mean()), "calls_per_request": float(offline.calls.mean())},
                "scorer_ms": {"calls": len(score_ms), "p50": float(np.median(score_ms)) if score_ms else None,
                              "p99": float(np.percentile(score_ms, 99)) if score_ms else None},
                "routing_ms_p50": float(np.median([i.routing_ms for i in infos])),
                "requests_per_s": round(len(rows) / wall, 1)})
    finally:
        upstream.stop()
    print(json.dumps(report, indent=1))
    return 0 if all(k["same_answering_model"] == 1.0 for k in report["knobs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
