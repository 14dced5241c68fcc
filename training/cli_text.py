"""What the training commands print for people: score tables, the default knob's point, warnings on
stderr and the one-line summaries of ``train`` and ``data inspect`` (``--json`` prints the same figures
as one object instead; :mod:`training.cli` builds the parser and runs the commands)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["fmt", "paired", "print_artifacts", "print_default_knob", "print_inspect", "print_scores",
           "print_train_summary", "seen_note", "warn_sets", "warn_thin"]


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_inspect(table: Any, report: Any, summary: dict[str, Any]) -> None:
    """``data inspect`` without ``--json``: the load report and one line per model."""
    print(f"{report.source}  ({report.format})")
    lacking = f" ({report.missing_propensity} lacking a propensity)" if report.missing_propensity else ""
    print(f"  records: {summary['records']}   rejected: {report.rejected}{lacking}   excluded: {report.excluded}"
          f"   merged duplicates: {report.merged_duplicates}")
    print(f"  outcomes: {summary['outcomes']}   preferences: {summary['preferences']}   "
          f"chat records: {summary['chat_records']}   tasks: {summary['tasks']}")
    if report.quarantine:
        print(f"  quarantine: {report.quarantine}")
    if report.ignored_columns:
        print(f"  ignored columns: {', '.join(report.ignored_columns)}")
    if report.metadata_columns:  # where a quality column without its M|total_cost companion would show
        print(f"  metadata columns (no 'M|total_cost' beside them, so not models): "
              f"{', '.join(report.metadata_columns)}")
    if report.models_without_outcomes:
        print(f"  model columns without an outcome in any kept record (not in the table): "
              f"{', '.join(report.models_without_outcomes)}")
    width = max(len(m) for m in table.models)
    logged = any(summary["propensity_coverage"].values())  # propensity columns only for logged traffic
    answers = any(summary["responses"].values())  # a responses column only where answer texts were recorded
    print(f"\n  {'model':<{width}}  coverage  mean quality  mean cost (USD)"
          + ("  propensity coverage  min propensity" if logged else "") + ("  responses" if answers else ""))
    for m in table.models:
        print(f"  {m:<{width}}  {summary['coverage'][m]:>8.3f}  {fmt(summary['mean_quality'][m], '>12.4f')}"
              f"  {fmt(summary['mean_cost'][m], '>15.3e')}"
              + (f"  {summary['propensity_coverage'][m]:>19.3f}  {fmt(summary['min_propensity'][m], '>14.4f')}"
                 if logged else "") + (f"  {summary['responses'][m]:>9}" if answers else ""))
    print(f"\n  fingerprint: {summary['fingerprint']}")


def print_train_summary(summary: dict[str, Any]) -> None:
    """``train``'s lines on stderr: what was trained, the paired differences to the baselines (and to the head
    a distilled router replaced) and how the test figures were estimated."""
    test = summary["test"]
    print(f"router-ml: {summary['router']} trained on {summary['train_records']} records in "
          f"{summary['fit_seconds']} s; test AIQ {fmt(test.get('aiq'), '.4f')}, best quality "
          f"{fmt(test.get('best_quality'), '.4f')}; saved to {summary['out']}"
          + (f"; MLflow run {summary['run_id']}" if summary["run_id"] else "; MLflow: not logged"),
          file=sys.stderr)
    for name, diff in test.get("vs_baselines", {}).items():
        if diff.get("aiq") is None and diff.get("best_quality") is not None:  # every model costs the same
            print(f"router-ml: best quality minus the {name} baseline's (every model costs the same: no AIQ): "
                  f"{paired(diff, 'best_quality')}", file=sys.stderr)
        else:
            print(f"router-ml: AIQ minus the {name} baseline's: {paired(diff, 'aiq')}", file=sys.stderr)
    replaced = test.get("distilled_from")
    if replaced is not None:  # router.distill: the student against the head it replaced, same prompts
        kept = summary["selection"]["distilled"].get("kept_lexical_blend")
        into = "one MLP" if kept is None else f"one MLP under the lexical blend x {kept:g}"
        print(f"router-ml: distilled into {into}; AIQ minus the replaced head's "
              f"({summary['selection']['chosen']}, AIQ {replaced['aiq']:.4f}): "
              f"{paired(replaced['student_minus_replaced'], 'aiq')}", file=sys.stderr)
    if test.get("estimator", "exact") != "exact":  # a log, or too few test records with every outcome
        how = ("exposure weights: biased wherever which outcome is missing depended on the prompt"
               if test.get("off_policy", {}).get("biased") else "the logged propensities")
        print(f"router-ml: the test figures are off-policy estimates ({test['estimator'].upper()} over "
              f"the test split's {summary['test_scored']} records, some outcomes missing; {how})", file=sys.stderr)
        warn_thin(test)


def paired(diff: dict[str, Any], key: str) -> str:
    """``+0.0019 (95% paired interval +0.0002 to +0.0036)`` and what the interval says."""
    value = diff.get(key)
    if value is None:
        return "n/a"
    low, high = diff.get("ci95", {}).get(key, (None, None))
    if low is None:
        return f"{value:+.4f}"
    verdict = "above" if low > 0 else "below" if high < 0 else "within the noise of the test set"
    return f"{value:+.4f} (95% paired interval {low:+.4f} to {high:+.4f}: {verdict})"


def print_scores(title: str, test: dict[str, Any]) -> None:
    print(title)
    rows = [("router", test)] + list(test["baselines"].items())
    two_model = test.get("apgr") is not None
    print(f"  {'':<12} {'AIQ':>8} {'savings@iso':>12} {'best quality':>13}" + (f" {'APGR':>7} {'CPT50':>7}"
                                                                                 if two_model else ""))
    for name, values in rows:
        savings = fmt(values.get("savings_at_iso_quality"), ">12.3f")
        line = f"  {name:<12} {fmt(values.get('aiq'), '>8.4f')} {savings} {fmt(values.get('best_quality'), '>13.4f')}"
        if two_model:
            cpt = values.get("cpt_50")
            line += f" {fmt(values.get('apgr'), '>7.3f')} {fmt(None if cpt is None else 100 * cpt, '>6.1f')}%"
        print(line)


def print_artifacts(result: dict[str, Any]) -> None:
    """The exported artifacts' numbers beside the checkpoint's (``evaluate --artifact``)."""
    for art in result.get("artifacts", ()):
        test = art["test"]
        print(f"  artifact {art['artifact']} ({art['quantization'] or 'fp32'}): AIQ {fmt(test.get('aiq'), '.4f')}, "
              f"best quality {fmt(test.get('best_quality'), '.4f')}"
              + (f", APGR {test['apgr']:.3f}" if test.get("apgr") is not None else "")
              + f"; routes changed at its knob: {100 * art['changed_routes']:.2f}%, "
              f"max |score diff| {art['max_abs_diff']:.2e}")


def print_default_knob(result: dict[str, Any]) -> None:
    """The router's point at the knob it ships with, and any warning about the estimate, for people."""
    knob = result["default_knob"]
    ci = knob.get("ci95", {})

    def band(key: str, spec: str) -> str:
        low, high = ci.get(key, (None, None))
        return "" if low is None else f" [{format(low, spec)}, {format(high, spec)}]"

    wtp = "inf" if knob["willingness_to_pay"] is None else format(knob["willingness_to_pay"], ".4g")
    top = ", ".join(f"{m} {100 * share:.1f}%" for m, share in list(knob["models"].items())[:3])
    ess = f"; ESS {knob['effective_sample_size']:.0f}" if "effective_sample_size" in knob else ""
    print(f"  default knob (willingness to pay {wtp} USD/quality, {knob['estimator']}): quality "
          f"{fmt(knob['quality'], '.4f')}{band('quality', '.4f')}, cost {knob['cost']:.3e}{band('cost', '.3e')} USD"
          f"{ess}; routes {top}")


def warn_sets(result: dict[str, Any]) -> None:
    for one in result["sets"]:
        if one.get("warning"):
            print(f"router-ml: warning: {one['warning']}", file=sys.stderr)
        warn_thin(one.get("test") or {})


def warn_thin(test: dict[str, Any]) -> None:
    """Say when an off-policy curve rests on few effective prompts per knob value (``off_policy.thin_curve``)."""
    off = test.get("off_policy") or {}
    if off.get("thin_curve"):
        print(f"router-ml: warning: the off-policy curve rests on a median of "
              f"{off['effective_sample_size']['median']:.0f} effective prompts per knob value, so its AIQ and best "
              "quality (maxima over noisy points) read high; the default knob's estimate and its interval are the "
              "figures to trust, or score the router on records with every outcome", file=sys.stderr)


def seen_note(result: dict[str, Any]) -> str:
    if result["seen_prompts"] == "dropped":
        return f"{result['dropped_seen']} seen in training dropped"
    return "training prompts " + result["seen_prompts"].split(";")[0]
