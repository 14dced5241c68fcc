"""Do two models' answers agree? A task-general signal a cascade gets for free once it has two answers.

A cascade that called a cheap model and then a second one holds two answers; when they agree, the
second is more likely right (two models rarely make the same mistake). Agreement is measured without
knowing the task:

1. **Final-answer match.** Each response's final answer is extracted by the conventions chat models
   use to end an answer - ``\\boxed{...}``, "the answer is ...", "Final answer: ...", "Answer: ...",
   "#### ..." (the *last* occurrence of any of them wins) - and normalised (case, surrounding
   punctuation and markup, an option letter like ``(B)`` reduced to ``b``, a number to its float
   value, so ``$1,250.0`` matches ``1250``). Both extracted: agreement is 1.0 or 0.0.
2. **Character-similarity fallback.** When either answer has no recognisable final answer (free text,
   a truncated chain of thought), agreement is the Jaccard similarity of the character trigrams of
   the two responses' last :data:`TAIL_CHARS` characters: a number in [0, 1] that is high only for
   near-identical endings. No embedding model: the fallback must cost microseconds at serve time and
   work offline. On MMLU-Pro's answers rule 1 decides most pairs - a final answer is found in 83%
   (Qwen1.5-72B) to 99.8% (gemini-1.5-pro) of each model's responses - so the fallback matters little
   there; it was not tuned on free-text tasks.

Pure Python (``re`` only): the serving path can apply it to two strings without the training stack.

>>> agreement("... so the answer is (B).", "Thus the answer is B")
1.0
>>> agreement("The answer is $1,250.", "The answer is 1250")
1.0
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["TAIL_CHARS", "agreement", "agreement_matrix", "final_answer"]

#: how much of a response's end the character-similarity fallback compares
TAIL_CHARS = 200

_PATTERNS = (
    re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}"),
    re.compile(r"answer is[:\s]*(.{1,80})", re.IGNORECASE),
    re.compile(r"final answer[:\s]*(.{1,80})", re.IGNORECASE),
    re.compile(r"(?:^|\n)\s*answer\s*:\s*(.{1,80})", re.IGNORECASE),
    re.compile(r"####\s*(.{1,80})"),
)
_OPTION = re.compile(r"^\(?([a-z])\)?(?:$|[\s.,:;)\]])")
_NUMBER = re.compile(r"^[-+]?\d[\d,]*(?:\.\d+)?$")
_STRIP = " \t\n.,;:!?*$`'\"()[]{}\\"


def _normalise(raw: str) -> str | None:
    text = raw.strip().splitlines()[0] if raw.strip() else ""
    text = re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r"\1", text)
    text = text.replace("$", "").strip(_STRIP).lower()
    if not text:
        return None
    option = _OPTION.match(text) or _OPTION.match(raw.strip().lower())
    if option:
        return option.group(1)
    number = text.rstrip("%").replace(" ", "")
    if _NUMBER.match(number):
        return repr(float(number.replace(",", "")))
    return " ".join(text.split())[:60]


def final_answer(response: str | None) -> str | None:
    """The normalised final answer of ``response`` (module doc, rule 1), or None when it states none.

    >>> final_answer("Let's think. 2 + 2 = 4. The answer is (D).")
    'd'
    >>> final_answer("We get \\\\boxed{12.50}") == final_answer("the answer is 12.5")
    True
    """
    if not response:
        return None
    best: tuple[int, str] | None = None
    for pattern in _PATTERNS:
        start = 0  # overlapping search: a captured tail may hold a later statement of the answer
        while (match := pattern.search(response, start)) is not None:
            if best is None or match.start() >= best[0]:
                best = (match.start(), match.group(1))
            start = match.start() + 1
    return None if best is None else _normalise(best[1])


def _trigrams(text: str) -> set[str]:
    tail = " ".join(text[-TAIL_CHARS:].lower().split())
    return {tail[i:i + 3] for i in range(max(0, len(tail) - 2))}


def _similarity(a: str, b: str) -> float:
    ga, gb = _trigrams(a), _trigrams(b)
    if not ga or not gb:
        return 0.0
    return len(ga & gb) / len(ga | gb)


def agreement(a: str | None, b: str | None, *, answers: tuple[str | None, str | None] | None = None) -> float:
    """Agreement of two responses in [0, 1] (module doc); NaN when either response is missing (None).

    ``answers`` passes already extracted :func:`final_answer` values to skip extracting them again.
    """
    if a is None or b is None:
        return float("nan")
    fa, fb = answers if answers is not None else (final_answer(a), final_answer(b))
    if fa is not None and fb is not None:
        return float(fa == fb)
    return _similarity(a, b)


def agreement_matrix(responses: Sequence[Sequence[str | None]]) -> np.ndarray:
    """``(n, m, m)`` pairwise agreement of ``responses[i][j]`` (prompt ``i``, model ``j``); NaN where a
    response is missing, 1 on the diagonal. Final answers are extracted once per response."""
    n = len(responses)
    m = len(responses[0]) if n else 0
    out = np.full((n, m, m), np.nan)
    for i, row in enumerate(responses):
        answers = [final_answer(r) for r in row]
        for j in range(m):
            if row[j] is None:
                continue
            out[i, j, j] = 1.0
            for k in range(j + 1, m):
                if row[k] is not None:
                    out[i, j, k] = out[i, k, j] = agreement(row[j], row[k], answers=(answers[j], answers[k]))
    return out
