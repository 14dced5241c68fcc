"""The fixed rules that bound what a router reads of a prompt, shared by training and the runtime.

1. **Characters**: a text longer than ``max_chars`` keeps its first 3/4 and last 1/4 of ``max_chars``
   characters (joined by a newline) - this bounds tokenization time for megabyte inputs.
2. **Tokens**: a token sequence longer than ``max_tokens`` keeps its first ``head`` (default 3/4 of
   the budget) and last ``max_tokens - head`` tokens - prompts often put what decides the route
   ("Answer:", the actual question after a long context) at the end. For an encoder whose tokenizer
   wraps the text in special tokens (``[CLS] ... [SEP]``), ``max_tokens`` counts the text's tokens
   only and the two special tokens stay (:func:`clip_tokens`).
3. **Text hygiene**: lone surrogates (which no tokenizer accepts) are replaced by U+FFFD.
4. **List text**: a prompt that is exactly the Python text of a list of strings (RouterBench's files hold
   every prompt as ``str(["..."])``) is read as its last string (:func:`router_ml.messages.prompt_text`),
   before the other rules.

The default ``max_chars`` is ``32 * max_tokens``: far more characters than ``max_tokens`` tokens
of any natural text, so rule 1 only changes what rule 2 keeps for degenerate inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from router_ml.messages import prompt_text

__all__ = ["clip_chars", "clip_tokens", "default_head", "default_max_chars", "head_tail", "prepare_text", "sanitize"]


def default_head(max_tokens: int) -> int:
    """Tokens kept from the start of an over-long prompt: three quarters of the budget, rounded down."""
    return (3 * max_tokens) // 4


def default_max_chars(max_tokens: int) -> int:
    return 32 * max_tokens


def head_tail(ids: Sequence[int], *, max_tokens: int, head: int) -> list[int]:
    """Keep the first ``head`` and the last ``max_tokens - head`` ids when ``ids`` is longer than ``max_tokens``.

    >>> head_tail(list(range(10)), max_tokens=4, head=3)
    [0, 1, 2, 9]
    """
    ids = list(ids)
    if len(ids) <= max_tokens:
        return ids
    tail = max_tokens - head
    return ids[:head] + (ids[len(ids) - tail:] if tail else [])


def clip_tokens(ids: Sequence[int], *, max_tokens: int, head: int, special: bool) -> list[int]:
    """Rule 2 on a tokenizer's output: with ``special``, the first and last ids are the special tokens
    around the text (one each, as BERT-family tokenizers add them) and stay; head + tail applies to
    the ids between them. Training tokenizes encoder prompts with this and the runtime slices the
    same way, so both feed the encoder the same ids.

    >>> clip_tokens([101, 1, 2, 3, 4, 5, 102], max_tokens=3, head=2, special=True)
    [101, 1, 2, 5, 102]
    """
    ids = list(ids)
    if not special:
        return head_tail(ids, max_tokens=max_tokens, head=head)
    if len(ids) < 2:
        raise ValueError(f"expected the special tokens around the text, got {len(ids)} id(s)")
    return [ids[0], *head_tail(ids[1:-1], max_tokens=max_tokens, head=head), ids[-1]]


def prepare_text(text: str, max_chars: int) -> str:
    """Rules 4, 3 then 1: the text a router tokenizes (a list's text read as its last string, lone
    surrogates replaced, clipped to ``max_chars``)."""
    return clip_chars(sanitize(prompt_text(text) if text[:1] == "[" else text), max_chars)


def clip_chars(text: str, max_chars: int) -> str:
    """Rule 1: keep the first 3/4 and the last 1/4 of ``max_chars`` characters of an over-long text."""
    if len(text) <= max_chars:
        return text
    head = (3 * max_chars) // 4
    return text[:head] + "\n" + text[len(text) - (max_chars - head):]


def sanitize(text: str) -> str:
    """Rule 3: replace lone surrogates so that the text is valid UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
