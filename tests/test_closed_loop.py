"""The whole learning loop, end to end, through the real pieces: ``router-ml serve`` explores in front of
fake upstreams and logs each decision with its propensity; ratings reach the log through
``POST /v1/feedback`` and ``router-ml feedback``; ``router-ml train`` learns a new router from that log
and exports it; ``router-ml evaluate`` scores the new router off-policy on the log; the new artifact
loads and routes.

The prompts are demo prompts the session's router never saw, so every model's outcome on them is known:
the ratings are the demo data's quality of the model that answered, and the off-policy estimate can be
checked against the exact score of the same choices on the same prompts with every outcome.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import httpx
import numpy as np
import pytest

from router_ml import Router
from router_ml.policy import choose
from training.data import load_traffic, write_jsonl

from .conftest import DEMO, ROOT, strict_json
from .fake_upstream import FakeUpstream

N_REQUESTS = 200
RATE = 0.3
SEED = 11
CLI = [sys.executable, "-m", "router_ml.cli"]


def _run(*args: str, cwd, timeout: int = 300) -> dict:
    """One ``router-ml`` command; its last stdout line, parsed."""
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return strict_json(out.stdout.strip().splitlines()[-1])


def _serve(artifact, upstream: FakeUpstream, tmp_path) -> tuple[subprocess.Popen, str]:
    """``router-ml serve`` on the demo catalog pointed at ``upstream``, exploring at RATE: the process and
    its root URL."""
    providers = tmp_path / "providers.toml"
    root = upstream.base_url.removesuffix("/v1")
    providers.write_text((ROOT / "data/demo/providers.toml").read_text()
                         .replace("http://127.0.0.1:9100", root).replace("http://localhost:9100", root))
    proc = subprocess.Popen([*CLI, "serve", "--artifact", str(artifact), "--providers", str(providers), "--port", "0",
                             "--decision-log", str(tmp_path / "decisions.jsonl"), "--log-prompts",
                             "--explore-rate", str(RATE), "--explore-seed", str(SEED)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "serving" not in line:
        proc.kill()
        pytest.fail(line + proc.communicate(timeout=30)[1])
    return proc, "http://" + line.split("http://", 1)[1].split()[0].removesuffix("/v1")


def _greedy(line: dict) -> str:
    """The router's greedy choice, reproduced from a decision line alone (scores, routing prices, knob)."""
    policy = line["policy"]
    models = list(policy["prices"])
    tokens = (len(line["prompt"]) + 3) // 4
    costs = np.array([[fixed + tokens * per_token for fixed, per_token in policy["prices"].values()]])
    knob = math.inf if policy["willingness_to_pay"] is None else policy["willingness_to_pay"]
    return models[int(choose(np.array([[line["scores"][m] for m in models]]), costs, knob)[0])]


