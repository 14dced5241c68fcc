"""Router variants in production: the serve config's traffic split, the variant in every decision, and hot
swaps (admin endpoint and SIGHUP) under load without losing a request."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from router_ml.decision_log import DecisionLog
from router_ml.errors import RouterMLError
from router_ml.providers import ProviderCatalog
from router_ml.variants import VariantClient, VariantSource, VariantSpec, parse_variant, read_variants_file

from .conftest import ROOT
from .fake_upstream import FakeUpstream
from .serve_process import MSG, Load, Served, decisions, providers_for
from .test_serving import Proxy


def test_variant_flags_and_files_are_checked_and_errors_name_them(tmp_path):
    assert parse_variant("canary=models/v4:10") == VariantSpec("canary", "models/v4", 10.0)
    assert parse_variant("a=runs:/0a1b/artifact:2.5") == VariantSpec("a", "runs:/0a1b/artifact", 2.5)
    for bad, says in [("a=models/v4", "expected NAME=PATH:WEIGHT"), ("=x:1", "the variant name"),
                      ("a=x:lots", "is not a number"), ("a=x:-1", "must be a number >= 0"),
                      ("a b=x:1", "must be 1-64 letters")]:
        with pytest.raises(RouterMLError, match=says) as err:
            parse_variant(bad)
        assert f"--variant {bad}" in str(err.value)
    file = tmp_path / "conf" / "variants.toml"
    file.parent.mkdir()
    file.write_text('[variants.control]\nartifact = "../models/v3"\nweight = 90\n'
                    '[variants.canary]\nartifact = "/abs/v4"\nweight = 10\n')
    assert read_variants_file(file) == [VariantSpec("control", str(file.parent / "../models/v3"), 90.0),
                                        VariantSpec("canary", "/abs/v4", 10.0)]
    for text, says in [('[variants.a]\nweight = 1\n', "variants.a.artifact: missing"),
                       ('[variants.a]\nartifact = "x"\ncolour = 1\n', "unknown key(s) ['colour']"),
                       ('[variants.a]\nartifact = "x"\nweight = "half"\n', "the weight must be a number"),
                       ('[router]\nartifact = "x"\n', "expected only [variants.NAME] tables"),
                       ('[variants.a]\nartifact = "x"\nweight = 0\n', "the weights add up to 0"),
                       ('[variants.a\n', "not valid TOML")]:
        file.write_text(text)
        with pytest.raises(RouterMLError, match=r"variants\.toml") as err:
            VariantSource(file=file)
        assert says in str(err.value), err.value
    with pytest.raises(RouterMLError, match="--variant: the weights add up to more than a float holds"):
        VariantSource([VariantSpec("a", "x", 1e308), VariantSpec("b", "y", 1e308)])  # the sum overflowed to inf
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "serve", "--variant", "a=x:1e308", "--variant",
                          "b=y:1e308", "--providers", "p.toml"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and "the weights add up to more than a float holds" in out.stderr, out.stderr
    with pytest.raises(RouterMLError, match=r"\['a'\] given more than once"):
        VariantSource([VariantSpec("a", "x", 1), VariantSpec("a", "y", 1)])
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "serve", "--artifact", "x", "--variant", "a=x:1",
                          "--providers", "p.toml"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "give exactly one of --artifact" in out.stderr


def _copies(artifact, tmp_path, *names):
    for name in names:
        shutil.copytree(artifact, tmp_path / name)


@pytest.mark.slow  # the session's trained router
def test_a_two_variant_split_matches_its_weights_and_each_decision_names_its_variant(trained, tmp_path):
    """10,000 decisions of a 70/30 split (the documented check): shares within 2 points; a user stays on one
    variant; the record names the variant. The proxy shows the variants and is ready; its admin endpoint is
    off without an admin key."""
    _copies(trained.artifact, tmp_path, "a", "b")
    source = VariantSource([VariantSpec("a", str(tmp_path / "a"), 70), VariantSpec("b", str(tmp_path / "b"), 30)])
    with FakeUpstream() as up:
        cat = ProviderCatalog.load(providers_for(up.base_url, tmp_path))
        client = VariantClient(source, cat)
        body = {"messages": MSG}
        with DecisionLog(tmp_path / "decisions.jsonl") as log:
            for _ in range(10_000):
                log.write(client.decide(body)[0].record(None))
        shares = Counter(d["variant"] for d in decisions(tmp_path / "decisions.jsonl"))  # the log's shares
        assert abs(shares["a"] / 10_000 - 0.7) < 0.02 and abs(shares["b"] / 10_000 - 0.3) < 0.02, shares
        for user in ("alice", "bob", "carol"):
            assert len({client.decide({**body, "user": user})[0].variant for _ in range(20)}) == 1
        info, _ = client.decide(body)
        record = info.record(None)
        assert record["variant"] in ("a", "b") and record["policy"]["artifact_sha256"]
        with Proxy(client) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as http:
            assert http.get("/ready").json() == {"ready": True, "reason": None}
            health = http.get("/health").json()
            assert [(v["name"], v["share"]) for v in health["variants"]] == [("a", 0.7), ("b", 0.3)]
            r = http.post("/admin/reload")
            assert r.status_code == 403 and "--admin-key-env" in r.json()["error"]["message"]
            answer = http.post("/v1/chat/completions", json={"messages": MSG}).json()
            assert answer["router_ml"]["variant"] in ("a", "b")


def _write(file, **variants) -> None:
    file.write_text("".join(f'[variants.{n}]\nartifact = "{p}"\nweight = 1\n' for n, p in variants.items()))


@pytest.mark.slow  # the session's trained router
def test_hot_swaps_under_load_lose_nothing(trained, tmp_path):
    """Two workers, a/b split, clients sending all along: an admin-key reload to a/c (the worker that got it
    tells the supervisor, the other reloads too), a broken config refused with the variants kept, then SIGHUP
    to c alone. Every request answered 200, each logged once with the variant that answered it."""
    _copies(trained.artifact, tmp_path, "a", "b", "c")
    conf = tmp_path / "variants.toml"
    _write(conf, a="a", b="b")
    log = tmp_path / "decisions.jsonl"
    admin = {"authorization": "Bearer admin-secret"}
    with FakeUpstream(delay_s=0.005) as up, \
            Served("--variants", str(conf), "--providers", str(providers_for(up.base_url, tmp_path)),
                   "--decision-log", str(log), "--workers", "2", "--admin-key-env", "ADMIN_KEY", cwd=tmp_path,
                   env={"ADMIN_KEY": "admin-secret"}) as served:
        load = Load(served.url, threads=3).start()
        load.wait_answers(40)
        start = time.monotonic()
        assert httpx.post(served.url + "/admin/reload").status_code == 401
        assert httpx.post(served.url + "/admin/reload", headers={"authorization": "Bearer nope"}).status_code == 401
        _write(conf, a="a", c="c")
        r = httpx.post(served.url + "/admin/reload", headers=admin, timeout=60)
        assert r.status_code == 200 and [v["name"] for v in r.json()["variants"]] == ["a", "c"], r.text
        served.wait_for("reloaded the router variants", count=2)
        first = time.monotonic() + 0.2  # requests decided before the swap finish within ~10 ms
        load.wait_answers(40, after=first)
        broke = time.monotonic()
        _write(conf, c="missing-dir")
        broken = httpx.post(served.url + "/admin/reload", headers=admin, timeout=60)
        assert broken.status_code == 500 and "missing-dir" in broken.json()["error"]["message"]
        _write(conf, c="c")
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for("reloaded the router variants", count=4)
        second = time.monotonic() + 0.2
        load.wait_answers(40, after=second)
        load.stop()
        assert served.stop() == 0
    assert "Traceback" not in served.stderr, served.stderr
    assert not load.failures and not load.statuses, (load.failures, load.statuses)
    variants = [{v for _, v, _ in load.after(t, until)} for t, until in
                [(0, start), (first, broke), (second, float("inf"))]]
    assert variants == [{"a", "b"}, {"a", "c"}, {"c"}]
    logged = {d["request_id"]: d["variant"] for d in decisions(log)}
    assert len(logged) == len(decisions(log)) == len(load.answered)
    assert logged == {rid: variant for rid, variant, _ in load.answered}


def _health_variants(url: str, pids: set[int] | None = None) -> dict[int, list[tuple[str, float]]]:
    """pid -> [(variant, weight)] of each worker /health reaches on fresh connections (both, in 40 tries)."""
    seen: dict[int, list[tuple[str, float]]] = {}
    for _ in range(40):
        h = httpx.get(url + "/health", headers={"connection": "close"}, timeout=30).json()
        seen[h["pid"]] = [(v["name"], v["weight"]) for v in h["variants"]]
        if len(seen) == 2 and (pids is None or not set(seen) & pids):
            break
    return seen


@pytest.mark.slow  # the session's trained router
def test_a_restarted_worker_serves_what_its_siblings_serve_not_the_file_on_disk(trained, tmp_path):
    """Two workers on a/b. An edit nobody reloaded (b dropped), then a broken file: a worker killed after each
    comes back on a/b, the variants the other serves - the server stays up. A reload still reads the file."""
    _copies(trained.artifact, tmp_path, "a", "b")
    conf = tmp_path / "variants.toml"
    _write(conf, a="a", b="b")
    both = [("a", 1.0), ("b", 1.0)]
    with FakeUpstream(delay_s=0.005) as up, \
            Served("--variants", str(conf), "--providers", str(providers_for(up.base_url, tmp_path)),
                   "--workers", "2", cwd=tmp_path) as served:
        first = _health_variants(served.url)
        assert len(first) == 2 and list(first.values()) == [both, both]
        for n, edit in enumerate(("[variants.a]\nartifact = \"a\"\nweight = 1\n", "garbage[")):
            conf.write_text(edit)  # not reloaded
            victim = sorted(_health_variants(served.url))[0]
            os.kill(victim, signal.SIGKILL)
            served.wait_for("was killed by SIGKILL", count=n + 1)
            deadline = time.monotonic() + 60
            while victim in (now := _health_variants(served.url)) or len(now) < 2:
                assert time.monotonic() < deadline and served.proc.poll() is None, served.stderr
                time.sleep(0.2)
            assert list(now.values()) == [both, both], now
        _write(conf, a="a")
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for("reloaded the router variants", count=2)
        assert list(_health_variants(served.url).values()) == [[("a", 1.0)], [("a", 1.0)]]
        assert served.stop() == 0
    assert "Traceback" not in served.stderr, served.stderr


def test_a_starting_worker_follows_a_reload_its_siblings_made_while_it_loaded(trained, tmp_path, monkeypatch, capsys):
    """A worker restarted while the others reload (it ignores the signal until it serves): after its load it
    finds the record changed and loads what they serve now, without writing the old record back. A record
    that cannot be written is said, not raised."""
    import router_ml.variants as variants
    from router_ml.variants import _first_split

    _copies(trained.artifact, tmp_path, "a", "b")
    catalog = ProviderCatalog.load(providers_for("http://127.0.0.1:9", tmp_path))
    conf = tmp_path / "variants.toml"
    _write(conf, a="a")
    served = tmp_path / "served.json"
    sibling = VariantSource(file=conf, served=served)
    sibling.record([VariantSpec("a", str(tmp_path / "a"), 1.0)])
    source = VariantSource(file=conf, served=served)
    real, loads = variants.load_split, []

    def load_while_siblings_reload(specs, *args):
        loads.append([s.name for s in specs])
        if len(loads) == 1:  # the others reload to a/b meanwhile
            sibling.record([VariantSpec("a", str(tmp_path / "a"), 1.0), VariantSpec("b", str(tmp_path / "b"), 1.0)])
        return real(specs, *args)

    monkeypatch.setattr(variants, "load_split", load_while_siblings_reload)
    split = _first_split(source, catalog, None)
    assert loads == [["a"], ["a", "b"]] and [v.name for v in split.variants] == ["a", "b"]
    assert [s.name for s in source.recorded()] == ["a", "b"]
    gone = VariantSource(file=conf, served=tmp_path / "no-such-dir" / "served.json")
    gone.record([VariantSpec("a", str(tmp_path / "a"), 1.0)])
    assert "cannot record the variants served in" in capsys.readouterr().err


def test_a_worker_that_finds_an_artifact_changed_since_its_siblings_loaded_it_says_so(trained, tmp_path, capsys):
    """An export written over a served artifact's directory, not reloaded: a restarted worker loads the new files
    (the old are gone) and serves another router than its siblings - it said nothing. The record now holds each
    artifact's checksum, and the worker names both and the reload that reunites them."""
    import json

    from router_ml.variants import _first_split

    _copies(trained.artifact, tmp_path, "a")
    catalog = ProviderCatalog.load(providers_for("http://127.0.0.1:9", tmp_path))
    conf = tmp_path / "variants.toml"
    _write(conf, a="a")
    served = tmp_path / "served.json"
    first = VariantSource(file=conf, served=served)
    split = _first_split(first, catalog, None)  # the first worker: loads the file, records what it loaded
    sha = split.variants[0].checksum
    assert json.loads(served.read_text())[0]["artifact_sha256"] == sha
    _first_split(VariantSource(file=conf, served=served), catalog, None)  # a restart on the same files
    assert "changed on disk" not in capsys.readouterr().err
    record = json.loads(served.read_text())
    record[0]["artifact_sha256"] = "0" * 64  # what the siblings loaded before the files were overwritten
    served.write_text(json.dumps(record))
    _first_split(VariantSource(file=conf, served=served), catalog, None)
    err = capsys.readouterr().err
    assert "variant 'a'" in err and "changed on disk" in err and "000000000000..." in err and sha[:12] in err
    assert "SIGHUP" in err
