"""Per-answer feedback and cascade decision lines, read as training records.

Real decision-log files in tmp_path (written by :class:`router_ml.decision_log.DecisionLog` and
:func:`router_ml.decision_log.feedback_record`), read through ``training.data.load_traffic``, the feedback
command and ``router-ml data inspect`` run through the CLI's ``main``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from router_ml.cli import main
from router_ml.decision_log import FEEDBACK_FIELDS, DecisionLog, FeedbackError, feedback_from, feedback_record
from router_ml.errors import DataError
from training.data import load_traffic
from training.pipeline import propensity_loss_weights

FLASH = {"model": "flash", "upstream": "flash#0", "provider_model": "gemini-flash", "status": "ok",
         "input_tokens": 12, "output_tokens": 40, "cost_usd": 1.2e-05, "latency_s": 0.21,
         "score": 0.31, "accept": 0.12, "threshold": 0.2, "accepted": False, "response": "flash says B"}
PRO = {"model": "pro", "upstream": "pro#0", "provider_model": "gemini-pro", "status": "ok",
       "input_tokens": 12, "output_tokens": 55, "cost_usd": 3.1e-04, "latency_s": 0.9,
       "score": None, "accept": None, "threshold": None, "accepted": True, "response": "pro says C"}
FAILED = {"model": "pro", "upstream": "pro#0", "provider_model": "gemini-pro", "status": "error",
          "error": "HTTP 503", "input_tokens": None, "output_tokens": None, "cost_usd": None, "latency_s": 0.3,
          "score": None, "accept": None, "threshold": None, "accepted": False}


def decision(rid: str, model: str = "flash", **extra) -> dict:
    """An ordinary decision line (as the runtime writes it with --log-prompts)."""
    return {"type": "decision", "format_version": 1, "time": "2026-01-02T03:04:05.000Z", "request_id": rid,
            "prompt_sha256": "0" * 64, "prompt": f"prompt of {rid}", "rule": None, "chosen": model, "model": model,
            "status": "ok", "stream": False, "fallbacks": [], "input_tokens": 10, "output_tokens": 20,
            "cost_usd": 2e-05, "latency_s": 0.2, "propensity": 1.0, "response": f"{model} answers {rid}", **extra}


def cascade(rid: str, attempts: list[dict], answered: int | None = None, **extra) -> dict:
    """A cascade's decision line: top-level sums over the calls, the returned answer, ``chosen`` = first model."""
    answered = len(attempts) - 1 if answered is None else answered
    ok = [a for a in attempts if a["status"] == "ok"]
    line = decision(rid, attempts[answered]["model"], chosen=attempts[0]["model"],
                    input_tokens=sum(a["input_tokens"] for a in ok), output_tokens=sum(a["output_tokens"] for a in ok),
                    cost_usd=sum(a["cost_usd"] for a in ok), latency_s=sum(a["latency_s"] for a in attempts),
                    response=attempts[answered].get("response"),
                    cascade={"policy": "chain_margin", "point": {"margin": 0.1}, "answered": answered,
                             "attempts": attempts})
    return {**line, **extra}


def write_log(path, *lines) -> str:
    with DecisionLog(path) as log:
        for line in lines:
            log.write(line)
    return str(path)


def quarantined(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def load(tmp_path, *lines, name="d"):
    """Write ``lines`` to ``<name>.jsonl`` and read it in quarantine mode: records by id, report, quarantined."""
    log = write_log(tmp_path / f"{name}.jsonl", *lines)
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / f"{name}.q.jsonl")
    rejected = quarantined(tmp_path / f"{name}.q.jsonl") if report.rejected else []
    return {r.sample_id: r for r in table}, report, rejected


# --- feedback records: the optional model ----------------------------------------------------------

def test_feedback_names_the_rated_model_or_is_refused_naming_the_field():
    assert "model" in FEEDBACK_FIELDS
    assert feedback_record("r1", thumbs="up", model="flash")["model"] == "flash"
    assert "model" not in feedback_record("r1", quality=0.5)
    assert feedback_from({"request_id": "r1", "quality": 0.5, "model": "pro"})["model"] == "pro"
    for bad in ("", "  ", "m" * 201, 7, ["pro"]):
        with pytest.raises(FeedbackError) as err:
            feedback_from({"request_id": "r1", "quality": 0.5, "model": bad})
        assert err.value.field == "model" and "leave it out to rate the returned answer" in str(err.value)


