"""Calling providers for real: the catalog, the routed client, the proxy, the decision log and the
feedback loop, against fake OpenAI-compatible upstreams that are real HTTP servers on 127.0.0.1
(tests/fake_upstream.py) and a real exported router (the session's ``trained`` fixture).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from router_ml import CatalogError, DataError, Router, RouterMLError
from router_ml.client import AsyncRoutedClient, RequestError, RoutedClient, StreamInterrupted, UpstreamError
from router_ml.decision_log import FEEDBACK_FIELDS, FORMAT_VERSION, DecisionLog, feedback_record, log_files
from router_ml.providers import ProviderCatalog
from router_ml.router import _choose_one
from router_ml.serve import Metrics, bind, create_app, make_server
from training.data import load_traffic

from .conftest import ROOT
from .fake_upstream import FakeUpstream

MODELS = ("tiny-1b", "small-8b", "code-34b", "large-70b", "frontier-xl")
PRICES = {"tiny-1b": (0.05, 0.1), "small-8b": (0.2, 0.4), "code-34b": (0.6, 1.2), "large-70b": (1.5, 3.0),
          "frontier-xl": (5.0, 10.0)}
FAST = {"max_retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.05, "request_timeout_s": 10.0}
SECRET = "sk-test-7f3a9c0e5b1d4e2fa8c6"
MSG = [{"role": "user", "content": "What is the capital of France?"}]


def catalog_data(urls: dict[str, str], *, fallbacks: dict[str, list[str]] | None = None, settings=None,
                 **per_model) -> dict:
    models = {}
    for m in MODELS:
        entry = {"base_url": urls.get(m, urls.get("*")), "input_per_mtok": PRICES[m][0],
                 "output_per_mtok": PRICES[m][1], "timeout_s": 5.0,
                 "fallbacks": (fallbacks or {}).get(m, [])}
        entry.update(per_model.get(m, {}))
        models[m] = entry
    return {"settings": {**FAST, **(settings or {})}, "models": models}


class FakeClock:
    """A monotonic clock the test moves by hand: the circuit breakers' cooldowns pass without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus_client's own parser: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def catalog(urls, **kwargs) -> ProviderCatalog:
    environ = kwargs.pop("environ", {})
    return ProviderCatalog(catalog_data(urls, **kwargs), source="test.toml", environ=environ)


@pytest.fixture(scope="module")
def router(trained) -> Router:
    return Router.load(trained.artifact, intra_op_threads=1)


@pytest.fixture(params=["httpx", "http1"])
def upstream(request) -> str:
    """The routed client's upstream HTTP client: httpx (the library default) or the proxy's own (http1)."""
    return request.param


@pytest.fixture
def up():
    with FakeUpstream() as a:
        yield a


@pytest.fixture
def up2():
    with FakeUpstream() as b:
        yield b


