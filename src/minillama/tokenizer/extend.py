"""Vocabulary extension: teach a trained byte-level BPE a new language without moving an old id.

The recipe (used when Chinese tokens were added to LLaMA; docs/tokenizer.md walks through it):
1. Cut the new corpus into pre-tokens exactly as the old tokenizer does and encode each with the
   old tokenizer: that is where the old merges leave the new text (for Chinese, mostly single
   UTF-8 bytes, three per character).
2. Continue BPE training from there (`train.merge_words`): the most frequent adjacent pair is
   merged into a new token, repeatedly, so new tokens build on old ones.
3. Append: the new tokens get ids after the last old one and the new merges ranks after the last
   old merge. Every old token keeps its id and every old merge its rank.

Two vetoes keep the old language's ids exactly as they were:
- a pair whose concatenation is already a token is never merged (it would re-create an old token
  in places where the old tokenizer did not make it, and old merges could then fire after new
  ones); such tokens are simply not added again;
- by default a new token must contain a non-ASCII byte. Encoding applies merges lowest rank first,
  so new merges only act on what the old merges leave; a new merge of ASCII pieces (the corpus's
  "Tom", "CD", digits) would change how English text is split. With the veto, any ASCII text
  encodes to exactly the old ids (`allow_ascii=True` lifts it).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from minillama.errors import MiniLlamaError
from minillama.files import check_output
from minillama.tokenizer.pretokenize import SpecialSplitter, as_path_list, iter_chunks
from minillama.tokenizer.tokenizer import Tokenizer
from minillama.tokenizer.train import merge_words

log = logging.getLogger(__name__)

_CHUNK_CHARS = 1 << 20


def count_words(tokenizer: Tokenizer, paths: Iterable[Path], errors: str = "strict") -> Counter[str]:
    """How often each pre-token of the files occurs, cut as `tokenizer` cuts text (its special
    tokens split out, its normalizer and pre-tokenizer pattern applied)."""
    counts: Counter[str] = Counter()
    paths = list(paths)
    for chunk in iter_chunks(paths, SpecialSplitter(list(tokenizer._added)), _CHUNK_CHARS, errors=errors):
        for piece, is_special in tokenizer._splitter.parts(chunk):
            if is_special or not piece:
                continue
            if tokenizer._normalizer:
                piece = unicodedata.normalize(tokenizer._normalizer, piece)
            counts.update(tokenizer._pretokenize(piece))
    if not counts:
        raise MiniLlamaError(f"no text to learn from in {', '.join(map(str, paths))} (empty, or only special tokens)")
    return counts


def extend_merges(tokenizer: Tokenizer, inputs: str | os.PathLike | Iterable[str | os.PathLike], add: int, *,
                  allow_ascii: bool = False, progress: bool = False, errors: str = "strict"
                  ) -> list[tuple[bytes, bytes]]:
    """New merges (byte pairs, in rank order) learned on `inputs` starting from `tokenizer`'s
    vocabulary and merges; they add at most `add` tokens, none of which `tokenizer` has."""
    if add < 1:
        raise MiniLlamaError(f"--add must be at least 1 (tokens to add), not {add}")
    counts = count_words(tokenizer, as_path_list(inputs), errors)
    # Ids index `token_bytes`; unused ids (gaps) hold b"", which no pair ever involves.
    token_bytes = [b if b is not None else b"" for b in tokenizer._id_bytes]
    existing = set(tokenizer._bytes_to_id) | {t.encode("utf-8") for t in tokenizer._added}
    words = [tokenizer._bpe(word) for word in counts]

    def allowed(left: bytes, right: bytes) -> bool:
        token = left + right
        return token not in existing and (allow_ascii or not token.isascii())

    return merge_words(words, list(counts.values()), token_bytes, add, allowed=allowed, progress=progress)


def extended_tokenizer(tokenizer: Tokenizer, new_merges: list[tuple[bytes, bytes]]) -> Tokenizer:
    """`tokenizer` with `new_merges` appended (ranks after the old ones) and their new tokens
    appended (ids after the old ones), in merge order; special tokens, pattern, normalizer and
    configuration unchanged."""
    model_vocab = dict(tokenizer._model_vocab)
    known = set(tokenizer._bytes_to_id)
    next_id = tokenizer.vocab_size
    for a, b in new_merges:
        if a + b not in known:
            known.add(a + b)
            model_vocab[next_id] = a + b
            next_id += 1
    extended = Tokenizer.__new__(Tokenizer)
    extended._setup(model_vocab, tokenizer.merges + list(new_merges), dict(tokenizer._added),
                    dict(tokenizer._special), tokenizer._pattern, tokenizer._normalizer, tokenizer._ignore_merges)
    extended._configure(tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token,
                        tokenizer.model_max_length, tokenizer.chat_template)
    return extended


def extend_tokenizer(tokenizer_dir: str | os.PathLike, inputs: str | os.PathLike | Iterable[str | os.PathLike],
                     add: int, out_dir: str | os.PathLike | None = None, *, allow_ascii: bool = False,
                     overwrite: bool = False, progress: bool = False, utf8_errors: str = "strict") -> Tokenizer:
    """Load the tokenizer in `tokenizer_dir`, learn up to `add` new tokens on `inputs` (text files,
    plain or .gz) and, if `out_dir` is given, save the extended tokenizer there (atomically; new,
    empty or an earlier tokenizer directory, never an input). Raises `MiniLlamaError` before
    writing anything when `add` < 1, the tokenizer is no byte-level BPE, or the corpus yields no
    new token."""
    from minillama.files import atomic_directory

    if add < 1:
        raise MiniLlamaError(f"--add must be at least 1 (tokens to add), not {add}")
    paths = as_path_list(inputs)
    for path in paths:
        if not path.is_file():
            raise MiniLlamaError(f"no such corpus file: {path}")
    inputs_guarded = [*paths, tokenizer_dir]
    if out_dir is not None:
        check_output(out_dir, "tokenizer", overwrite=overwrite, inputs=inputs_guarded)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    merges = extend_merges(tokenizer, paths, add, allow_ascii=allow_ascii, progress=progress, errors=utf8_errors)
    extended = extended_tokenizer(tokenizer, merges)
    added = extended.vocab_size - tokenizer.vocab_size
    if added == 0:
        raise MiniLlamaError(f"{', '.join(map(str, paths))} yields no token the tokenizer lacks: every frequent "
                             "pair is already a token" + ("" if allow_ascii else " or pure ASCII (--allow-ascii)"))
    if added < add:
        log.warning("the corpus allows only %d new tokens, not %d", added, add)
    log.info("extended %d -> %d tokens (%d new merges)", tokenizer.vocab_size, extended.vocab_size, len(merges))
    if out_dir is not None:
        with atomic_directory(out_dir, "tokenizer", overwrite=overwrite, inputs=inputs_guarded) as tmp:
            extended.save_pretrained(tmp)
    return extended


def old_spellings(tokenizer: Tokenizer, old_vocab_size: int) -> dict[int, list[int]]:
    """For every token id >= `old_vocab_size`: the ids < `old_vocab_size` it is made of, following
    the (first) merge that made it down to old tokens. For a tokenizer made by `extend_tokenizer`
    that is how the old tokenizer spelled the token's bytes where the new merges were learned."""
    made_by: dict[bytes, tuple[bytes, bytes]] = {}
    for a, b in tokenizer.merges:
        made_by.setdefault(a + b, (a, b))
    ids = tokenizer._bytes_to_id

    def spell(token: bytes) -> list[int]:
        if ids[token] < old_vocab_size:
            return [ids[token]]
        a, b = made_by[token]
        return spell(a) + spell(b)

    return {i: spell(tokenizer.id_to_bytes(i)) for i in range(old_vocab_size, tokenizer.vocab_size)}


def check_extends(old: Tokenizer, new: Tokenizer) -> None:
    """Raise `MiniLlamaError` unless `new` keeps every id, special token and merge rank of `old`
    and only appends."""
    if new.vocab_size <= old.vocab_size:
        raise MiniLlamaError(f"the tokenizer has {new.vocab_size} tokens, no more than the model's {old.vocab_size}: "
                             "it does not extend the model's tokenizer (make one with `minillama tokenizer extend`)")
    changed = next((i for i, b in old.vocab.items() if new.vocab.get(i) != b), None)
    if changed is not None:
        raise MiniLlamaError(f"token id {changed} is {old.vocab[changed]!r} for the model but "
                             f"{new.vocab.get(changed)!r} in the tokenizer: it does not extend the model's tokenizer")
    if new.merges[:len(old.merges)] != old.merges:
        raise MiniLlamaError("the tokenizer's merges do not start with the model's: it does not extend the "
                             "model's tokenizer (make one with `minillama tokenizer extend`)")
