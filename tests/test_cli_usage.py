"""The README's CLI usage block names every option each command takes, and no option it does not: the block
is where a user looks a flag up, and it had fallen behind the parsers (``evaluate --quiet``, ``cascade
evaluate --no-tracking``, ``sweep --cache-dir`` ... were missing)."""

from __future__ import annotations

import argparse
import re

from router_ml.cli import build_parser

from .conftest import ROOT

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: "[same input options]": the data-reading options every command that reads a data file shares
INPUT_OPTIONS = {"--format", "--exclude", "--prices", "--on-error", "--quarantine", "--column", "--split",
                 "--allow-pickle", "--num-proc"}
#: old spellings the README mentions beside the block (each prints a deprecation warning or is an alias)
ALIASES = {"--router", "--checkpoint"}


def usage_block() -> dict[str, set[str]]:
    """Each command of the README's CLI block and the flags its lines name (placeholders expanded)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## CLI\n\n```\n", 1)[1].split("```", 1)[0]
    named: dict[str, set[str]] = {}
    command = None
    for line in block.splitlines():
        start = re.match(r"router-ml ((?:data |cascade )?[a-z-]+)", line)
        if start:
            command = start.group(1)
        assert command is not None, line
        flags = named.setdefault(command, set())
        flags.update(FLAG.findall(line))
        if "same input options" in line:
            flags.update(INPUT_OPTIONS)
        if "exploration flags" in line:
            flags.add("exploration")
    return named


def parser_flags() -> dict[str, set[str]]:
    def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
        found = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = commands(sub, f"{prefix}{name} ")
                    found.update(nested or {f"{prefix}{name}": sub})
        return found

    return {name: {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
            for name, sub in commands(build_parser()).items()}


def test_the_readme_usage_block_names_every_option_of_every_command():
    named, real = usage_block(), parser_flags()
    assert set(named) == set(real), (set(named) ^ set(real))
    exploration = {f for f in real["serve"] if f.startswith("--explore-")}
    assert exploration
    for command, flags in named.items():
        if "exploration" in flags:
            flags = (flags - {"exploration"}) | exploration
        assert flags - real[command] - INPUT_OPTIONS == set(), (command, "named but not taken")
        assert real[command] - flags - ALIASES == set(), (command, "taken but not named")


def test_the_check_sees_a_missing_option():
    named = usage_block()
    assert "--quiet" in named["evaluate"] and "--no-tracking" in named["cascade evaluate"]
    assert "--explore-seed" not in named["route"] and "exploration" in named["route"]
