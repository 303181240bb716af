"""The BPE trainer against a naive reference, the tie rule, chunked/parallel counting, the
`tokenizers` engine, and bad input."""

from __future__ import annotations

import gzip
import random
import re
from collections import Counter
from itertools import pairwise

import pytest
import regex

from minillama.assets import asset_path
from minillama.errors import MiniLlamaError
from minillama.tokenizer import Tokenizer, train_bpe, train_tokenizer
from minillama.tokenizer import train as train_module
from minillama.tokenizer.pretokenize import (
    GPT2_PATTERN,
    SpecialSplitter,
    count_pretokens,
    iter_chunks,
    pretokenizer,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

UNICODE_TEXT = (
    "Ünïcödé wörds: naïve café naïve café, 你好你好世界 世界, emoji 🙂🙂 🙃🙂, tabs\t\tand  spaces   here\n\n"
    "it's they're we'll I'd 123 1234 12345 ---- !!! ?!?! <|endoftext|> after special<|im_start|>x<|im_end|>\n"
)


def naive_bpe(text: str, vocab_size: int, special_tokens: list[str]):
    """Textbook BPE: recount every pair after every merge. Slow, obviously correct."""
    pieces = re.split("|".join(map(re.escape, sorted(special_tokens, key=len, reverse=True))), text) \
        if special_tokens else [text]
    counts = Counter(w for piece in pieces for w in regex.findall(GPT2_PATTERN, piece))
    words = {tuple(bytes([b]) for b in w.encode("utf-8")): n for w, n in counts.items()}
    vocab = [t.encode() for t in special_tokens] + [bytes([b]) for b in range(256)]
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for word, n in words.items():
            for pair in pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # most frequent, then greatest pair
        merges.append(best)
        if best[0] + best[1] not in vocab:
            vocab.append(best[0] + best[1])
        merged_words = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += n
        words = merged_words
    return dict(enumerate(vocab)), merges


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> tuple:
    with gzip.open(asset_path("tinystories/tinystories_valid.txt.gz"), "rt", encoding="utf-8") as f:
        text = f.read()[:12_000] + UNICODE_TEXT * 3
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path, text


def test_matches_naive_reference(small_corpus):
    path, text = small_corpus
    vocab, merges = train_bpe(path, 600, SPECIALS)
    ref_vocab, ref_merges = naive_bpe(text, 600, SPECIALS)
    assert merges == ref_merges
    assert vocab == ref_vocab
    assert len(vocab) == 600


def test_vocab_layout_and_special_tokens_never_merged(small_corpus):
    path, _ = small_corpus
    vocab, merges = train_bpe(path, 400, SPECIALS)
    assert [vocab[i] for i in range(3)] == [s.encode() for s in SPECIALS]
    assert [vocab[3 + b] for b in range(256)] == [bytes([b]) for b in range(256)]
    assert [vocab[259 + i] for i in range(len(merges))] == [a + b for a, b in merges]
    assert not any(b"<|" in a + b for a, b in merges)  # never learned across a special token's pieces


def test_tie_rule_hand_checked(tmp_path):
    # Every pair occurs once: (b"y", b"x") is the lexicographically greatest of
    # (b"x", b"y"), (b" ", b"y"), (b"y", b"x").
    path = tmp_path / "ties.txt"
    path.write_text("xy yx")
    _, merges = train_bpe(path, 257, [])
    assert merges == [(b"y", b"x")]
    # A prefix sorts before its extensions: (b"ab", b"c") > (b"a", b"bc") as pairs of byte strings.
    words = {b"ab": 10, b"abc": 1, b"bc": 10, b"zabc": 1}
    merges = train_module._learn_merges(words, 4)
    assert merges[:2] == [(b"b", b"c"), (b"a", b"b")]  # 12 vs 12: (b"b", b"c") is greater
    assert merges == naive_merges(words, 4)


def naive_merges(words: dict[bytes, int], num_merges: int):
    text_words = {tuple(bytes([b]) for b in w): n for w, n in words.items()}
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, n in text_words.items():
            for pair in pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        new = {}
        for word, n in text_words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + n
        text_words = new
    return merges


def test_repeated_symbols_and_overlapping_pairs():
    words = {b"aaaa": 5, b"aaa": 3, b"abab": 4, b"aabaab": 2, b"bbbbbbb": 1, b" a": 7}
    assert train_module._learn_merges(words, 12) == naive_merges(words, 12)


def test_chunking_never_changes_the_counts(small_corpus):
    _, text = small_corpus
    text = text + "  \n\n  trailing spaces and\t\ttabs \u3000\u00a0 end"
    splitter = SpecialSplitter(SPECIALS)
    whole = count_pretokens(text, SPECIALS)
    for chunk_chars in (7, 50, 333):
        total: Counter = Counter()
        pieces = list(_chunks_of(text, splitter, chunk_chars))
        assert "".join(pieces) == text and len(pieces) > 5
        for piece in pieces:
            total.update(count_pretokens(piece, SPECIALS))
        assert total == whole


def _chunks_of(text, splitter, chunk_chars):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.txt"
        path.write_text(text, encoding="utf-8")
        yield from iter_chunks([path], splitter, chunk_chars)


def test_safe_cut_respects_special_tokens():
    splitter = SpecialSplitter(["<|endoftext|>", "<|end"])
    assert splitter.safe_cut("abc def<|endoftext|>xyz" + "y" * 20) == len("abc def<|endoftext|>")
    # A special token near the end may still grow into a longer one: no cut inside or after it.
    assert splitter.safe_cut("abc<|end") == 0
    assert splitter.safe_cut("ab cd" + "e" * 20) == 2
    assert SpecialSplitter([]).safe_cut("word \n") == 4


def test_ascii_fast_path_matches_unicode_pattern():
    """ASCII stretches go through an equivalent `re` pattern; the result must not change."""
    slow = regex.compile(GPT2_PATTERN).findall
    fast = pretokenizer(GPT2_PATTERN)
    samples = ["".join(chr(c) for c in range(128)) * 3, "a  b\t\t c\x1c\x1d d\n\n e's 12ab", "x\x0b\x0c y  "]
    for text in samples:
        assert text.isascii() and fast(text) == slow(text)
    rng = random.Random(0)
    alphabet = [*"ab cd\n\t  '.,!01sé中🙂\u3000\xa0\u0301\x85\x1c", "'ll", "'s", "\n\n", "ab c", "  \u3000 "]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        assert fast(text) == slow(text), repr(text)


def test_parallel_equals_serial(small_corpus, monkeypatch, tmp_path):
    path, text = small_corpus
    gz = tmp_path / "small.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(text)
    serial = train_bpe([path, path], 500, SPECIALS, workers=1)
    monkeypatch.setattr(train_module, "_PARALLEL_MIN_BYTES", 0)
    assert train_bpe([path, gz], 500, SPECIALS, workers=2) == serial


def test_tokenizers_engine_same_format(small_corpus):
    pytest.importorskip("tokenizers")
    path, _ = small_corpus
    vocab, merges = train_bpe(path, 500, SPECIALS, engine="tokenizers")
    ours_vocab, ours_merges = train_bpe(path, 500, SPECIALS)
    assert len(vocab) == 500 and [vocab[i] for i in range(259)] == [ours_vocab[i] for i in range(259)]
    assert not any(b"<|" in a + b for a, b in merges)
    # Same counts, so the same merges up to the order of tied pairs.
    assert merges[:10] == ours_merges[:10]
    assert len(set(merges) & set(ours_merges)) > 0.9 * len(merges)
    Tokenizer(vocab, merges, SPECIALS)  # a consistent vocab


def test_bad_input(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    only_special = tmp_path / "special.txt"
    only_special.write_text("<|endoftext|><|endoftext|>")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    broken_gz = tmp_path / "broken.txt.gz"
    broken_gz.write_bytes(gzip.compress(b"hello world " * 100)[:40])
    cases = [
        (dict(inputs=empty), MiniLlamaError, "no text"),
        (dict(inputs=only_special), MiniLlamaError, "no text"),
        (dict(inputs=tmp_path / "missing.txt"), FileNotFoundError, "not found"),
        (dict(inputs=tmp_path), MiniLlamaError, "not a regular file"),
        (dict(inputs=latin1), MiniLlamaError, "not valid UTF-8 .*offset 3"),
        (dict(inputs=broken_gz), MiniLlamaError, "cannot read"),
        (dict(inputs=[], vocab_size=300), ValueError, "no input files"),
        (dict(inputs=empty, vocab_size=258), ValueError, "too small.*259"),
        (dict(inputs=empty, engine="sentencepiece"), ValueError, "unknown engine"),
        (dict(inputs=empty, special_tokens=["x"]), ValueError, "single byte"),
        (dict(inputs=empty, special_tokens=[""]), ValueError, "non-empty"),
    ]
    for kwargs, error, message in cases:
        kwargs = {"vocab_size": 300, "special_tokens": SPECIALS, **kwargs}
        with pytest.raises(error, match=message):
            train_tokenizer(out_dir=out, **kwargs)
        assert not out.exists()
        assert list(tmp_path.glob(".out*")) == []  # no half-written temporary directory either
    # A replacement instead of an error, when asked for.
    vocab, _ = train_bpe(latin1, 260, [], errors="replace")
    assert len(vocab) == 260


def test_failed_retrain_keeps_the_old_directory(small_corpus, tmp_path):
    path, _ = small_corpus
    out = tmp_path / "tok"
    first = train_tokenizer(path, 300, SPECIALS, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileNotFoundError):
        train_tokenizer(tmp_path / "missing.txt", 300, SPECIALS, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert Tokenizer.from_pretrained(out).fingerprint() == first.fingerprint()


def test_too_little_text_stops_early(tmp_path, caplog):
    path = tmp_path / "tiny.txt"
    path.write_text("ab ab")
    vocab, merges = train_bpe(path, 400, [])
    assert merges == [(b"a", b"b"), (b" ", b"ab")] and len(vocab) == 258
    assert "allows only 2 merges" in caplog.text
