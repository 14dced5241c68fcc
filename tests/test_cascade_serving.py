"""Cascades in the routed client and the proxy: a real router, a real answer scorer, real fake upstreams.

The policy is a one-point chain tiny-1b -> frontier-xl whose acceptance score is the scorer's own
probability (logistic weights 1 on its logit, intercept 0) and whose threshold lies halfway between
the scorer's scores of a good and a bad answer, so which answers escalate is known in advance.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from router_ml import RouterMLError
from router_ml.cascade import Cascade, CascadePolicy, Point
from router_ml.cascade.combiner import Combiner
from router_ml.client import AsyncRoutedClient, RoutedClient
from router_ml.exploration import Exploration
from router_ml.router import ArtifactError
from router_ml.scorer import AnswerScorer
from training.data import load_traffic

from .conftest import ROOT
from .fake_upstream import FakeUpstream
from .test_scorer import _rows, _write
from .test_serving import Proxy, catalog, scrape

CHEAP, STRONG = "tiny-1b", "frontier-xl"
GOOD = "Let's think step by step. The law facts give it directly. The answer is (B)."
BAD = "Let's think step by step. Wait, however the law value is approximately off, not matching; the closest is " \
      "maybe. The answer is (D)."
EASY = "Question 5 about law: which statement about case 5 holds?\nA. a\nB. b\nC. c\nD. d\nAnswer:"
HARD = "Question 13 about law: which statement about case 13 holds? (tricky)\nA. a\nB. b\nC. c\nD. d\nAnswer:"

pytestmark = pytest.mark.slow  # trains an answer scorer


@pytest.fixture(scope="module")
def router(trained):
    from router_ml import Router

    return Router.load(trained.artifact, intra_op_threads=1)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, router, cache_root) -> AnswerScorer:
    """A static answer scorer for the router's models, trained on synthetic good/bad answers."""
    from training.cascade.scorer_run import train_scorer
    from training.config import load_config

    tmp = tmp_path_factory.mktemp("cascade-scorer")
    data = _write(tmp / "responses.parquet", _rows(320, models=router.models))
    config = load_config(ROOT / "training/configs/scorer_static.toml",
                         ["tracking.enabled=false", "featurizer.max_tokens=64", "scorer.response_head=16"])
    run = train_scorer(config, data, out_dir=tmp / "run", progress=False)
    return AnswerScorer.load(run["artifact"], intra_op_threads=1)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory, router, scorer) -> Cascade:
    """The module doc's policy, saved and loaded the way ``router-ml serve --cascade`` loads it."""
    good, bad = scorer.score(EASY, CHEAP, GOOD), scorer.score(HARD, CHEAP, BAD)
    assert bad < good  # the scorer learned which answer is good: the threshold between them is meaningful
    models = tuple(router.models)
    chain = (models.index(CHEAP), models.index(STRONG))
    policy = CascadePolicy(models, Combiner(("score",), {chain[:1]: np.array([1.0, 0.0])}),
                           (Point("chain", chain, ((good + bad) / 2,)),), name="test-chain",
                           router_sha256=router.manifest["files"]["router.onnx"],
                           scorer_sha256=scorer.manifest["files"]["scorer.onnx"])
    path = policy.save(tmp_path_factory.mktemp("cascade-policy") / "policy.json")
    return Cascade.load(path, scorer.directory)


@pytest.fixture
def cheap():
    with FakeUpstream() as a:
        a.reply = lambda model, body: BAD if "tricky" in body["messages"][-1]["content"] else GOOD
        yield a


@pytest.fixture
def strong():
    with FakeUpstream() as b:
        b.reply = lambda model, body: f"{model}: carefully, the answer is (B)."
        yield b


def _catalog(cheap, strong, **kwargs):
    return catalog({CHEAP: cheap.base_url, "small-8b": strong.base_url, STRONG: strong.base_url, "*": strong.base_url},
                   **kwargs)


def _ask(http, prompt, **extra):
    return http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}], **extra})