class Proxy:
    """The proxy app on a real uvicorn server in a thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, client: AsyncRoutedClient, *, server_options: dict | None = None, **kwargs):
        self.client = client
        self.app = create_app(client, **kwargs)
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = make_server(self.app, **(server_options or {}))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Proxy:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


# --- 1. the catalog --------------------------------------------------------------------------------

def test_the_demo_catalog_loads_and_covers_the_demo_router():
    cat = ProviderCatalog.load(ROOT / "data/demo/providers.toml")
    assert set(cat) == set(MODELS)
    assert cat.chain("tiny-1b") == ["tiny-1b", "small-8b", "large-70b"]
    assert [r.weight for r in cat["large-70b"].replicas] == [3.0, 1.0]
    assert [r.name for r in cat.rules] == ["premium tier", "fenced code"]
    assert cat.prices().cost("small-8b", input_tokens=1e6, output_tokens=0) == pytest.approx(0.2)


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d["models"]["tiny-1b"].pop("base_url"), "models.'tiny-1b'.base_url: missing"),
    (lambda d: d["models"]["tiny-1b"].update(fallbacks=["nope"]), "models.'tiny-1b'.fallbacks[0]: unknown model"),
    (lambda d: d["models"]["small-8b"].update(input_per_mtok=-1), "models.'small-8b'.input_per_mtok: must be"),
    (lambda d: d["models"]["small-8b"].pop("output_per_mtok"), "models.'small-8b'.output_per_mtok: missing"),
    (lambda d: d["models"]["tiny-1b"].update(api_key_env="MISSING_KEY_VAR"), "environment variable MISSING_KEY_VAR"),
    (lambda d: d["models"]["tiny-1b"].update(api_key_env=SECRET), "must be the NAME of an environment variable"),
    (lambda d: d["models"]["tiny-1b"].update(base_url=f"https://u:{SECRET}@h/v1"), "must not hold credentials"),
    (lambda d: d["models"]["tiny-1b"].update(colour="red"), "models.'tiny-1b': unknown key(s) ['colour']"),
    (lambda d: d["settings"].update(max_retries=1.5), "settings.max_retries: must be an integer"),
    (lambda d: d.update(rules=[{"regex": "(", "model": "tiny-1b"}]), "rules[0].regex: not a valid regular"),
    (lambda d: d.update(rules=[{"header": "x", "model": "gpt-9"}]), "rules[0].model: unknown model 'gpt-9'"),
    (lambda d: d["models"]["large-70b"].update(replicas=[{"base_url": "http://a/v1", "weight": 0}]),
     "models.'large-70b'.replicas[0].weight: must be a number > 0"),
])
def test_catalog_errors_name_the_file_and_key_and_never_the_key(change, where):
    data = catalog_data({"*": "http://127.0.0.1:9/v1"})
    change(data)
    with pytest.raises(CatalogError) as err:
        ProviderCatalog(data, source="providers.toml", environ={"OK_KEY": SECRET})
    assert str(err.value).startswith("providers.toml: ") and where in str(err.value)
    assert SECRET not in str(err.value).replace(f"api_key_env={SECRET}", "")
    if "credentials" in where:
        assert SECRET not in str(err.value)


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:99999/v1", "http://127.0.0.1:abc/v1", "http://127.0.0.1:-1/v1",
                                      "http://127.0.0.1:0/v1", "http://[::1/v1",
                                      "http://127.0.0.1:9100/v1/chat/completions"])
def test_a_base_url_no_request_could_use_is_refused_at_load_saying_what_to_write(tmp_path, base_url):
    """A bad port or IPv6 host failed every request with a 500 and no fallback; a URL ending in
    /chat/completions 404ed every call. Each is refused when the catalog loads, naming file and key."""
    file = tmp_path / "providers.toml"
    file.write_text(f'[models."tiny-1b"]\nbase_url = "{base_url}"\ninput_per_mtok = 0.1\noutput_per_mtok = 0.1\n')
    with pytest.raises(CatalogError) as err:
        ProviderCatalog.load(file)
    message = str(err.value)
    assert message.startswith(f"{file}: models.'tiny-1b'.base_url: ") and base_url in message, message
    assert 'give the API root, e.g. "http://host:port/v1"' in message


def test_a_rule_naming_its_model_in_a_list_is_a_catalog_error_not_a_traceback(tmp_path):
    file = tmp_path / "providers.toml"
    file.write_text('[models."tiny-1b"]\nbase_url = "http://127.0.0.1:9/v1"\ninput_per_mtok = 0.1\n'
                    'output_per_mtok = 0.1\n\n[[rules]]\nheader = "x-tier"\nmodel = ["tiny-1b"]\n')
    with pytest.raises(CatalogError, match=rf"^{re.escape(str(file))}: rules\[0\]\.model: must be the name of one "
                       r"catalog model \(a string\), got \['tiny-1b'\]"):
        ProviderCatalog.load(file)


def test_a_catalog_file_that_is_not_toml_says_so(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[models\n")
    with pytest.raises(CatalogError, match=r"p\.toml: not valid TOML"):
        ProviderCatalog.load(bad)


def test_the_client_refuses_a_catalog_without_the_routers_models(router):
    data = catalog_data({"*": "http://127.0.0.1:9/v1"})
    del data["models"]["code-34b"]
    data["models"]["large-70b"]["fallbacks"] = []
    with pytest.raises(CatalogError, match=r"no entry for \['code-34b'\]"):
        AsyncRoutedClient(router, ProviderCatalog(data, source="p.toml"))


def test_the_client_refuses_arguments_of_the_wrong_kind_before_starting_anything(router, trained, tmp_path):
    """A path in the router's place was an AttributeError, on_complete="x" failed only after the paid call, and
    each failed RoutedClient left its event-loop thread running."""
    from router_ml import PriceCatalog

    cat = catalog({"*": "http://127.0.0.1:9/v1"})
    prices = PriceCatalog({m: {"input_per_mtok": 1.0, "output_per_mtok": 1.0} for m in router.models})
    threads = threading.active_count()
    cases = [((str(trained.artifact), "providers.toml"), {}, r"router must be a router_ml.Router \(a path: use "
                                                              r"\.from_files\(artifact, providers\)"),
             ((router, prices), {}, "catalog must be a router_ml.ProviderCatalog .*a provider catalog where to call"),
             ((router, cat), {"on_complete": "x"}, "on_complete must be callable, not str"),
             ((router, cat), {"cascade": "x"}, "cascade must be a router_ml.cascade.Cascade, not str"),
             ((router, cat), {"transport": "x"}, "transport must be an httpx.AsyncBaseTransport, not str")]
    for args, kwargs, message in cases:
        for client in (AsyncRoutedClient, RoutedClient):
            with pytest.raises(TypeError, match=message):
                client(*args, **kwargs)
    assert threading.active_count() == threads
    assert not [t for t in threading.enumerate() if t.name == "router-ml-client"]
    # a client that fails to build holds no decision log: its lock once refused every later writer in the process
    with pytest.raises(RouterMLError, match="upstream must be 'httpx' or 'http1'"):
        AsyncRoutedClient(router, cat, decision_log=tmp_path / "d.jsonl", upstream="bogus")
    DecisionLog(tmp_path / "d.jsonl").close()


def test_an_async_client_used_in_a_second_event_loop_says_so(router):
    """Reused across two asyncio.run calls it failed deep in httpx with "Event loop is closed"."""
    import asyncio

    client = AsyncRoutedClient(router, catalog({"*": "http://127.0.0.1:9/v1"}))  # port 9: refused at once

    async def ask():
        return await client.chat.completions.create(messages=MSG)

    with pytest.raises(UpstreamError):  # the first loop: the call is made (and fails: nothing listens)
        asyncio.run(ask())
    with pytest.raises(RouterMLError, match="first used in another event loop .* build one client per event loop"):
        asyncio.run(ask())


# --- 2. deciding: rules, pins, the knob, prices ----------------------------------------------------

def test_rules_pins_and_the_knob_decide_before_the_router(router):
    data = catalog_data({"*": "http://127.0.0.1:9/v1"})
    data["rules"] = [{"name": "tier", "header": "X-Tier", "equals": "premium", "model": "frontier-xl"},
                     {"name": "code", "regex": "```", "model": "code-34b"}]
    client = AsyncRoutedClient(router, ProviderCatalog(data, source="p.toml"))
    info, _ = client.decide({"messages": MSG}, {"x-tier": "premium"})
    assert (info.chosen, info.rule, info.scores) == ("frontier-xl", "tier", None)
    info, _ = client.decide({"messages": [{"role": "user", "content": "fix\n```py\nx=1\n```"}]}, {"x-tier": "free"})
    assert (info.chosen, info.rule) == ("code-34b", "code")
    info, _ = client.decide({"model": "small-8b", "messages": MSG})
    assert (info.chosen, info.rule) == ("small-8b", "pinned")
    info, _ = client.decide({"model": "router-ml", "messages": MSG})
    assert info.rule is None and set(info.scores) == set(MODELS)
    assert info.chosen == router.route(MSG[0]["content"]).model
    cheapest = min(MODELS, key=lambda m: PRICES[m][0])
    assert client.decide({"messages": MSG, "willingness_to_pay": 0})[0].chosen == cheapest
    assert client.decide({"messages": MSG}, {"x-router-ml-willingness-to-pay": "0"})[0].chosen == cheapest
    for body, field in [({"messages": MSG, "model": "gpt-9"}, "model"), ({"messages": []}, "messages"),
                        ({"messages": [{"content": "x"}]}, "messages[0]"),
                        # a user turn without content was once forwarded, and routed as the empty prompt
                        ({"messages": [{"role": "user"}]}, "messages[0].content"),
                        ({"messages": [*MSG, {"role": "user", "content": None}]}, "messages[1].content"),
                        ({"messages": MSG, "willingness_to_pay": -1}, "willingness_to_pay"),
                        ({"messages": MSG, "stream": "yes"}, "stream")]:
        with pytest.raises(RequestError) as err:
            client.decide(body)
        assert err.value.field == field
    # the synchronous client decides the same (the README's client.decide was the async client's alone)
    with RoutedClient(router, ProviderCatalog(data, source="p.toml")) as sync:
        info, text = sync.decide({"messages": MSG}, {"x-tier": "premium"})
        assert (info.chosen, info.rule, text) == ("frontier-xl", "tier", MSG[0]["content"])
        assert sync.decide({"messages": MSG}, willingness_to_pay=0)[0].chosen == cheapest


def test_with_prices_takes_one_number_for_every_model_or_one_per_model(router):
    """with_prices(catalog, 150) - as the catalog's own expected_output_tokens = 150 reads - was a TypeError."""
    from router_ml.pricing import PriceCatalog

    prices = PriceCatalog.load(ROOT / "data" / "demo" / "prices.toml")
    one, each = router.with_prices(prices, 150), router.with_prices(prices, dict.fromkeys(router.models, 150))
    prompts = ["Explain the difference between a list and a tuple."]
    assert (one.costs(prompts) == each.costs(prompts)).all()
    assert (one.costs(prompts) != router.with_prices(prices, 10).costs(prompts)).any()
    with pytest.raises(TypeError, match="expected_output_tokens: a number or a mapping of model to tokens"):
        router.with_prices(prices, "150")


def test_catalog_prices_reprice_routing_only_with_expected_output_tokens(router):
    plain = AsyncRoutedClient(router, catalog({"*": "http://127.0.0.1:9/v1"}))
    assert plain.routing_prices == "artifact" and plain.router is router
    # make the cheapest model the dearest: routing at a low knob must move away from it
    tokens = {m: {"expected_output_tokens": 100} for m in MODELS}
    tokens["tiny-1b"].update(input_per_mtok=500.0, output_per_mtok=1000.0)
    priced = AsyncRoutedClient(router, catalog({"*": "http://127.0.0.1:9/v1"}, **tokens))
    assert priced.routing_prices == "catalog"
    assert plain.decide({"messages": MSG, "willingness_to_pay": 0})[0].chosen == "tiny-1b"
    assert priced.decide({"messages": MSG, "willingness_to_pay": 0})[0].chosen == "small-8b"


def test_weighted_replicas_share_requests_by_weight(router, up, up2, upstream):
    cat = catalog({"*": up.base_url}, **{m: {"replicas": [{"base_url": up.base_url, "weight": 3},
                                                          {"base_url": up2.base_url, "weight": 1}]} for m in MODELS})
    with RoutedClient(router, cat, upstream=upstream) as client:
        for _ in range(20):
            r = client.chat.completions.create(model="small-8b", messages=MSG)
            assert r.router_ml.status == "ok"
    assert (len(up.requests), len(up2.requests)) == (15, 5)


# --- 3. calling: retries, fallbacks, circuit breaker -----------------------------------------------