# --- cascade lines in the decisions reader -----------------------------------------------------------

def test_both_rated_answers_are_two_outcomes_with_their_own_cost_tokens_and_response(tmp_path):
    records, report, rejected = load(tmp_path, cascade("r1", [FLASH, PRO]),
                                     feedback_record("r1", quality=0.0, model="flash"),
                                     feedback_record("r1", thumbs="up"))  # the request's rating: the returned answer
    assert report.rejected == 0 and not rejected
    flash, pro = records["r1"].outcomes["flash"], records["r1"].outcomes["pro"]
    assert (flash.quality, flash.cost, flash.input_tokens, flash.output_tokens, flash.latency_s, flash.response) == (
        0.0, 1.2e-05, 12, 40, 0.21, "flash says B")
    assert (pro.quality, pro.cost, pro.input_tokens, pro.output_tokens, pro.latency_s, pro.response) == (
        1.0, 3.1e-04, 12, 55, 0.9, "pro says C")  # not the line's sums (3.22e-4, 95 output tokens)
    # the first call is the policy's draw (its propensity); the escalation was decided after seeing an answer
    assert flash.propensity == 1.0 and pro.propensity is None
    meta = records["r1"].metadata["router_ml"]
    assert meta["unrated"] == [] and meta["chosen"] == "flash"
    assert meta["cascade"] == {"policy": "chain_margin", "answered": "pro", "scores": {"flash": 0.31}}
    assert set(meta["feedback"]) == {"flash", "pro"} and meta["feedback"]["pro"].endswith("d.jsonl:3")


def test_unrated_answers_are_listed_and_a_cascade_with_none_rated_is_rejected(tmp_path):
    records, report, rejected = load(
        tmp_path, cascade("r1", [FLASH, PRO]), feedback_record("r1", quality=0.25, model="flash"),
        cascade("r2", [FLASH, PRO]),  # nobody rated it
        cascade("r3", [FLASH]), feedback_record("r3", quality=0.5))  # accepted at once, rated as a request
    assert list(records["r1"].outcomes) == ["flash"] and records["r1"].outcomes["flash"].quality == 0.25
    assert records["r1"].metadata["router_ml"]["unrated"] == ["pro"]
    assert records["r1"].outcomes["flash"].propensity == 1.0
    r3 = records["r3"].outcomes["flash"]
    assert (r3.quality, r3.cost, r3.propensity) == (0.5, 1.2e-05, 1.0)
    assert records["r3"].metadata["router_ml"]["cascade"]["answered"] == "flash"
    assert report.rejected == 1 and rejected[0]["field"] == "feedback"
    assert "no feedback for request r2 (its answers: flash, pro)" in rejected[0]["reason"]


def test_a_models_own_rating_wins_over_the_requests_whatever_the_order(tmp_path):
    records, _, rejected = load(tmp_path, cascade("r1", [FLASH, PRO]),
                                feedback_record("r1", quality=0.9, model="pro"),
                                feedback_record("r1", quality=0.1, model="flash"),
                                feedback_record("r1", quality=0.0))  # later, but only for the request
    assert not rejected
    assert records["r1"].outcomes["pro"].quality == 0.9 and records["r1"].outcomes["flash"].quality == 0.1
    # on an ordinary line, a rating naming the answering model is that answer's rating too
    records, _, rejected = load(tmp_path, decision("r2", "pro"), feedback_record("r2", quality=0.3, model="pro"),
                                name="plain")
    assert not rejected and records["r2"].outcomes["pro"].quality == 0.3