def test_a_low_scored_answer_escalates_a_high_scored_one_does_not_and_both_attempts_are_logged(
        router, cascade, cheap, strong, tmp_path):
    log = tmp_path / "decisions.jsonl"
    cat = _catalog(cheap, strong)
    client = AsyncRoutedClient(router, cat, decision_log=log, log_prompts=True, upstream="http1", cascade=cascade)
    with Proxy(client) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as http:
        easy, hard = _ask(http, EASY), _ask(http, HARD)
        metrics = scrape(http.get("/metrics").text)
        rid = hard.json()["router_ml"]["request_id"]  # rate both answers of the escalated request
        assert http.post("/v1/feedback", json={"request_id": rid, "quality": 1.0}).status_code == 200
        assert http.post("/v1/feedback", json={"request_id": rid, "model": CHEAP, "thumbs": "down"}).status_code == 200
    assert easy.status_code == hard.status_code == 200
    assert easy.json()["choices"][0]["message"]["content"] == GOOD
    assert easy.json()["router_ml"]["model"] == CHEAP
    assert hard.json()["choices"][0]["message"]["content"] == f"{STRONG}: carefully, the answer is (B)."
    assert hard.json()["router_ml"]["model"] == STRONG
    assert [len(cheap.requests), len(strong.requests)] == [2, 1]  # the easy prompt never reached the strong model

    first, second = (json.loads(line) for line in log.read_text().splitlines()[:2])  # then the two ratings
    (accepted,) = first["cascade"]["attempts"]
    assert first["chosen"] == first["model"] == CHEAP and first["cascade"]["answered"] == 0
    assert accepted["accepted"] is True and accepted["response"] == GOOD
    assert accepted["score"] == pytest.approx(cascade.scorer.score(EASY, CHEAP, GOOD), abs=1e-6)
    assert accepted["accept"] >= accepted["threshold"] and accepted["score_ms"] >= 0

    rejected, escalated = second["cascade"]["attempts"]
    assert second["chosen"] == CHEAP and second["model"] == STRONG and second["cascade"]["answered"] == 1
    assert (rejected["model"], rejected["accepted"], rejected["response"]) == (CHEAP, False, BAD)
    assert rejected["accept"] < rejected["threshold"] == accepted["threshold"]
    assert escalated["model"] == STRONG and escalated["accepted"] is True and escalated["score"] is None  # the last
    assert escalated["response"] == second["response"]  # step of a chain is never scored: it is always returned
    # cost counts every call: the request's total is the sum of both calls at their own prices
    assert rejected["cost_usd"] == pytest.approx(cat[CHEAP].price.cost(20, 10))
    assert escalated["cost_usd"] == pytest.approx(cat[STRONG].price.cost(20, 10))
    assert second["cost_usd"] == pytest.approx(rejected["cost_usd"] + escalated["cost_usd"])
    assert (second["input_tokens"], second["output_tokens"]) == (40, 20)
    assert hard.json()["router_ml"]["cascade"]["attempts"][0]["model"] == CHEAP  # the answer says what happened
    assert "response" not in hard.json()["router_ml"]["cascade"]["attempts"][0]  # texts go to the log only

    # one prompt, two rated answers: two outcomes of one training record, each with its own call's numbers
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / "unrated.jsonl")
    (record,) = table.records  # the easy request was not rated
    assert record.sample_id == rid and report.rejected == 1
    assert (record.outcomes[CHEAP].quality, record.outcomes[STRONG].quality) == (0.0, 1.0)
    assert record.outcomes[CHEAP].response == BAD and record.outcomes[CHEAP].cost == pytest.approx(rejected["cost_usd"])

    count = {labels: v for (name, labels), v in metrics.items() if name == "router_ml_cascade_steps_total"}
    assert count == {(("model", CHEAP), ("verdict", "accepted")): 1.0,
                     (("model", CHEAP), ("verdict", "escalated")): 1.0,
                     (("model", STRONG), ("verdict", "accepted")): 1.0}
    cost = {dict(labels)["model"]: v for (name, labels), v in metrics.items() if name == "router_ml_cost_usd_total"}
    assert cost[CHEAP] == pytest.approx(2 * cat[CHEAP].price.cost(20, 10))  # each call on its own model