def test_5xx_is_retried_then_falls_back_and_the_answer_says_so(router, up, up2, upstream):
    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]})
    up.script.extend(["500", "503"])
    with RoutedClient(router, cat, upstream=upstream) as client:
        r = client.chat.completions.create(model="tiny-1b", messages=MSG, temperature=0.2)
    info = r.router_ml
    assert r.choices[0].message.content.startswith("small-8b says")
    assert (info.chosen, info.model, info.status) == ("tiny-1b", "small-8b", "ok")
    assert [(a.upstream, a.kind, a.status) for a in info.fallbacks] == [("tiny-1b#0", "http_5xx", 500),
                                                                          ("tiny-1b#0", "http_5xx", 503)]
    assert (info.input_tokens, info.output_tokens) == (20, 10)
    assert info.cost_usd == pytest.approx((20 * 0.2 + 10 * 0.4) / 1e6)
    sent = up2.requests[0]["body"]
    assert sent["model"] == "small-8b" and sent["temperature"] == 0.2 and "willingness_to_pay" not in sent


def test_the_async_client_answers_and_streams_with_the_same_metadata(router, up, up2, upstream):
    import asyncio

    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]})

    async def main():
        async with AsyncRoutedClient(router, cat, upstream=upstream) as client:
            up.script.extend(["500", "500"])
            r = await client.chat.completions.create(model="tiny-1b", messages=MSG)
            stream = await client.chat.completions.create(model="router-ml", messages=MSG, stream=True)
            text = "".join([c.choices[0].delta.get("content", "") async for c in stream])
            return r, text, stream.router_ml

    r, text, info = asyncio.run(main())
    assert r.router_ml.model == "small-8b" and len(r.router_ml.fallbacks) == 2
    assert text == f"Hello from {info.model}" and info.status == "ok" and info.cost_usd > 0


def test_429_waits_for_retry_after_or_falls_back_when_it_is_long(router, up, up2, upstream):
    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]})
    with RoutedClient(router, cat, upstream=upstream) as client:
        up.script.append("429:0.4")
        t0 = time.perf_counter()
        r = client.chat.completions.create(model="tiny-1b", messages=MSG)
        waited = time.perf_counter() - t0
        assert r.router_ml.model == "tiny-1b" and [a.kind for a in r.router_ml.fallbacks] == ["http_429"]
        assert waited >= 0.4
        assert up.requests[1]["time"] - up.requests[0]["time"] >= 0.4
        up.script.append("429:30")  # longer than max_retry_after_s: the next model, now
        t0 = time.perf_counter()
        r = client.chat.completions.create(model="tiny-1b", messages=MSG)
        assert r.router_ml.model == "small-8b" and time.perf_counter() - t0 < 2


@pytest.mark.parametrize(("behaviour", "kind"), [("timeout:3", "timeout"), ("garbage", "malformed"),
                                                 ("no_choices", "malformed"), ("drop", "dropped")])
def test_timeouts_garbage_and_dropped_connections_fall_back(router, up, up2, behaviour, kind, upstream):
    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]},
                  settings={"max_retries": 0},
                  # a short timeout where the timeout is the fault; elsewhere one a loaded CI machine cannot hit
                  # first (a garbage answer classified as a timeout failed there once)
                  **{"tiny-1b": {"timeout_s": 0.3 if kind == "timeout" else 1.5}})
    up.mode = behaviour
    with RoutedClient(router, cat, upstream=upstream) as client:
        t0 = time.perf_counter()
        r = client.chat.completions.create(model="tiny-1b", messages=MSG)
        assert time.perf_counter() - t0 < 2
    assert r.router_ml.model == "small-8b"
    assert [a.kind for a in r.router_ml.fallbacks] == [kind]


def test_when_every_model_fails_the_error_lists_each_reason_within_the_request_timeout(router, up, up2, upstream):
    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]},
                  settings={"request_timeout_s": 1.0, "max_retries": 3}, **{"small-8b": {"timeout_s": 10}})
    up.mode, up2.mode = "500", "timeout:5"
    with RoutedClient(router, cat, upstream=upstream) as client:
        t0 = time.perf_counter()
        with pytest.raises(UpstreamError) as err:
            client.chat.completions.create(model="tiny-1b", messages=MSG)
        elapsed = time.perf_counter() - t0
    assert elapsed < 2.5, elapsed  # the 1 s request timeout with room for a busy machine; small-8b would take 5 s
    message = str(err.value)
    assert "tiny-1b#0: HTTP 500" in message and "small-8b#0: timed out" in message
    assert err.value.info.status == "error" and err.value.attempts[-1].kind == "timeout"


def test_the_circuit_breaker_opens_skips_and_probes_again(router, up, up2, upstream):
    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]},
                  settings={"max_retries": 0, "breaker_failures": 2, "breaker_reset_s": 0.5})
    up.mode = "500"
    clock = FakeClock()
    with RoutedClient(router, cat, upstream=upstream, clock=clock) as client:
        for _ in range(2):
            assert client.chat.completions.create(model="tiny-1b", messages=MSG).router_ml.model == "small-8b"
        assert client.breaker("tiny-1b#0").state == "open" and len(up.requests) == 2
        r = client.chat.completions.create(model="tiny-1b", messages=MSG)
        assert len(up.requests) == 2  # not even tried
        assert [a.kind for a in r.router_ml.fallbacks] == ["circuit_open"] and r.router_ml.model == "small-8b"
        clock.advance(0.49)
        assert client.breaker("tiny-1b#0").state == "open"
        clock.advance(0.02)
        assert client.breaker("tiny-1b#0").state == "half_open"
        r = client.chat.completions.create(model="tiny-1b", messages=MSG)  # the probe fails: open again
        assert len(up.requests) == 3 and client.breaker("tiny-1b#0").state == "open"
        clock.advance(0.51)
        up.mode = "ok"
        r = client.chat.completions.create(model="tiny-1b", messages=MSG)  # the probe succeeds: closed
        assert r.router_ml.model == "tiny-1b" and client.breaker("tiny-1b#0").state == "closed"


# --- 4. streaming ------------------------------------------------------------------------------------

def _data_lines(lines):
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def test_streams_pass_through_event_by_event(router, up, upstream):
    up.gate = threading.Event()
    with Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url}), upstream=upstream)) as proxy, \
            httpx.Client() as http:
        body = {"model": "tiny-1b", "messages": MSG, "stream": True}
        with http.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=10) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            got = []
            for line in lines:
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                if len(got) == 2:
                    break
            # the client holds "Hello" while the upstream is still waiting to send the rest
            assert got[1]["choices"][0]["delta"]["content"] == "Hello" and up.events_sent == 2
            up.gate.set()
            rest = _data_lines(lines)
        assert rest[-1] == "[DONE]"
        text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in rest[:-1])
        assert text == " from tiny-1b"
        # router-ml asked for usage; the client did not, so the usage-only chunk is not passed on
        assert up.requests[0]["body"]["stream_options"] == {"include_usage": True}
        assert all(json.loads(d)["choices"] for d in rest[:-1])


def test_a_stream_that_fails_before_its_first_event_falls_back(router, up, up2, upstream):
    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]},
                  settings={"max_retries": 0})
    with RoutedClient(router, cat, upstream=upstream) as client:
        for behaviour, kind in [("drop", "dropped"), ("stream_garbage", "malformed"), ("drop_stream:0", "dropped")]:
            up.mode = behaviour
            stream = client.chat.completions.create(model="tiny-1b", messages=MSG, stream=True,
                                                    stream_options={"include_usage": True})
            chunks = list(stream)
            assert "".join(c.choices[0].delta.get("content", "") for c in chunks if c.choices) == "Hello from small-8b"
            info = stream.router_ml
            assert (info.model, info.status, [a.kind for a in info.fallbacks]) == ("small-8b", "ok", [kind])
            assert (info.input_tokens, info.output_tokens, info.usage_estimated) == (20, 10, False)
            assert chunks[-1].usage.total_tokens == 30  # asked for: passed on


