"""The runtime's pure-Python WordPiece gives exactly the ``tokenizers`` library's ids, or declines.

Parity is checked on the real distilled static tokenizer (the one every static router ships), over
random ASCII text and handpicked edge cases; other tokenizer pipelines must be refused at load.
The Router-level checks (predictions with and without the fast path) live in ``test_runtime.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from router_ml._wordpiece import FastWordPiece


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    from training.featurizers import get_featurizer

    return get_featurizer("static").tokenizer_path  # distilled once per session (the conftest cache)


@pytest.fixture(scope="module")
def library(tokenizer_path) -> Tokenizer:
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def fast(tokenizer_path) -> FastWordPiece:
    fast = FastWordPiece.from_file(tokenizer_path)
    assert fast is not None, "the distilled static tokenizer must get the fast path, or parity is vacuous"
    return fast


def _check(fast: FastWordPiece, library: Tokenizer, text: str) -> None:
    expected = library.encode(text, add_special_tokens=False).ids
    got = fast.encode(text)
    if got is None:  # declined: only for text the library treats specially
        assert not text.isascii() or "[UNK]" in text or "[PAD]" in text, repr(text)
    else:
        assert got == expected, repr(text)
        assert fast.encode(text) == expected, repr(text)  # again, now from the word cache


HANDPICKED = [
    "", " ", "   ", "\t\n\r", "\x0b", "\x0c", "\x00", "\x7f", "\x1c\x1d\x1e\x1f",
    "a\x0bb", "a\x0cb", "a\x00b", "a\x7fb", "a\x1fb", "a\tb", "a\nb", "a\rb", "a \x0b b", "\x0bx\x0c",
    "Hello, World!!", "don't", "It's 3:45pm; ok?", "x" * 99, "x" * 100, "x" * 101, "ab" * 60,
    "supercalifragilisticexpialidocious", "antidisestablishmentarianism " * 3, "pneumonoultramicroscopic" * 5,
    "12345678901234567890", "3.14159", "1,000,000", "v2.0.1-rc3", "0x7fffffff",
    "!!!", "...", "?!?!", "#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "--flag=value", "a--b", "##ab", "## ab", "a##b",
    "  multiple   spaces  ", "tabs\tand\nnew\r\nlines", "\n\nparagraph\n\n",
    "[UNK]", "[PAD]", "x[UNK]y", "[unk]", "[pad]", "[ UNK ]", "[UN\x00K]", "[MASK]", "[CLS] hi [SEP]",
    "https://example.com/a/b?c=d&e=f#g", "user@example.com", "def f(x): return x**2  # square",
    "SELECT * FROM t WHERE id = 1;", "C++ / C# / F#", "e.g. i.e. etc.", "ALL CAPS SHOUTING", "MiXeD CaSe",
    "qzxjqzxj", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "`code`", "~~strike~~", "<b>html</b>",
]


@pytest.mark.slow
@pytest.mark.parametrize("text", HANDPICKED)
def test_handpicked_ascii_parity(fast, library, text):
    _check(fast, library, text)


WORDS = ["the", "Explain", "quicksort", "in", "Python", "unbelievably", "x", "42", "3.5", "don't", "naïve",
         "[UNK]", "[PAD]", "sqrt(2)", "e=mc^2", "C++", "##", "---", "...", "xyzzyplugh"]
PIECES = st.sampled_from(WORDS) | st.sampled_from(list(" \t\n\r\x00\x0b\x0c\x1f\x7f!?.,;:'\"()[]{}#-_/\\"))


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(text=st.text(st.characters(max_codepoint=127)))
@example(text="a\x0bb")
@example(text="[PAD]")
def test_random_ascii_parity(fast, library, text):
    _check(fast, library, text)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PIECES, max_size=40))
def test_random_wordlike_parity(fast, library, parts):
    """Real words, punctuation and control characters, so that most of the vocabulary paths are hit."""
    _check(fast, library, "".join(parts))


@pytest.mark.slow
def test_non_ascii_and_added_tokens_are_declined(fast):
    for text in ["naïve", "caf\u00e9", "\u00a0", "\u3000", "\ufffd", "\U0001F600", "你好", "x\u2019s", "a\u200bb"]:
        assert fast.encode(text) is None
    assert fast.encode("see [UNK] here") is None and fast.encode("[PAD]") is None
    assert fast.encode("[unk] is just punctuation and a word") is not None


@pytest.mark.slow
def test_long_text_parity(fast, library):
    text = " ".join(f"word{i} {'z' * (i % 130)} ({i}), " for i in range(400))
    _check(fast, library, text)


# --- what the fast path accepts -----------------------------------------------------------------

def _bpe_tokenizer(path: Path) -> Path:
    vocab = {"[UNK]": 0, "a": 1, "b": 2, "ab": 3}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")], unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_a_bpe_tokenizer_gets_no_fast_path(tmp_path):
    assert FastWordPiece.from_file(_bpe_tokenizer(tmp_path / "tokenizer.json")) is None
    assert FastWordPiece.from_file(tmp_path / "missing.json") is None
    (tmp_path / "broken.json").write_text("{not json")
    assert FastWordPiece.from_file(tmp_path / "broken.json") is None


def _bert_spec(tmp_path: Path) -> dict:
    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3, "##b": 4, "ab": 5, "!": 6}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=10))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[PAD]", "[UNK]"])
    tok.save(str(tmp_path / "bert.json"))
    return json.loads((tmp_path / "bert.json").read_text())


def test_a_tiny_bert_tokenizer_matches_and_variants_are_refused(tmp_path):
    spec = _bert_spec(tmp_path)
    fast = FastWordPiece.from_spec(spec)
    assert fast is not None
    library = Tokenizer.from_str(json.dumps(spec))
    for text in ["ab", "AB!", "abb", "ba", "abc", "a" * 10, "a" * 11, "a\x0bb", "a b", "!!", ""]:
        assert fast.encode(text) == library.encode(text, add_special_tokens=False).ids, text

    def variant(edit) -> dict:
        copy = json.loads(json.dumps(spec))
        edit(copy)
        return copy

    refused = [
        lambda s: s["normalizer"].update(lowercase=False),
        lambda s: s["normalizer"].update(clean_text=False),
        lambda s: s["normalizer"].update(strip_accents=False),
        lambda s: s.update(normalizer={"type": "Lowercase"}),
        lambda s: s.update(normalizer=None),
        lambda s: s.update(pre_tokenizer={"type": "Whitespace"}),
        lambda s: s["model"].update(continuing_subword_prefix="@@"),
        lambda s: s["model"].update(type="BPE"),
        lambda s: s["model"].update(unk_token="<unk>"),
        lambda s: s["model"]["vocab"].pop("[UNK]"),
        lambda s: s["added_tokens"][0].update(normalized=True),
        lambda s: s.update(post_processor={"type": "ByteLevel"}),
    ]
    for edit in refused:
        assert FastWordPiece.from_spec(variant(edit)) is None
    assert FastWordPiece.from_spec(variant(lambda s: s["normalizer"].update(strip_accents=True))) is not None
    assert FastWordPiece.from_spec(["not", "a", "tokenizer"]) is None


def test_the_word_cache_is_bounded(tmp_path):
    fast = FastWordPiece.from_spec(_bert_spec(tmp_path), cache_size=50, cache_word_chars=8)
    for i in range(500):
        fast.encode(f"{'ab' * (i % 7)}b {'a' * (i % 40)}")
        assert len(fast._cache) <= 50
    fast.encode("ab" * 20)
    assert "ab" * 20 not in fast._cache  # long words are computed, not kept
    assert fast.encode("ab" * 20) == [1]
