"""What an answer scorer reads of a (prompt, response) pair: cheap answer features and token ids.

One definition for training (``training/cascade``) and the runtime (:mod:`router_ml.scorer`), so an
exported scorer sees exactly the inputs it was trained on. Numpy, ``re`` and ``tokenizers`` only.

The answer features are cheap signals of a wrong answer that token embeddings average away: how
long the answer is, whether it states a final answer ("The answer is (C)") and whether it stated
more than one, where the chosen option sits among the prompt's options (``A. ...`` lines) and how
long that option is against the others, the share of digits, and hedging words ("closest",
"approximately", "wait", ...). On the MMLU-Pro responses they lift a per-model logistic regression
over prompt + response embeddings by 0.01-0.04 validation AUC (README, "Answer scorer"). A prompt
without lettered options or an answer without a final statement gets the neutral values (-1, 0),
so the features stay defined on any benchmark's outputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_ml._wordpiece import FastWordPiece
from router_ml.truncation import head_tail, prepare_text

__all__ = ["ANSWER_FEATURES", "ANSWER_FEATURES_VERSION", "TextTokens", "answer_feature_matrix", "answer_features",
           "pair_ids"]

#: bumped whenever a feature's definition changes: the manifest records it and loading checks it
ANSWER_FEATURES_VERSION = 1
_HEDGES = ("closest", "approximately", "however", "but ", "wait", "not ", "none of", "assum", "recheck",
           "re-evaluate", "mistake", "neither", "cannot", "unclear", "likely")
#: the feature names, in the order of :func:`answer_features`' values
ANSWER_FEATURES: tuple[str, ...] = (
    "log_chars", "log_words", "states_answer", "answers_stated", "answer_changed", "answer_position",
    "options", "short", "option_length_rank", "answer_is_option", "digit_share", "lines", "ends_with_answer",
    *(f"hedge:{h.strip()}" for h in _HEDGES))
_ANSWER = re.compile(r"(?i:answer is):?\s*\(?\**\s*([A-J])\b")
_OPTION = re.compile(r"^([A-J])\. (.*)$", re.M)


def answer_features(prompt: str, response: str) -> list[float]:
    """The :data:`ANSWER_FEATURES` of one answer, as Python floats.

    >>> answer_features("Q?\\nA. yes\\nB. no\\nAnswer:", "The answer is (B).")[:3]
    [2.944438979166440..., 1.6094379124341003, 1.0]
    """
    options = dict(_OPTION.findall(prompt))
    stated = _ANSWER.findall(response)
    letter = stated[-1] if stated else None
    n = max(len(options), 1)
    low = response.lower()
    lengths = sorted((len(v) for v in options.values()), reverse=True)
    in_options = letter is not None and letter in options
    rank = lengths.index(len(options[letter])) / n if in_options else 1.0
    end = response.rstrip()
    values = [math.log1p(len(response)), math.log1p(len(response.split())), float(bool(stated)),
              float(len(set(stated))), float(len(set(stated)) > 1),
              (ord(letter) - 65) / n if letter else -1.0, len(options) / 10, float(len(response) < 40), rank,
              float(in_options), sum(c.isdigit() for c in response) / (len(response) + 1), response.count("\n") / 10,
              float(end.endswith((")", ").")))]
    return values + [float(h in low) for h in _HEDGES]


def answer_feature_matrix(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """``(n, len(ANSWER_FEATURES))`` float32 features of ``n`` (prompt, response) pairs."""
    out = np.zeros((len(prompts), len(ANSWER_FEATURES)), dtype=np.float32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        out[i] = answer_features(p, r)
    return out


def pair_ids(prompt: Sequence[int], response: Sequence[int], *, max_length: int, prompt_tokens: int,
             cls_id: int, sep_id: int) -> list[int]:
    """A cross-encoder's ``[CLS] prompt [SEP] response [SEP]`` within ``max_length`` ids.

    When the pair is too long, the prompt keeps at most ``prompt_tokens`` (its head and tail, the
    options sit at its end) or more when the response is short, and the response keeps its END: a
    chain of thought states its final answer last.

    >>> pair_ids([1, 2, 3], [4, 5, 6, 7], max_length=7, prompt_tokens=2, cls_id=0, sep_id=9)
    [0, 1, 3, 9, 6, 7, 9]
    """
    room = max_length - 3
    p_keep = min(len(prompt), max(prompt_tokens, room - len(response)))
    r_keep = min(len(response), room - p_keep)
    kept = head_tail(list(prompt), max_tokens=p_keep, head=(p_keep + 1) // 2)
    tail = list(response)[len(response) - r_keep:] if r_keep else []
    return [cls_id, *kept, sep_id, *tail, sep_id]


class TextTokens:
    """A ``tokenizer.json`` applied without special tokens, padding or truncation: ids with ``drop_ids``
    removed, then head + tail clipped (``max_tokens``, ``head``). ASCII text takes the exact pure-Python
    WordPiece where the file is exactly BERT's (:mod:`router_ml._wordpiece`), as the router does."""

    def __init__(self, path: str | Path, *, drop_ids: Sequence[int] = (), max_chars: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._fast = FastWordPiece.from_file(path)
        self._drop = {int(i) for i in drop_ids}
        self.max_chars = max_chars

    def ids(self, text: str, *, max_tokens: int | None = None, head: int = 0) -> list[int]:
        """The ids of ``text`` (clipped to ``max_chars`` characters first), clipped to ``max_tokens``
        ids keeping the first ``head`` and the rest from the end; ``max_tokens=None`` keeps all."""
        text = prepare_text(text, self.max_chars)
        data = self._fast.encode_bytes(text) if self._fast is not None else None
        if data is not None:
            ids = np.frombuffer(data, dtype=np.intc).tolist()
        else:
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if self._drop:
            ids = [i for i in ids if i not in self._drop]
        return ids if max_tokens is None else head_tail(ids, max_tokens=max_tokens, head=head)

    def token_id(self, token: str) -> int:
        found = self._tokenizer.token_to_id(token)
        if found is None:
            raise KeyError(f"the tokenizer has no {token!r} token")
        return int(found)