def test_a_stream_cut_mid_way_ends_with_an_explicit_error(router, up, tmp_path, upstream):
    log = tmp_path / "d.jsonl"
    up.mode = "drop_stream:3"
    with Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url}), upstream=upstream, decision_log=log)) as proxy, \
            httpx.Client() as http:
        with http.stream("POST", proxy.url + "/v1/chat/completions", timeout=10,
                         json={"model": "tiny-1b", "messages": MSG, "stream": True}) as r:
            events = [json.loads(d) for d in _data_lines(r.iter_lines())]
    assert [e["choices"][0]["delta"].get("content") for e in events[:3]] == ["", "Hello", " from"]
    assert events[-1]["error"]["code"] == "stream_interrupted" and "tiny-1b#0 broke off" in events[-1]["error"][
        "message"]
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["status"] == "interrupted" and record["model"] == "tiny-1b" and record["usage_estimated"]
    with RoutedClient(router, catalog({"*": up.base_url}), upstream=upstream) as client:
        stream = client.chat.completions.create(model="tiny-1b", messages=MSG, stream=True)
        with pytest.raises(StreamInterrupted, match="broke off"):
            list(stream)


def test_a_client_that_hangs_up_mid_stream_frees_the_upstream_and_is_logged(router, up, tmp_path, upstream):
    log = tmp_path / "d.jsonl"
    up.gate = threading.Event()  # the upstream holds the stream after "Hello"
    with Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url}), upstream=upstream, decision_log=log)) as proxy:
        with httpx.Client() as http, http.stream("POST", proxy.url + "/v1/chat/completions", timeout=10,
                                                 json={"model": "tiny-1b", "messages": MSG, "stream": True}) as r:
            for line in r.iter_lines():
                if "Hello" in line:
                    break  # hang up here
        deadline = time.monotonic() + 5
        while not log.exists() or not log.read_text():
            assert time.monotonic() < deadline, "the proxy never finished the abandoned stream"
            time.sleep(0.02)
        up.gate.set()
    record = json.loads(log.read_text())
    assert record["status"] == "cancelled" and record["model"] == "tiny-1b"


# --- 5. the proxy ------------------------------------------------------------------------------------

def test_the_listening_socket_is_tcp_so_asyncio_sets_nodelay():
    sock = bind("127.0.0.1", 0)  # proto 0 would skip TCP_NODELAY: ~40 ms of delayed ACK per response
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def _count_ticks(server) -> list[int]:
    """Record every call of the server's ``on_tick`` (the main loop's wake-ups)."""
    ticks, original = [], server.on_tick

    async def counting(counter: int) -> bool:
        ticks.append(counter)
        return await original(counter)

    server.on_tick = counting
    return ticks


def test_an_idle_server_sleeps_and_stops_as_soon_as_it_is_told(router, up):
    with Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url}))) as proxy:
        ticks = _count_ticks(proxy.server)
        assert httpx.get(proxy.url + "/health", timeout=5).status_code == 200
        time.sleep(2.0)
        # uvicorn's own main loop wakes every 0.1 s (20 times here); this one once a second at most
        assert 1 <= len(ticks) <= 3, ticks
        assert all(counter % 10 == 0 for counter in ticks)  # each wake-up does uvicorn's once-a-second work
        told = time.monotonic()
        proxy.server.should_exit = True  # from another thread, as code embedding the server would
        proxy.thread.join(10)
        assert not proxy.thread.is_alive()
        assert time.monotonic() - told < 0.9, "the main loop waited for its next tick instead of waking"