def test_a_failing_first_model_falls_back_as_before_and_a_failed_escalation_keeps_the_first_answer(
        router, cascade, cheap, strong, tmp_path):
    log = tmp_path / "decisions.jsonl"
    cat = _catalog(cheap, strong, fallbacks={CHEAP: ["small-8b"]}, settings={"max_retries": 0})
    with RoutedClient(router, cat, decision_log=log, cascade=cascade) as client:
        cheap.mode = "500"
        fell_back = client.chat.completions.create(messages=[{"role": "user", "content": HARD}])
        cheap.mode, strong.mode = "ok", "503"
        kept = client.chat.completions.create(messages=[{"role": "user", "content": HARD}])
    assert fell_back.router_ml.model == "small-8b" and [a.model for a in fell_back.router_ml.fallbacks] == [CHEAP]
    (only,) = fell_back.router_ml.cascade["attempts"]
    assert only["model"] == "small-8b" and only["accepted"] is True and only["score"] is None  # returned unjudged

    assert kept.choices[0].message.content == BAD and kept.router_ml.model == CHEAP
    assert kept.router_ml.status == "ok" and kept.router_ml.error is None
    first, failed = kept.router_ml.cascade["attempts"]
    assert first["accepted"] is False and kept.router_ml.cascade["answered"] == 0
    assert failed["model"] == STRONG and failed["status"] == "error" and "503" in failed["error"]
    assert kept.router_ml.cost_usd == pytest.approx(first["cost_usd"])  # the failed call cost nothing
    assert [json.loads(line)["status"] for line in log.read_text().splitlines()] == ["ok", "ok"]


def test_streams_pins_and_rules_are_not_cascaded(router, cascade, cheap, strong):
    with RoutedClient(router, _catalog(cheap, strong), cascade=cascade) as client:
        stream = client.chat.completions.create(messages=[{"role": "user", "content": HARD}], stream=True)
        text = "".join(chunk.choices[0].delta.get("content", "") for chunk in stream if chunk.choices)
        pinned = client.chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": HARD}])
    assert stream.router_ml.cascade == {"skipped": "stream"} and text  # routed by the router alone, streamed
    assert pinned.router_ml.cascade is None and pinned.choices[0].message.content == BAD  # a pin is obeyed as is


def test_a_cascade_refuses_the_wrong_router_scorer_or_exploration(router, cascade, scorer, cheap, strong, tmp_path):
    policy = cascade.policy
    with pytest.raises(ArtifactError, match="fitted with the scorer"):
        Cascade(CascadePolicy(policy.models, policy.combiner, policy.points, scorer_sha256="0" * 64), scorer)
    other = Cascade(CascadePolicy(policy.models, policy.combiner, policy.points, router_sha256="f" * 64), scorer)
    with pytest.raises(RouterMLError, match="fitted on the router whose router.onnx"):
        AsyncRoutedClient(router, _catalog(cheap, strong), cascade=other)
    shuffled = tuple(reversed(policy.models))
    with pytest.raises(RouterMLError, match="serve the policy with its own router"):
        AsyncRoutedClient(router, _catalog(cheap, strong), cascade=Cascade(
            CascadePolicy(shuffled, policy.combiner, policy.points), scorer))
    with pytest.raises(RouterMLError, match="a cascade and exploration cannot run together"):
        AsyncRoutedClient(router, _catalog(cheap, strong), cascade=cascade,
                          exploration=Exploration("epsilon", rate=0.1))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(RouterMLError, match="bad.json: not a router-ml-cascade-policy"):
        Cascade.load(tmp_path / "bad.json", scorer.directory)


def test_serve_takes_the_cascade_and_its_scorer_together():
    from router_ml.cli import build_parser, serve_options

    args = build_parser(command_groups=False).parse_args(
        ["serve", "--artifact", "a", "--providers", "p.toml", "--cascade", "policy.json"])
    with pytest.raises(RouterMLError, match="--cascade POLICY.json and --scorer DIR go together"):
        serve_options(args)