def test_feedback_for_a_model_the_request_has_no_answer_of_is_quarantined(tmp_path):
    records, report, rejected = load(
        tmp_path, cascade("r1", [FLASH, FAILED], answered=0), decision("r2", "flash"),
        feedback_record("r1", quality=1.0),
        feedback_record("r1", quality=1.0, model="ultra"),  # never called
        feedback_record("r1", quality=1.0, model="pro"),  # called, but the call failed
        feedback_record("r2", quality=1.0, model="pro"),  # an ordinary request answered by flash
        feedback_record("r2", quality=0.5))
    assert report.rejected == 3 and [r["field"] for r in rejected] == ["model"] * 3
    assert [r["location"].rsplit(":", 1)[1] for r in rejected] == ["4", "5", "6"]
    assert "model 'ultra' of request r1, which the request never called; the request's answers: 'flash'" in \
        rejected[0]["reason"]
    assert "model 'pro' of request r1, whose call failed" in rejected[1]["reason"]
    # the failed escalation gives no outcome and is not "unrated" either: it has no answer
    assert list(records["r1"].outcomes) == ["flash"] and records["r1"].metadata["router_ml"]["unrated"] == []
    assert records["r2"].outcomes["flash"].quality == 0.5
    with pytest.raises(DataError) as err:  # strict mode stops at the first, naming file:line and field
        load_traffic(tmp_path / "d.jsonl")
    assert err.value.field == "model" and str(err.value).startswith(f"{tmp_path / 'd.jsonl'}:4: ")


def test_a_cascade_whose_only_rated_answer_is_an_escalation_is_rejected_when_it_carries_a_propensity(tmp_path):
    records, report, rejected = load(tmp_path, cascade("r1", [FLASH, PRO]), feedback_record("r1", thumbs="up"),
                                     decision("r0"), feedback_record("r0", thumbs="up"))
    assert list(records) == ["r0"] and report.rejected == 1 and rejected[0]["field"] == "propensity"
    assert "only escalated answers are rated" in rejected[0]["reason"]
    assert "feedback with \"model\": 'flash'" in rejected[0]["reason"]
    # a line without a propensity (nothing to weigh by) keeps the escalation's outcome, propensity unknown
    no_p = {k: v for k, v in cascade("r2", [FLASH, PRO]).items() if k != "propensity"}
    records, report, rejected = load(tmp_path, no_p, feedback_record("r2", thumbs="up"), name="old")
    assert not rejected and records["r2"].outcomes["pro"].propensity is None
    assert records["r2"].metadata["router_ml"]["unrated"] == ["flash"]


def test_a_skipped_cascade_reads_as_an_ordinary_line(tmp_path):
    records, _, rejected = load(tmp_path, decision("r1", "pro", cascade={"skipped": "stream"}),
                                feedback_record("r1", quality=0.75))
    assert not rejected
    outcome = records["r1"].outcomes["pro"]
    assert (outcome.quality, outcome.cost, outcome.propensity) == (0.75, 2e-05, 1.0)
    assert "cascade" not in records["r1"].metadata["router_ml"]


def _broken(line: dict, **cascade_fields) -> dict:
    return {**line, "cascade": {**line["cascade"], **cascade_fields}}


@pytest.mark.parametrize(("line", "field", "says"), [
    (decision("r1", cascade=["flash"]), "cascade", "must be an object"),
    (_broken(cascade("r1", [FLASH, PRO]), attempts={"flash": FLASH}), "cascade.attempts", "non-empty list"),
    (_broken(cascade("r1", [FLASH, PRO]), attempts=[]), "cascade.attempts", "non-empty list"),
    (_broken(cascade("r1", [FLASH, PRO]), attempts=[FLASH, "pro"]), "cascade.attempts[1]", "must be an object"),
    (_broken(cascade("r1", [FLASH, PRO]), attempts=[FLASH, {**PRO, "model": None}]), "cascade.attempts[1].model",
     "must name the model called"),
    (_broken(cascade("r1", [FLASH, PRO]), attempts=[FLASH, {**PRO, "model": "flash"}]),
     "cascade.attempts[1].model", "called twice"),
    (_broken(cascade("r1", [FLASH, PRO]), attempts=[{**FLASH, "status": None}, PRO]), "cascade.attempts[0].status",
     "\"ok\" or \"error\""),
    (_broken(cascade("r1", [FLASH, PRO]), answered=2), "cascade.answered", "index (0-1)"),
    (_broken(cascade("r1", [FLASH, PRO]), answered=True), "cascade.answered", "index (0-1)"),
    (_broken(cascade("r1", [FLASH, PRO]), answered=0), "cascade.answered", "not at the answer of the line's model"),
    (cascade("r1", [FLASH, FAILED], answered=1, model="pro"), "cascade.answered", "status 'error'"),
])
def test_a_malformed_cascade_is_one_rejected_line_naming_the_field(tmp_path, line, field, says):
    records, report, rejected = load(tmp_path, line, decision("r2"), feedback_record("r1", quality=1.0, model="pro"),
                                     feedback_record("r1", quality=1.0), feedback_record("r2", quality=1.0))
    assert list(records) == ["r2"] and report.rejected == 1  # the feedback lines are not blamed for it
    assert rejected[0]["field"] == field and says in rejected[0]["reason"], rejected[0]["reason"]
    assert rejected[0]["location"].endswith("d.jsonl:1")