def test_a_drain_ends_on_time_not_on_the_next_tick(router, up):
    with Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url})), server_options={"drain_s": 0.3}) as proxy:
        told = time.monotonic()
        proxy.server.handle_exit(15, None)  # what SIGTERM calls: drain 0.3 s, then uvicorn's graceful shutdown
        ready = httpx.get(proxy.url + "/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["reason"].startswith("draining")
        assert httpx.get(proxy.url + "/health", timeout=5).status_code == 200  # still serving while it drains
        proxy.thread.join(10)
        stopped = time.monotonic() - told
        assert not proxy.thread.is_alive()
        assert 0.3 <= stopped < 0.95, stopped  # the drain's 0.3 s and the shutdown, with no 1 s tick between


def test_proxy_endpoints_errors_and_metrics(router, up, up2, upstream):
    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]},
                  settings={"max_retries": 0})
    with Proxy(AsyncRoutedClient(router, cat, upstream=upstream), max_body_bytes=4096) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as http:
        models = http.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["router-ml", *MODELS]
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["upstreams"]["tiny-1b#0"] == "closed"
        r = http.post("/v1/chat/completions", json={"model": "router-ml", "messages": MSG})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["router_ml"]["request_id"] == r.headers["x-router-ml-request-id"]
        assert body["router_ml"]["model"] == r.headers["x-router-ml-model"] == body["router_ml"]["chosen"]
        up.script.append("500")
        r = http.post("/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG})
        assert r.json()["router_ml"]["fallbacks"][0]["kind"] == "http_5xx"
        bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        bad = http.post("/v1/chat/completions", json={"model": "router-ml"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
        big = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 5000}]})
        assert big.status_code == 413 and "4096" in big.json()["error"]["message"]
        chunked = http.post("/v1/chat/completions", content=iter([b'{"messages": [', b" " * 5000, b"]}"]))
        assert chunked.status_code == 413  # no content-length: counted while reading
        up.mode = up2.mode = "503"
        failed = http.post("/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG})
        assert failed.status_code == 502
        error = failed.json()["error"]
        assert error["code"] == "all_providers_failed" and [a["upstream"] for a in error["attempts"]] == [
            "tiny-1b#0", "small-8b#0"]
        assert "tiny-1b#0: HTTP 503" in error["message"] and "small-8b#0: HTTP 503" in error["message"]
        failed = http.post("/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG, "stream": True})
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "all_providers_failed"
        metrics = http.get("/metrics").text
    m = scrape(metrics)
    for status in ("ok", "error", "bad_request", "too_large"):
        assert m[("router_ml_requests_total", (("status", status),))] == 2, status
    assert m[("router_ml_fallbacks_total", (("kind", "http_5xx"), ("upstream", "tiny-1b#0")))] == 3
    assert m[("router_ml_answers_total", (("model", "small-8b"),))] == 1
    assert m[("router_ml_decisions_total", (("by", "rule"), ("model", "tiny-1b")))] == 3
    assert m[("router_ml_routing_latency_seconds_count", ())] == 4
    assert m[("router_ml_request_latency_seconds_count", ())] == 4
    assert m[("router_ml_cost_usd_total", (("model", "small-8b"),))] == pytest.approx(8e-06)
    assert m[("router_ml_tokens_total", (("direction", "input"), ("model", "small-8b")))] == 20
    assert m[("router_ml_circuit_open", (("upstream", "tiny-1b#0"),))] == 0
    assert m[("router_ml_decision_log_errors_total", ())] == 0


def test_a_deeply_nested_body_is_a_400_not_a_traceback(router, up, tmp_path, caplog):
    """'[' * 200,000 (under the body limit) was a RecursionError and a 500 per request on both JSON endpoints."""
    deep = b"[" * 200_000 + b"]" * 200_000
    client = AsyncRoutedClient(router, catalog({"*": up.base_url}), decision_log=tmp_path / "d.jsonl")
    with Proxy(client) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as http:
        for path in ("/v1/chat/completions", "/v1/feedback"):
            r = http.post(path, content=deep, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"].startswith("the body is not valid JSON (arrays and objects nest too "
                                                           "deeply)"), r.text
        assert http.post("/v1/chat/completions", json={"messages": MSG}).status_code == 200
        assert scrape(http.get("/metrics").text)[("router_ml_requests_total", (("status", "bad_request"),))] == 1
    assert "internal error" not in caplog.text and "RecursionError" not in caplog.text


def test_stream_null_is_not_streaming_and_the_client_refuses_what_the_proxy_refuses(router, up, upstream):
    """The OpenAI API allows "stream": null (not streaming); the library refused nothing: stream="false" streamed,
    and extra_headers given as a list of pairs was an AttributeError."""
    cat = catalog({"*": up.base_url})
    with Proxy(AsyncRoutedClient(router, cat, upstream=upstream)) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as http:
        r = http.post("/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG, "stream": None})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        assert "stream" not in up.requests[-1]["body"]  # not forwarded as null to a provider that may refuse it
        refused = http.post("/v1/chat/completions", json={"messages": MSG, "stream": "false"}).json()["error"]
    assert refused["param"] == "stream"
    with RoutedClient(router, cat, upstream=upstream) as client:
        answer = client.chat.completions.create(model="tiny-1b", messages=MSG, stream=None)
        assert answer.choices[0].message.content
        with pytest.raises(RequestError) as err:
            client.chat.completions.create(messages=MSG, stream="false")
        assert (err.value.field, str(err.value)) == ("stream", refused["message"])
        for headers in ([("x-tier", "premium")], {"x-tier": 1}):
            with pytest.raises(TypeError, match="extra_headers must be a mapping of header names to strings"):
                client.chat.completions.create(messages=MSG, extra_headers=headers)
        assert client.chat.completions.create(messages=MSG, extra_headers={"x-tier": "premium"}).choices
    assert len(up.requests) == 3  # nothing refused reached the upstream


def test_each_app_counts_in_its_own_registry(router, up):
    """Two proxies in one process (prometheus_client's global registry would reject the second app's
    metric names, or mix their counts) - each /metrics shows only its own requests; an open circuit shows."""
    cat = catalog({"*": up.base_url}, settings={"max_retries": 0, "breaker_failures": 1})
    with Proxy(AsyncRoutedClient(router, cat)) as a, Proxy(AsyncRoutedClient(router, cat)) as b, \
            httpx.Client(timeout=10) as http:
        for _ in range(3):
            assert http.post(a.url + "/v1/chat/completions", json={"messages": MSG}).status_code == 200
        up.mode = "500"
        assert http.post(b.url + "/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG}).status_code == 502
        ma, mb = scrape(http.get(a.url + "/metrics").text), scrape(http.get(b.url + "/metrics").text)
    assert ma[("router_ml_requests_total", (("status", "ok"),))] == 3
    assert ("router_ml_requests_total", (("status", "error"),)) not in ma
    assert mb[("router_ml_requests_total", (("status", "error"),))] == 1
    assert ("router_ml_requests_total", (("status", "ok"),)) not in mb
    assert mb[("router_ml_circuit_open", (("upstream", "tiny-1b#0"),))] == 1
    assert ma[("router_ml_circuit_open", (("upstream", "tiny-1b#0"),))] == 0


def test_metrics_switch_to_multiprocess_files_when_the_directory_is_set(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR set before prometheus_client loads: two worker processes write their counts
    to files there, and a third one's /metrics body is the sum over both (the mode is chosen on import,
    hence fresh interpreters)."""
    setup = ("from router_ml.client import RouteInfo\nfrom router_ml.serve import Metrics\n"
             "info = RouteInfo('rml-1', 'tiny-1b', None, 0.1, None, '0' * 64, 0.2, model='tiny-1b', status='ok')\n"
             "m = Metrics()\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    outputs = []
    for action in ("m.observe(info)", "m.observe(info); m.count('bad_request')", "print(m.render().decode())"):
        out = subprocess.run([sys.executable, "-c", setup + action], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env=env)
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout)
    assert len(list(tmp_path.glob("*.db"))) >= 2, "each worker writes its own files"
    m = scrape(outputs[-1])
    assert m[("router_ml_requests_total", (("status", "ok"),))] == 2
    assert m[("router_ml_requests_total", (("status", "bad_request"),))] == 1
    assert m[("router_ml_routing_latency_seconds_count", ())] == 2
    assert m[("router_ml_answers_total", (("model", "tiny-1b"),))] == 2
    # without the variable (this process): an app's own registry, untouched by the other apps of the tests
    assert scrape(Metrics().render().decode())[("router_ml_routing_latency_seconds_count", ())] == 0


def test_the_proxy_requires_the_client_key_and_refuses_to_bind_openly_without_one(router, up):
    with Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url})), api_key="client-key") as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as http:
        assert http.post("/v1/chat/completions", json={"messages": MSG}).status_code == 401
        assert http.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/metrics").status_code == 401
        assert http.get("/health").status_code == 200
        ok = http.post("/v1/chat/completions", json={"messages": MSG}, headers={"authorization": "Bearer client-key"})
        assert ok.status_code == 200
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "serve", "--artifact", "x", "--providers", "y",
                          "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and "--api-key-env" in out.stderr and "not a loopback address" in out.stderr


def test_api_keys_never_leave_the_process_except_to_their_provider(router, up, up2, tmp_path, caplog, upstream):
    cat = catalog({"*": up.base_url, "small-8b": up2.base_url}, fallbacks={"tiny-1b": ["small-8b"]},
                  settings={"max_retries": 0}, environ={"FAKE_KEY": SECRET},
                  **{m: {"api_key_env": "FAKE_KEY"} for m in MODELS})
    assert SECRET not in repr(cat) + repr(cat["tiny-1b"]) + repr(cat["tiny-1b"].replicas[0])
    log = tmp_path / "d.jsonl"
    up.mode = up2.mode = "echo_key_401"  # the upstream quotes the key back in its error
    with Proxy(AsyncRoutedClient(router, cat, upstream=upstream, decision_log=log, log_prompts=True)) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as http:
        failed = http.post("/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG})
        metrics = http.get("/metrics").text
        health = http.get("/health").text
    assert up.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"  # the provider did get it
    assert failed.status_code == 502 and "Incorrect API key provided: Bearer ***" in failed.text
    for text in (failed.text, metrics, health, log.read_text(), caplog.text):
        assert SECRET not in text
    with RoutedClient(router, cat, upstream=upstream) as client, pytest.raises(UpstreamError) as err:
        client.chat.completions.create(model="tiny-1b", messages=MSG)
    assert SECRET not in str(err.value) + repr(err.value) + repr(err.value.info)


# --- 6. the decision log and the feedback loop -------------------------------------------------------

def test_the_decision_log_repairs_a_crash_cut_line_and_rotates_by_size(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"type": "feedback", "request_id": "a", "quality": 1}\n{"type": "decision", "requ')
    with DecisionLog(path, max_bytes=2048, backups=2) as log:
        assert log.repaired_bytes == len(b'{"type": "decision", "requ')
        log.write(feedback_record("b", thumbs="up"))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == ["a", "b"]
    assert (tmp_path / "d.jsonl.partial").read_text() == '{"type": "decision", "requ\n'
    with DecisionLog(path, max_bytes=2048, backups=2) as log:
        for i in range(40):
            log.write(feedback_record(f"r{i}", quality=0.5, comment="x" * 100))
    files = log_files(path)
    assert [f.name for f in files] == ["d.2.jsonl", "d.1.jsonl", "d.jsonl"]
    assert all(f.stat().st_size <= 2048 for f in files)
    ids = [json.loads(x)["request_id"] for f in files for x in f.read_text().splitlines()]
    assert ids == [f"r{i}" for i in range(40 - len(ids), 40)]  # newest kept in order, oldest rotated away


def test_a_decision_log_path_naming_another_file_is_refused_and_the_file_left_alone(tmp_path):
    catalog_file = tmp_path / "providers.toml"  # a mistyped --decision-log; no newline at its end either
    catalog_file.write_bytes(b'[models."tiny-1b"]\nbase_url = "http://127.0.0.1:9/v1"')
    for path in (catalog_file, tmp_path):
        with pytest.raises(RouterMLError, match="decision log"):
            DecisionLog(path)
    assert catalog_file.read_bytes() == b'[models."tiny-1b"]\nbase_url = "http://127.0.0.1:9/v1"'
    assert not (tmp_path / "providers.toml.partial").exists()  # the crash repair never touched it
    cut = tmp_path / "cut.jsonl"  # a log whose first write was cut off by a crash still opens and is repaired
    cut.write_bytes(b'{"type": "deci')
    with DecisionLog(cut) as log:
        assert log.repaired_bytes == len(b'{"type": "deci')


_FILE_SIZE_LIMIT = """
import json, resource, signal, sys
from router_ml.decision_log import DecisionLog, feedback_record

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
path, limit = sys.argv[1], int(sys.argv[2])
written, lost = [], 0
with DecisionLog(path) as log:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    for i in range(6):
        try:
            log.write(feedback_record(f"r{i}", quality=0.5, comment="x" * 300))
            written.append(f"r{i}")
        except OSError:
            lost += 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space again
    log.write(feedback_record("after", thumbs="up"))
    written.append("after")
print(json.dumps({"written": written, "lost": lost}))
"""


def test_a_write_that_fails_part_way_loses_that_record_whole_and_never_the_next(tmp_path):
    """A full disk (here a file-size limit: the kernel writes what fits, then EFBIG) cuts a record part-way;
    the part written is cut off again, so exactly the failed records are lost - each one counted - and the
    record written once there is room again is a line of its own."""
    path = tmp_path / "d.jsonl"
    out = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, str(path), "1000"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"written": ["r0", "r1", "after"], "lost": 4}  # ~400-byte records: the 3rd one crosses 1000
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["request_id"] for x in lines[:-1]] == result["written"]


def test_one_log_under_two_names_has_one_writer_and_an_empty_path_is_no_log_path(tmp_path):
    """A symlink to a live log took a lock of its own name and wrote beside the first writer; run_server with
    decision_log="" (an unset variable in code) kept no log without a word."""
    from router_ml.serve import run_server

    log = tmp_path / "decisions.jsonl"
    alias = tmp_path / "alias.jsonl"
    with DecisionLog(log):
        alias.symlink_to(log)
        with pytest.raises(RouterMLError, match=f"decision log {alias}: this process already writes it through "
                                                "another DecisionLog"):
            DecisionLog(alias)
    with pytest.raises(RouterMLError, match="decision_log is an empty path"):
        run_server(router="r", providers="p.toml", decision_log="  ")


def test_a_log_without_a_lock_to_take_still_rotates(tmp_path, monkeypatch):
    """Where fcntl is missing (Windows) or the file system has no flock, rotation once hung on holding the lock:
    the log grew without bound past --log-max-mb."""
    import sys

    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl raises ImportError, as on Windows
    path = tmp_path / "decisions.jsonl"
    with DecisionLog(path, max_bytes=1024) as log:
        assert log._lock_fd is None
        for i in range(40):
            log.write({"type": "decision", "request_id": f"rml-{i}", "pad": "x" * 60})
    assert path.with_name("decisions.1.jsonl").exists() and path.stat().st_size <= 1024
    assert not path.with_name("decisions.jsonl.lock").exists()


def test_a_one_line_json_file_without_a_newline_is_refused_as_a_log_not_cut_off(tmp_path):
    """A user's ratings file of one line (no newline at its end) named as the log is no crash remnant: it
    does not begin as a log line does, so it is refused and left as it was, by the server and the feedback
    command alike."""
    ratings = tmp_path / "ratings.jsonl"
    text = b'{"request_id": "rml-abc", "thumbs": "up"}'
    ratings.write_bytes(text)
    with pytest.raises(RouterMLError, match="is not a router-ml decision log"):
        DecisionLog(ratings)
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "feedback", "--log", str(ratings), "--request-id",
                          "rml-abc", "--thumbs", "up"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and f"decision log {ratings}: exists and is not" in out.stderr, out.stderr
    assert ratings.read_bytes() == text and not (tmp_path / "ratings.jsonl.partial").exists()
    for fragment in (b'{"type":"feedback","format_version":1,"ti', b'{ "type" : "deci', b"{"):  # crash remnants
        cut = tmp_path / "cut.jsonl"
        cut.write_bytes(fragment)
        with DecisionLog(cut) as log:
            assert log.repaired_bytes == len(fragment)
        assert cut.read_bytes() == b""


@pytest.mark.parametrize("log_prompts", [True, False])
def test_the_log_keeps_each_answers_text_with_the_prompt_only(router, up, tmp_path, upstream, log_prompts):
    log = tmp_path / "d.jsonl"
    client = AsyncRoutedClient(router, catalog({"*": up.base_url}), upstream=upstream, decision_log=log,
                               log_prompts=log_prompts)
    with Proxy(client) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as http:
        answer = http.post("/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG}).json()
        body = {"model": "small-8b", "messages": MSG, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            streamed = "".join(json.loads(d)["choices"][0]["delta"].get("content", "")
                               for d in _data_lines(r.iter_lines())[:-1])
    first, second = (json.loads(x) for x in log.read_text().splitlines())
    if not log_prompts:
        assert "response" not in first and "response" not in second and "prompt" not in first
        return
    assert first["response"] == answer["choices"][0]["message"]["content"] and first["response"]
    assert second["response"] == streamed == "Hello from small-8b"
    for rid in (first["request_id"], second["request_id"]):
        feedback = {"type": "feedback", "format_version": FORMAT_VERSION, "request_id": rid, "quality": 1.0}
        with open(log, "a") as f:
            f.write(json.dumps(feedback) + "\n")
    table, _ = load_traffic(log)
    assert table.responses("tiny-1b").tolist() == [first["response"], None]
    assert table.responses("small-8b").tolist() == [None, "Hello from small-8b"]


def test_feedback_turns_the_log_into_training_data(router, up, tmp_path):
    log = tmp_path / "decisions.jsonl"
    cat = catalog({"*": up.base_url}, settings={"max_retries": 0})
    prompts = ["Translate 'good morning' into French.", "Sum 17 and 25.", "Write a haiku about rain."]
    with Proxy(AsyncRoutedClient(router, cat, decision_log=log, log_prompts=True)) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as http:
        infos = [http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": p}]}).json()[
            "router_ml"] for p in prompts]
        ids = [info["request_id"] for info in infos]
        up.mode = "500"
        assert http.post("/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG}).status_code == 502
        assert http.post("/v1/feedback", json={"request_id": ids[0], "thumbs": "up"}).status_code == 200
        rating = {"request_id": ids[1], "quality": 0.3, "model": infos[1]["model"]}  # names the rated answer
        assert http.post("/v1/feedback", json=rating).status_code == 200
        bad = http.post("/v1/feedback", json={"request_id": ids[2], "quality": 1, "model": ""})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
        bad = http.post("/v1/feedback", json={"request_id": ids[2], "quality": 7})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "quality"
        bad = http.post("/v1/feedback", json={"request_id": ids[2], "stars": 5})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "stars"
        assert ", ".join(FEEDBACK_FIELDS) in bad.json()["error"]["message"]
    written = [json.loads(x) for x in log.read_text().splitlines()]
    assert {r["format_version"] for r in written} == {FORMAT_VERSION}
    assert [r["type"] for r in written] == ["decision"] * 4 + ["feedback"] * 2
    assert "model" not in written[4] and written[5]["model"] == infos[1]["model"]
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert report.format == "decisions" and (len(table), report.rejected) == (2, 2)
    by_id = {r.sample_id: r for r in table.records}
    (model, outcome), = by_id[ids[0]].outcomes.items()
    assert by_id[ids[0]].prompt == prompts[0] and outcome.quality == 1.0 and outcome.input_tokens == 20
    assert outcome.cost == pytest.approx(cat[model].price.cost(20, 10))
    assert next(iter(by_id[ids[1]].outcomes.values())).quality == 0.3
    reasons = {json.loads(x)["field"] for x in (tmp_path / "q.jsonl").read_text().splitlines()}
    assert reasons == {"feedback", "status"}
    with pytest.raises(Exception, match="no feedback for request"):
        load_traffic(log)  # strict: unrated requests are not dropped silently
    # joining a feedback file with the CLI, then inspecting the log with the CLI
    (tmp_path / "fb.jsonl").write_text(json.dumps({"request_id": ids[2], "thumbs": "down"}) + "\n")
    cli = [sys.executable, "-m", "router_ml.cli"]
    out = subprocess.run([*cli, "feedback", "--log", str(log), "--file", str(tmp_path / "fb.jsonl")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and json.loads(out.stdout)["recorded"] == 1, out.stderr
    out = subprocess.run([*cli, "data", "inspect", str(log), "--json", "--on-error", "quarantine",
                          "--quarantine", str(tmp_path / "q2.jsonl")], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    info = json.loads(out.stdout)
    assert (info["records"], info["rejected"], info["format"]) == (3, 1, "decisions"), out.stderr


def test_feedback_cli_refuses_a_bad_file_whole_naming_line_and_field(tmp_path):
    log, ratings = tmp_path / "d.jsonl", tmp_path / "r.jsonl"
    ratings.write_text('{"request_id": "rml-1", "thumbs": "up"}\n{"request_id": "rml-2", "quality": 1.5}\n')
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "feedback", "--log", str(log), "--file",
                          str(ratings)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and f"{ratings}:2: field 'quality'" in out.stderr
    assert "nothing was recorded" in out.stderr
    assert not log.exists() or log.read_text() == ""


def test_feedback_cli_names_a_missing_file_or_log_and_records_nothing(tmp_path):
    cli = [sys.executable, "-m", "router_ml.cli", "feedback"]
    log, ratings = tmp_path / "d.jsonl", tmp_path / "r.jsonl"
    out = subprocess.run([*cli, "--log", str(log), "--file", str(tmp_path / "missing.jsonl")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot read the feedback file (--file) {tmp_path / 'missing.jsonl'}" in out.stderr
    ratings.write_text('{"request_id": "rml-1", "thumbs": "up"}\n')
    # a log path nobody writes (a typo) is refused, not started as a log of feedback that joins nothing
    out = subprocess.run([*cli, "--log", str(log), "--file", str(ratings)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 1 and f"--log {log}: no decision log there" in out.stderr, out.stderr
    assert not log.exists()
    log.write_text(json.dumps(_decision("rml-1", "hi")) + "\n")
    out = subprocess.run([*cli, "--log", str(log), "--file", str(ratings)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0 and json.loads(out.stdout)["recorded"] == 1, out.stderr
    assert json.loads(log.read_text().splitlines()[-1])["request_id"] == "rml-1"


def test_feedback_cli_refuses_ids_no_decision_holds_and_finds_them_in_every_file_of_the_log(tmp_path):
    """Feedback for an id the log does not hold joins nothing, and a strict read of the log later failed on it:
    every id is looked up first - in the log, its rotated files and its workers' files - and one unknown id
    refuses the whole file, naming its line."""
    log, ratings = tmp_path / "d.jsonl", tmp_path / "r.jsonl"
    for name, rid in (("d.1.jsonl", "rml-old"), ("d.jsonl", "rml-1"), ("d.w1.jsonl", "rml-w1")):
        (tmp_path / name).write_text(json.dumps(_decision(rid, "hi")) + "\n")
    with open(log, "a") as f:  # feedback for an id is no decision for it
        f.write(json.dumps(feedback_record("rml-rated", thumbs="up")) + "\n")
    before = log.read_bytes()
    cli = [sys.executable, "-m", "router_ml.cli", "feedback", "--log", str(log)]
    ratings.write_text("".join(json.dumps({"request_id": rid, "thumbs": "up"}) + "\n"
                               for rid in ("rml-old", "rml-1", "rml-ghost", "rml-w1", "rml-rated")))
    out = subprocess.run([*cli, "--file", str(ratings)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1, out.stderr
    assert f"no decision for request id(s) {ratings}:3: rml-ghost, {ratings}:5: rml-rated (in the log" in out.stderr
    assert "nothing was recorded" in out.stderr and log.read_bytes() == before
    out = subprocess.run([*cli, "--request-id", "rml-ghost", "--quality", "1"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 1 and "--request-id: rml-ghost" in out.stderr and log.read_bytes() == before
    ratings.write_text("".join(json.dumps({"request_id": rid, "thumbs": "up"}) + "\n"
                               for rid in ("rml-old", "rml-1", "rml-w1")))
    out = subprocess.run([*cli, "--file", str(ratings)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and json.loads(out.stdout)["recorded"] == 3, out.stderr
    assert [json.loads(x)["request_id"] for x in log.read_text().splitlines()[2:]] == ["rml-old", "rml-1", "rml-w1"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to make a write fail")
def test_a_decision_log_that_cannot_be_written_does_not_fail_answers_but_is_counted(router, up, caplog):
    with DecisionLog("/dev/full") as log, Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url}),
                                                                   decision_log=log)) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as http:
        assert http.post("/v1/chat/completions", json={"messages": MSG}).status_code == 200
        assert scrape(http.get("/metrics").text)[("router_ml_decision_log_errors_total", ())] == 1
    assert "cannot write the decision log /dev/full" in caplog.text


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to make a write fail")
def test_a_rating_the_log_cannot_take_is_a_503_saying_so_and_counted(router, up, caplog):
    with DecisionLog("/dev/full") as log, Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url}),
                                                                   decision_log=log)) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as http:
        r = http.post("/v1/feedback", json={"request_id": "rml-1", "thumbs": "up"})
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "decision_log_unavailable" and error["type"] == "server_error"
        assert error["message"].startswith("the rating was not recorded: the server cannot write its decision log "
                                           "(No space left on device)")
        assert scrape(http.get("/metrics").text)[("router_ml_decision_log_errors_total", ())] == 1
    assert "internal error" not in caplog.text and "cannot write the decision log /dev/full" in caplog.text


def _decision(rid: str, prompt: str, model: str = "small-8b", status: str = "ok") -> dict:
    return {"type": "decision", "time": "2026-01-02T03:04:05.000Z", "request_id": rid, "prompt_sha256": "0" * 64,
            "prompt": prompt, "chosen": model, "rule": None, "model": model, "status": status, "fallbacks": [],
            "input_tokens": 100, "output_tokens": 50, "cost_usd": 4e-05, "latency_s": 0.5, "scores": None}


def test_the_decisions_reader_joins_across_rotated_files_and_counts_what_it_rejects(tmp_path):
    log = tmp_path / "d.jsonl"
    lines = {
        "d.2.jsonl": [_decision("r1", "one"), _decision("r2", "two", "tiny-1b")],
        "d.1.jsonl": [feedback_record("r1", thumbs="down"), _decision("r3", "three", status="error")],
        "d.jsonl": [feedback_record("r1", quality=0.75), feedback_record("r2", thumbs="up"),
                    feedback_record("r3", thumbs="up"), feedback_record("ghost", thumbs="up")],
    }
    for name, records in lines.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    with open(log, "a") as f:
        f.write('{"type": "feedback", "request_id": "r2", "qua')  # a crash mid-write
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert report.format == "decisions" and len(table) == 2 and report.rejected == 3
    by_id = {r.sample_id: r for r in table.records}
    assert by_id["r1"].outcomes["small-8b"].quality == 0.75  # the last feedback wins
    assert by_id["r1"].outcomes["small-8b"].cost == 4e-05 and by_id["r1"].timestamp.startswith("2026-01-02")
    assert by_id["r2"].outcomes["tiny-1b"].quality == 1.0
    rejected = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert [(r["location"].rsplit("/", 1)[1], r["field"]) for r in rejected] == [
        ("d.1.jsonl:2", "status"), ("d.jsonl:4", "request_id"), ("d.jsonl:5", None)]
    assert "truncated last line" in rejected[2]["reason"]


def test_the_reader_checks_each_lines_format_version(tmp_path):
    """Lines without ``format_version`` (earlier releases) read as version 1; a newer version stops the read
    in every mode, naming file:line and the fix; a version that is not a positive integer is one bad line."""
    log = tmp_path / "d.jsonl"
    old = [_decision("r1", "one"), {"type": "feedback", "request_id": "r1", "thumbs": "up", "quality": 1.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in old))
    table, _ = load_traffic(log)
    assert [r.sample_id for r in table.records] == ["r1"]
    with open(log, "a") as f:
        f.write(json.dumps({**_decision("r2", "two"), "format_version": "one"}) + "\n")
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert (len(table), report.rejected) == (1, 1)
    assert json.loads((tmp_path / "q.jsonl").read_text())["field"] == "format_version"
    with open(log, "a") as f:
        f.write(json.dumps({**_decision("r3", "three"), "format_version": FORMAT_VERSION + 1}) + "\n")
    for mode in ("raise", "quarantine"):
        with pytest.raises(DataError) as err:
            load_traffic(log, on_error=mode, quarantine=tmp_path / "q2.jsonl")
        message = str(err.value)
        assert message.startswith(f"{log}:4: ") and f"version {FORMAT_VERSION + 1} is newer" in message
        assert "upgrade router-ml" in message


def test_a_log_without_prompts_is_rejected_with_the_fix(router, up, tmp_path):
    log = tmp_path / "d.jsonl"
    with RoutedClient(router, catalog({"*": up.base_url}), decision_log=log) as client:
        rid = client.chat.completions.create(messages=MSG).router_ml.request_id
    with DecisionLog(log) as d:
        d.write(feedback_record(rid, quality=1))
    record = json.loads(log.read_text().splitlines()[0])
    assert "prompt" not in record and len(record["prompt_sha256"]) == 64 and record["scores"]
    with pytest.raises(Exception, match="--log-prompts"):
        load_traffic(log)


# --- 7. the OpenAI SDK against `router-ml serve` -----------------------------------------------------

def _serve(trained, up, tmp_path, *flags: str) -> tuple[subprocess.Popen, str]:
    """A real ``router-ml serve`` process on the demo catalog pointed at ``up``: the process and its base URL
    (``host:port/v1``); clients must send the key "client-secret", the decision log is tmp_path/decisions.jsonl."""
    providers = tmp_path / "providers.toml"
    text = (ROOT / "data/demo/providers.toml").read_text().replace("http://127.0.0.1:9100", up.base_url[:-3])
    text = text.replace("http://localhost:9100", up.base_url[:-3])
    providers.write_text(text.replace('timeout_s = 20', 'timeout_s = 20\napi_key_env = "FAKE_KEY"'))
    env = {**os.environ, "FAKE_KEY": SECRET, "CLIENT_KEY": "client-secret"}
    proc = subprocess.Popen([sys.executable, "-m", "router_ml.cli", "serve", "--artifact", str(trained.artifact),
                             "--providers", str(providers), "--port", "0", "--decision-log",
                             str(tmp_path / "decisions.jsonl"), "--log-prompts", "--api-key-env", "CLIENT_KEY",
                             *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "serving" not in line:
        proc.kill()
        pytest.fail(line + proc.communicate(timeout=30)[1])
    return proc, line.split("http://", 1)[1].split()[0]


def test_openai_sdk_against_router_ml_serve(trained, up, tmp_path):
    import openai  # a dev dependency: a missing SDK fails the test rather than skipping it
    log = tmp_path / "decisions.jsonl"
    proc, base = _serve(trained, up, tmp_path)
    try:
        sdk = openai.OpenAI(base_url=f"http://{base}", api_key="client-secret", max_retries=0)
        try:
            r = sdk.chat.completions.create(model="router-ml", messages=MSG)
            assert r.choices[0].message.content.endswith("What is the capital of France?")
            assert r.router_ml["model"] == r.model and r.usage.total_tokens == 30
            chunks = list(sdk.chat.completions.create(model="router-ml", messages=MSG, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Hello from ")
            up.script.extend(["echo_key_401"] * 3)
            with pytest.raises(openai.APIStatusError) as err:
                sdk.chat.completions.create(model="tiny-1b", messages=MSG)
            assert err.value.status_code == 502 and SECRET not in str(err.value.body)
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"http://{base}", api_key="wrong", max_retries=0).models.list()
            assert [m.id for m in sdk.models.list()][0] == "router-ml"
        finally:
            sdk.close()
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert SECRET not in stderr and "Traceback" not in stderr, stderr
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(r["stream"], r["status"]) for r in records] == [(False, "ok"), (True, "ok"), (False, "error")]
    assert records[1]["output_tokens"] == 10 and records[1]["cost_usd"] > 0
    assert all(r["propensity"] == 1.0 and r["explored"] is False for r in records)  # exploration is off by default
    assert records[0]["policy"]["exploration"] is None


def test_serve_explores_and_logs_propensities_and_the_policy(trained, up, tmp_path):
    """``--explore-rate 1``: every routed request explores uniformly over the eligible models (frontier-xl
    excluded unless greedy), each line records its propensity and what reproduces it; pins never explore."""
    proc, base = _serve(trained, up, tmp_path, "--explore-rate", "1", "--explore-seed", "7",
                        "--explore-exclude", "frontier-xl")
    prompts = [f"Question {i}: what is {i} times {i + 3}?" for i in range(40)]
    try:
        with httpx.Client(base_url=f"http://{base}"[:-3], timeout=10,
                          headers={"authorization": "Bearer client-secret"}) as http:
            for p in prompts:
                assert http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": p}]}
                                 ).status_code == 200
            assert http.post("/v1/chat/completions", json={"model": "frontier-xl", "messages": MSG}
                             ).status_code == 200
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr
    records = [json.loads(x) for x in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    routed, pinned = records[:-1], records[-1]
    assert (pinned["chosen"], pinned["rule"], pinned["propensity"], pinned["explored"]) == \
        ("frontier-xl", "pinned", 1.0, False)
    router = Router.load(trained.artifact)
    for r, p in zip(routed, prompts, strict=True):
        policy = r["policy"]  # reproduce the greedy choice from the line alone: scores, prices, knob, prompt
        tokens = (len(r["prompt"]) + 3) // 4
        costs = [fixed + tokens * per_token for fixed, per_token in policy["prices"].values()]
        knob = math.inf if policy["willingness_to_pay"] is None else policy["willingness_to_pay"]
        g = list(policy["prices"])[_choose_one([r["scores"][m] for m in policy["prices"]], costs, knob)]
        assert r["prompt"] == p and r["rule"] is None and r["explored"] == (r["chosen"] != g)
        k = len(MODELS) - (g != "frontier-xl")  # eligible: all but frontier-xl, which only greedy may be
        assert r["propensity"] == pytest.approx(1 / k)
        assert r["chosen"] != "frontier-xl" or g == "frontier-xl"
        assert policy["artifact_sha256"] == router.manifest["files"]["router.onnx"]
        assert policy["exploration"] == {"kind": "epsilon", "rate": 1.0, "seed": 7, "max_cost_usd": None,
                                         "exclude": ["frontier-xl"], "temperature": 0.1, "uniform_share": 0.25}
        assert policy["willingness_to_pay"] == r["willingness_to_pay"] and set(policy["prices"]) == set(MODELS)
    assert sum(r["explored"] for r in routed) >= 20
    assert len({r["chosen"] for r in routed}) >= 3
    assert max(len(x) for x in (tmp_path / "decisions.jsonl").read_text().splitlines()) < 4000