@pytest.mark.slow
def test_serve_explore_rate_retrain_and_evaluate_off_policy(trained, tmp_path):
    """200 requests at explore rate 0.3 (seed 11), every one rated; about 15-20 s on top of the session's
    ``trained`` fixture, and the same numbers on every run (the server handles one request at a time,
    the explorer is seeded, training is seeded)."""
    demo, _ = load_traffic(DEMO)
    by_text = dict(zip(demo.texts, demo.records, strict=True))
    prompts = trained.held_out[:N_REQUESTS]
    log = tmp_path / "decisions.jsonl"

    # 1. serve the session's router with exploration; send demo prompts; rate the first half over HTTP
    with FakeUpstream() as upstream:
        proc, base = _serve(trained.artifact, upstream, tmp_path)
        try:
            with httpx.Client(base_url=base, timeout=30) as http:
                answers = []
                for p in prompts:
                    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": p}]})
                    assert r.status_code == 200, r.text
                    answers.append(r.json()["router_ml"])
                ratings = [{"request_id": a["request_id"], "quality": by_text[p].outcomes[a["model"]].quality}
                           for p, a in zip(prompts, answers, strict=True)]
                for rating in ratings[:N_REQUESTS // 2]:
                    assert http.post("/v1/feedback", json=rating).status_code == 200
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr

    lines = [json.loads(x) for x in log.read_text().splitlines()]
    decisions = [x for x in lines if x["type"] == "decision"]
    assert [d["request_id"] for d in decisions] == [a["request_id"] for a in answers]
    assert [d["prompt"] for d in decisions] == prompts
    for d, a in zip(decisions, answers, strict=True):
        assert d["status"] == "ok" and d["model"] == d["chosen"] == a["model"]  # no fallback answered
        assert 0 < d["propensity"] <= 1 and (d["propensity"], d["explored"]) == (a["propensity"], a["explored"])
        if d["rule"] is not None:  # the catalog's rules decide before the router and never explore
            assert (d["propensity"], d["explored"]) == (1.0, False)
            continue
        k = len(d["policy"]["prices"])  # epsilon: uniform over every model, the greedy one included
        greedy = _greedy(d)
        assert d["explored"] == (d["chosen"] != greedy)
        assert d["propensity"] == pytest.approx(1 - RATE + RATE / k if d["chosen"] == greedy else RATE / k)
        assert d["policy"]["exploration"]["rate"] == RATE and d["policy"]["exploration"]["seed"] == SEED
    routed = [d for d in decisions if d["rule"] is None]
    explored = sum(d["explored"] for d in routed) / len(routed)
    assert 0.14 < explored < 0.34, explored  # expected RATE * (k - 1) / k = 0.24
    models = Router.load(trained.artifact).models
    assert {d["chosen"] for d in decisions} == set(models)  # exploration reached every model

    # 2. the rest of the ratings with the feedback command; the log now reads as logged traffic
    (tmp_path / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ratings[N_REQUESTS // 2:]))
    assert _run("feedback", "--log", str(log), "--file", str(tmp_path / "ratings.jsonl"), cwd=tmp_path) == \
        {"log": str(log), "recorded": N_REQUESTS - N_REQUESTS // 2}
    info = _run("data", "inspect", str(log), "--json", cwd=tmp_path)
    assert (info["format"], info["records"], info["rejected"], info["outcomes"]) == \
        ("decisions", N_REQUESTS, 0, N_REQUESTS)
    assert set(info["propensity_coverage"].values()) == {1.0}
    assert min(p for p in info["min_propensity"].values()) == pytest.approx(RATE / len(models))
    table, _ = load_traffic(log)
    by_id = {d["request_id"]: d for d in decisions}
    for record in table.records:  # the join carries each decision's propensity and the rating through
        (model, outcome), = record.outcomes.items()
        d = by_id[record.sample_id]
        assert (model, outcome.propensity) == (d["model"], d["propensity"])
        assert outcome.quality == by_text[record.prompt].outcomes[model].quality

    # 3. train a new router on the log alone (masked: one rated model per prompt) and export it
    new = tmp_path / "v2"
    summary = _run("train", "--config", str(ROOT / "training/configs/mlp_static.toml"), "--data", str(log),
                   "--out", str(new), "--seed", "0", "--quiet", "--set", "train.epochs=10", "--set", "eval.n_boot=0",
                   "--set", "eval.baselines=random", "--set", "tracking.enabled=false", cwd=tmp_path)
    assert summary["train_records"] + summary["val_records"] + summary["test_records"] == N_REQUESTS
    assert summary["rejected"] == 0 and summary["artifact"] == str(new / "artifact")
    assert summary["test"]["estimator"] == "snips"

    # 4. evaluate it off-policy on the log (its training prompts dropped), next to the exact score of the same
    # prompts with every outcome from the demo data, and its export through the runtime
    full = write_jsonl([by_text[p] for p in prompts], tmp_path / "full.jsonl")
    result = _run("evaluate", "--checkpoint", str(new), "--data", str(log), "--data", str(full),
                  "--artifact", summary["artifact"], "--json", cwd=tmp_path)
    off, exact = result["sets"]
    assert off["scored"] == exact["scored"] == summary["test_records"]
    assert off["dropped_seen"] == exact["dropped_seen"] == summary["train_records"] + summary["val_records"]
    test = off["test"]
    assert (test["estimator"], exact["test"]["estimator"]) == ("snips", "exact")
    assert test["off_policy"]["propensities"] == "logged"
    ess = test["off_policy"]["effective_sample_size"]
    assert 1 <= ess["min"] <= ess["median"] <= off["scored"]
    assert 0 <= test["aiq"] <= 1 and 0 <= test["best_quality"] <= 1
    print(json.dumps({"off_policy": {k: test[k] for k in ("aiq", "best_quality")}, "ess": ess,
                      "exact": {k: exact["test"][k] for k in ("aiq", "best_quality")}}))
    # the same choices on the same prompts: SNIPS on the log lands near the exact score. (AIQ is not compared:
    # the log's costs are the fake upstream's fixed token counts, the demo data's are the generated ones.)
    assert test["best_quality"] == pytest.approx(exact["test"]["best_quality"], abs=0.05)
    # and the router learned from one rated model per prompt: it beats random routing at matched cost
    assert exact["test"]["aiq"] > exact["test"]["baselines"]["random"]["aiq"] + 0.05
    art = off["artifacts"][0]
    assert art["changed_routes"] <= 0.02 and art["max_abs_diff"] < 1e-3

    # 5. the new artifact loads in the torch-free runtime and routes
    router = Router.load(new / "artifact")
    assert set(router.models) == set(models)
    routes = router.route_batch(prompts[:20])
    assert all(r.model in router.models and r.propensity == 1.0 and not r.explored for r in routes)