# --- the feedback command ---------------------------------------------------------------------------

def test_the_feedback_command_writes_the_rated_model(tmp_path, capsys):
    log = tmp_path / "d.jsonl"
    write_log(log, cascade("r1", [FLASH, PRO]))
    assert main(["feedback", "--log", str(log), "--request-id", "r1", "--thumbs", "down", "--model", "flash"]) == 0
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text(json.dumps({"request_id": "r1", "quality": 0.8, "model": "pro", "comment": "right"}) + "\n")
    assert main(["feedback", "--log", str(log), "--file", str(ratings)]) == 0
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x.get("model"), x["quality"]) for x in lines[1:]] == [("flash", 0.0), ("pro", 0.8)]
    table, _ = load_traffic(log)
    assert {m: o.quality for m, o in table[0].outcomes.items()} == {"flash": 0.0, "pro": 0.8}
    capsys.readouterr()
    # a bad model in a ratings file: the whole file is refused, naming line and field; so is --model with --file
    ratings.write_text(json.dumps({"request_id": "r1", "quality": 1.0}) + "\n"
                       + json.dumps({"request_id": "r1", "quality": 1.0, "model": ""}) + "\n")
    assert main(["feedback", "--log", str(log), "--file", str(ratings)]) == 1
    assert f"{ratings}:2: field 'model'" in capsys.readouterr().err
    assert main(["feedback", "--log", str(log), "--file", str(ratings), "--model", "pro"]) == 2  # bad usage
    assert "not both" in capsys.readouterr().err
    assert len(log.read_text().splitlines()) == 3


# --- a log mixing ordinary and cascade lines --------------------------------------------------------

def test_a_log_mixing_ordinary_and_cascade_lines_inspects_and_weighs(tmp_path, capsys):
    log = write_log(
        tmp_path / "d.jsonl",
        decision("n1", "flash"), decision("n2", "pro", propensity=0.5), decision("n3", "flash", propensity=0.25),
        cascade("c1", [FLASH, PRO]), cascade("c2", [FLASH]), cascade("c3", [FLASH, FAILED], answered=0),
        cascade("c4", [FLASH, PRO]),
        *(feedback_record(r, quality=1.0) for r in ("n1", "n2", "n3", "c2", "c3")),
        feedback_record("c1", quality=0.0, model="flash"), feedback_record("c1", quality=1.0),
        feedback_record("c4", quality=1.0))  # only the escalation rated: rejected (propensity)
    assert main(["data", "inspect", log, "--json", "--on-error", "quarantine",
                 "--quarantine", str(tmp_path / "q.jsonl")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["records"], info["rejected"], info["outcomes"], info["format"]) == (6, 1, 7, "decisions")
    # flash answered n1, n3, c1, c2, c3 (all with the propensity); pro n2 (with) and c1's escalation (without)
    assert info["coverage"] == {"flash": pytest.approx(5 / 6), "pro": pytest.approx(2 / 6)}
    assert info["propensity_coverage"] == {"flash": 1.0, "pro": 0.5}
    assert info["min_propensity"] == {"flash": 0.25, "pro": 0.5}
    assert info["responses"] == {"flash": 5, "pro": 2}
    assert [e["field"] for e in quarantined(tmp_path / "q.jsonl")] == ["propensity"]
    # strict loading stops at that line; quarantine loading trains: an escalation's cell weighs 1
    with pytest.raises(DataError, match="only escalated answers are rated"):
        load_traffic(log)
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / "q2.jsonl")
    assert report.missing_propensity == 0
    weights = propensity_loss_weights(table.propensity, clip=10.0)
    c1, pro = [r.sample_id for r in table].index("c1"), table.models.index("pro")
    assert weights[c1, pro] == 1.0 and np.isnan(table.propensity[c1, pro])
