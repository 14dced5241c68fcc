"""An exact pure-Python BERT WordPiece tokenizer for ASCII text, with a per-word cache.

Why: for a static router the model itself costs a few microseconds, and the ``tokenizers`` call
was most of the time spent routing a prompt (~60% at 64 tokens). Most of that is the fixed cost of
a library call and of building its ``Encoding`` (offsets, attention mask, words...), not the
WordPiece search itself. Prompts repeat words heavily, so a ``word -> ids`` dictionary turns
tokenization of ASCII text into one ``str.split`` plus one dictionary look-up per word.

Exactness is the contract: the ids must be the ones the ``tokenizers`` library gives, because
the router was trained on them (``training/featurizers/_static.py``). :func:`FastWordPiece.from_file`
therefore accepts only a ``tokenizer.json`` that is exactly the BERT pipeline it reproduces, and
:meth:`FastWordPiece.encode` declines (returns ``None``) any text it cannot reproduce - non-ASCII
text (Unicode whitespace, punctuation, accents, CJK, U+FFFD) and text holding an added token such
as ``[UNK]`` or ``[PAD]`` (the library matches those before normalization) - so that the caller
falls back to the library. ``tests/test_wordpiece.py`` checks parity on the real tokenizer.

What it reproduces, for ASCII text (the ``tokenizers`` Rust semantics):

* ``BertNormalizer(clean_text=True, lowercase=True)``: NUL and every control character
  (Unicode category ``C*``: 0x00-0x1F and 0x7F in ASCII) is *deleted*, except ``\\t \\n \\r``,
  which become spaces (so ``"a\\x0bb"`` is one word, ``"ab"``); then ASCII lowercase. Chinese-char
  handling and accent stripping do nothing to ASCII.
* ``BertPreTokenizer``: split on whitespace, and every ASCII punctuation character (33-47, 58-64,
  91-96, 123-126 - after cleaning, every printable non-alphanumeric) is a word of its own.
* ``WordPiece``: greedy longest-match-first with the continuation prefix; a word longer than
  ``max_input_chars_per_word`` characters, or with any remainder that matches nothing, is one unk.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FastWordPiece"]

#: ASCII control characters that clean_text deletes (\t \n \r are kept: they split words like spaces).
_CONTROL = bytes((*range(9), 11, 12, *range(14, 32), 127))
#: After cleaning and splitting on whitespace: runs of alphanumerics, and each punctuation char alone.
_PIECES = re.compile(r"[a-z0-9]+|[^a-z0-9]")
_POST_PROCESSORS = (None, "BertProcessing", "TemplateProcessing")  # add nothing without add_special_tokens
#: ``array`` typecode of the cached ids: C ``int`` (``numpy.intc``), 4 bytes on every supported platform
IDS_TYPECODE = "i"


class _WordCache(dict):
    """``word -> ids`` (packed C ints) that computes a miss with ``compute``; bounded, so input cannot grow forever.

    Only words of at most ``max_key`` characters are kept (a long run of code or base64 is rarely
    seen twice), and the whole cache is dropped when it reaches ``limit`` entries - simpler than LRU,
    needs no lock (each dict operation is atomic under the GIL), and refills within a few hundred
    prompts. The worst case is ``limit`` entries of ``max_key`` characters: a few MB.
    """

    __slots__ = ("_compute", "_limit", "_max_key")

    def __init__(self, compute: Callable[[str], bytes], limit: int, max_key: int):
        super().__init__()
        self._compute, self._limit, self._max_key = compute, limit, max_key

    def __missing__(self, word: str) -> bytes:
        ids = self._compute(word)
        if len(word) <= self._max_key:
            if len(self) >= self._limit:
                self.clear()
            self[word] = ids
        return ids


class FastWordPiece:
    """The exact ids of a BERT WordPiece ``tokenizer.json`` for ASCII text (no special tokens).

    Build it with :meth:`from_file`, which returns ``None`` for any other tokenizer. The cache keeps
    each word's ids as packed C ints, so that a prompt's ids are one ``bytes.join`` away from a numpy
    array (:meth:`encode_bytes`) - about twice as fast as building a list of Python ints and converting it.
    """

    def __init__(self, vocab: dict[str, int], *, unk_token: str, prefix: str = "##", max_input_chars: int = 100,
                 added_tokens: tuple[str, ...] = (), cache_size: int = 50_000, cache_word_chars: int = 64):
        self._vocab = vocab
        self._unk = [vocab[unk_token]]
        self._prefix = prefix
        self._max_input_chars = max_input_chars
        self._longest = max(map(len, vocab), default=1)  # no longer substring can match
        # (first character, token): a one-character ``in`` is a memchr, ~20x cheaper than a substring search
        self._added = tuple((token[0], token) for token in added_tokens)
        self._cache = _WordCache(self._word_ids, cache_size, cache_word_chars)
        self._lookup = self._cache.__getitem__

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> FastWordPiece | None:
        """The fast tokenizer for ``path``, or ``None`` unless it is exactly the supported BERT pipeline."""
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cls.from_spec(spec, **options)

    @classmethod
    def from_spec(cls, spec: Any, **options: Any) -> FastWordPiece | None:
        """Like :meth:`from_file`, from the parsed ``tokenizer.json``."""
        if not isinstance(spec, dict):
            return None
        normalizer, pre, model = spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("model")
        post, added = spec.get("post_processor"), spec.get("added_tokens") or []
        if not (isinstance(normalizer, dict) and isinstance(pre, dict) and isinstance(model, dict)):
            return None
        if (normalizer.get("type") != "BertNormalizer" or normalizer.get("clean_text") is not True
                or normalizer.get("lowercase") is not True or normalizer.get("strip_accents") not in (None, True)
                or not isinstance(normalizer.get("handle_chinese_chars", True), bool)):
            return None
        if pre != {"type": "BertPreTokenizer"}:
            return None
        if post is not None and (not isinstance(post, dict) or post.get("type") not in _POST_PROCESSORS):
            return None
        vocab, unk = model.get("vocab"), model.get("unk_token")
        max_chars = model.get("max_input_chars_per_word")
        if (model.get("type") != "WordPiece" or model.get("continuing_subword_prefix") != "##"
                or not isinstance(vocab, dict) or not isinstance(unk, str) or unk not in vocab
                or not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 0
                or set(map(type, vocab.values())) != {int}
                or not 0 <= min(vocab.values()) <= max(vocab.values()) < 2**31):
            return None
        # an added token is matched in the raw text before normalization; one matched on the
        # normalized text (normalized: true) could appear through lowercasing or control removal
        if not isinstance(added, list) or not all(
                isinstance(t, dict) and isinstance(t.get("content"), str) and t["content"]
                and t.get("normalized") is False for t in added):
            return None
        return cls(vocab, unk_token=unk, prefix="##", max_input_chars=max_chars,
                   added_tokens=tuple(t["content"] for t in added), **options)

    def encode(self, text: str) -> list[int] | None:
        """The library's ``encode(text, add_special_tokens=False).ids`` (no padding or truncation), or ``None``
        if ``text`` needs the library."""
        data = self.encode_bytes(text)
        return None if data is None else array(IDS_TYPECODE, data).tolist()

    def encode_bytes(self, text: str) -> bytes | None:
        """:meth:`encode` as packed C ints (``numpy.frombuffer(data, numpy.intc)``), or ``None``."""
        if not text.isascii():
            return None
        for first, token in self._added:
            if first in text and token in text:
                return None
        if not text.isprintable():  # \t \n \r or a control character: bytes.translate is ~3x str.translate
            text = text.encode("ascii").translate(None, _CONTROL).decode("ascii")
        return b"".join(map(self._lookup, text.split()))

    def _word_ids(self, word: str) -> bytes:
        """Ids of one whitespace-free chunk of cleaned ASCII text (punctuation split here)."""
        ids = array(IDS_TYPECODE)
        for piece in _PIECES.findall(word.lower()):
            ids.extend(self._piece_ids(piece))
        return ids.tobytes()

    def _piece_ids(self, piece: str) -> list[int]:
        """Greedy longest-match-first WordPiece of one pre-token."""
        n = len(piece)
        if n > self._max_input_chars:
            return self._unk
        vocab, prefix, longest = self._vocab, self._prefix, self._longest
        out: list[int] = []
        start = 0
        while start < n:
            end = min(n, start + longest)
            while end > start:
                found = vocab.get(piece[start:end] if start == 0 else prefix + piece[start:end])
                if found is not None:
                    break
                end -= 1
            else:
                return self._unk
            out.append(found)
            start = end
        return out
