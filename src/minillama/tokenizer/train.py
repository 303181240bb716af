"""Training a byte-level BPE: count pre-tokens in parallel, then merge the most frequent pair.

The algorithm (docs/tokenizer.md walks through it):
1. Split the text at special tokens, cut each piece into pre-tokens with the GPT-2 regex and count
   the distinct pre-tokens (a few thousand distinct words stand for millions of running words).
2. Each pre-token starts as its sequence of bytes. Count every adjacent pair, weighted by how
   often the word occurs.
3. Merge the most frequent pair (ties: the lexicographically greatest pair of byte strings) into a
   new token, everywhere it occurs; repeat until the vocabulary is full.

Step 3 is fast because only the words that contain the merged pair are touched (an inverted index
from pair to words), and because the best pair comes off a heap with lazy deletion: an entry whose
count has gone stale is re-pushed with its current count when it reaches the top. Counts only go
down, except for pairs containing the token just made, which are pushed after each merge.
"""

from __future__ import annotations

import heapq
import logging
import multiprocessing
import os
import sys
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from pathlib import Path

from minillama.errors import MiniLlamaError
from minillama.hardware import available_cpus
from minillama.progress import progress_bar
from minillama.tokenizer.pretokenize import (
    SpecialSplitter,
    as_path_list,
    count_pretokens,
    estimated_text_bytes,
    iter_chunks,
)

log = logging.getLogger(__name__)

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENGINES = ("minillama", "tokenizers")

# Below this much text one process is faster than starting a pool.
_PARALLEL_MIN_BYTES = 1 << 20

# Tie keys: a string that sorts in the opposite order of the token's bytes, so that a min-heap
# yields the lexicographically greatest pair first. Byte x becomes chr(0x1FF - x); the terminator
# chr(0x200) sorts after every byte, which puts a prefix after its extensions.
_REVERSE_BYTES = str.maketrans({chr(b): chr(0x1FF - b) for b in range(256)})


def _reverse_key(token: bytes) -> str:
    return token.decode("latin-1").translate(_REVERSE_BYTES) + "\u0200"


def train_bpe(
    input_path: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int,
    special_tokens: Sequence[str],
    *,
    engine: str = "minillama",
    workers: int | None = None,
    progress: bool = False,
    errors: str = "strict",
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE on UTF-8 text files (plain or .gz; one path or a list).

    Returns `(vocab, merges)`: `vocab` maps id -> token bytes (special tokens first, then the 256
    single bytes, then one token per merge in merge order) and `merges` lists the merged pairs in
    the order they were learned. `engine="tokenizers"` runs the `tokenizers` library's trainer on
    the same pre-tokens (same output format; its ties are broken differently).
    """
    specials = _check_special_tokens(special_tokens)
    min_size = 256 + len(specials)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size {vocab_size} is too small: it must be at least 256 (bytes) + "
                         f"{len(specials)} (special tokens) = {min_size}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    paths = as_path_list(input_path)
    num_merges = vocab_size - min_size
    if engine == "tokenizers":
        merges = _train_with_tokenizers(paths, specials, num_merges, progress, errors)
    else:
        words = _count_words(paths, specials, workers, progress, errors)
        merges = _learn_merges(words, num_merges, progress)
    vocab = _build_vocab(specials, merges)
    if len(vocab) < vocab_size:
        log.warning("the input allows only %d merges: the vocabulary has %d tokens, not %d",
                    len(vocab) - min_size, len(vocab), vocab_size)
    return vocab, merges


def _check_special_tokens(special_tokens: Sequence[str] | None) -> list[str]:
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a list of strings, not one string")
    specials = list(dict.fromkeys(special_tokens or ()))
    for token in specials:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
        if len(token.encode("utf-8")) == 1:
            raise ValueError(f"special token {token!r} is a single byte, which is already a token")
    return specials


def _build_vocab(specials: list[str], merges: list[tuple[bytes, bytes]]) -> dict[int, bytes]:
    tokens = [s.encode("utf-8") for s in specials] + [bytes([b]) for b in range(256)]
    seen = set(tokens[len(specials):])
    for a, b in merges:
        if a + b not in seen:  # two merges can spell the same string; it gets one id
            seen.add(a + b)
            tokens.append(a + b)
    return dict(enumerate(tokens))


# Step 1: pre-token counts ---------------------------------------------------------------------------

def _count_words(paths: list[Path], specials: list[str], workers: int | None, progress: bool,
                 errors: str) -> dict[bytes, int]:
    total_bytes = estimated_text_bytes(paths)
    workers = workers or available_cpus()
    if total_bytes < _PARALLEL_MIN_BYTES:
        workers = 1
    # Several chunks per worker keep all of them busy; a cap keeps memory bounded on huge files.
    chunk_chars = min(max(total_bytes // (4 * workers), 1 << 16), 8 << 20)
    splitter = SpecialSplitter(specials)
    chunks = iter_chunks(paths, splitter, chunk_chars, errors=errors)
    bar = _progress_bar(progress, total=total_bytes, unit="B", unit_scale=True, desc="counting pre-tokens")
    counts: Counter[str] = Counter()
    try:
        if workers == 1:
            for chunk in chunks:
                counts.update(count_pretokens(chunk, specials))
                bar.update(len(chunk))
        else:
            with _pool_context().Pool(workers) as pool:
                pending: deque = deque()
                for chunk in chunks:
                    pending.append((len(chunk), pool.apply_async(count_pretokens, (chunk, specials))))
                    if len(pending) >= 2 * workers:  # bounded read-ahead: memory stays flat
                        _add_result(counts, pending.popleft(), bar)
                while pending:
                    _add_result(counts, pending.popleft(), bar)
    finally:
        bar.close()
    if not counts:
        names = ", ".join(str(p) for p in paths)
        raise MiniLlamaError(f"no text to train on in {names} (empty, or only special tokens)")
    return {word.encode("utf-8"): n for word, n in counts.items()}


def _add_result(counts: Counter, item, bar) -> None:
    size, result = item
    counts.update(result.get())
    bar.update(size)


def _pool_context():
    # fork starts workers in milliseconds; elsewhere (macOS, Windows) use the platform default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _progress_bar(enabled: bool, **kwargs):
    return progress_bar(enabled=enabled, leave=False, **kwargs)


# Steps 2 and 3: merges -------------------------------------------------------------------------------

def _learn_merges(word_counts: dict[bytes, int], num_merges: int, progress: bool = False
                  ) -> list[tuple[bytes, bytes]]:
    """BPE merges over `word_counts` (pre-token bytes -> count); tokens are ids 0..255 for bytes,
    then one per new token string."""
    words = [list(word) for word in word_counts]
    return merge_words(words, list(word_counts.values()), [bytes([b]) for b in range(256)], num_merges,
                       progress=progress)


def merge_words(words: list[list[int]], counts: list[int], token_bytes: list[bytes], num_new: int, *,
                allowed: Callable[[bytes, bytes], bool] | None = None, progress: bool = False
                ) -> list[tuple[bytes, bytes]]:
    """Steps 2 and 3 from any starting point: `words` are token-id sequences (ids index
    `token_bytes`, the existing tokens), `counts` how often each occurs. Merges the most frequent
    pair until `num_new` tokens were added and returns the merges (as byte pairs, in order).
    `allowed(left, right)` may veto a pair: a vetoed pair is never merged (vocabulary extension
    uses it to never re-create an existing token)."""
    token_bytes = list(token_bytes)
    keys = [_reverse_key(t) for t in token_bytes]
    token_id: dict[bytes, int] = {}
    for i, t in enumerate(token_bytes):
        token_id.setdefault(t, i)

    kept_words: list[list[int]] = []
    kept_counts: list[int] = []
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words containing it
    for symbols, n in zip(words, counts, strict=True):
        if len(symbols) < 2:
            continue
        index = len(kept_words)
        kept_words.append(list(symbols))
        kept_counts.append(n)
        for pair in pairwise(symbols):
            pair_counts[pair] += n
            where[pair].add(index)
    words, counts = kept_words, kept_counts

    heap = [(-n, keys[a], keys[b], a, b) for (a, b), n in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    target = len(token_bytes) + num_new
    bar = _progress_bar(progress, total=num_new, desc="merging")
    while len(token_bytes) < target and heap:
        neg_count, _, _, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg_count:  # stale entry: re-queue with the current count
            if count > 0:
                heapq.heappush(heap, (-count, keys[a], keys[b], a, b))
            continue
        if allowed is not None and not allowed(token_bytes[a], token_bytes[b]):
            continue  # vetoed: dropped (pushed again only if its count changes, then dropped again)
        new_token = token_bytes[a] + token_bytes[b]
        new = token_id.get(new_token)
        if new is None:
            new = token_id[new_token] = len(token_bytes)
            token_bytes.append(new_token)
            keys.append(_reverse_key(new_token))
            bar.update(1)
        merges.append((a, b))
        changed = _apply_merge(a, b, new, words, counts, pair_counts, where)
        for pair in changed:
            n = pair_counts[pair]
            if n > 0:
                heapq.heappush(heap, (-n, keys[pair[0]], keys[pair[1]], pair[0], pair[1]))
    bar.close()
    return [(token_bytes[a], token_bytes[b]) for a, b in merges]


def _apply_merge(a: int, b: int, new: int, words: list[list[int]], counts: list[int],
                 pair_counts: dict[tuple[int, int], int], where: dict[tuple[int, int], set[int]]
                 ) -> set[tuple[int, int]]:
    """Replace (a, b) by `new` in every word containing it, adjusting only the pairs next to each
    occurrence. Returns the pairs that appeared (they contain `new`) and need a heap entry.

    `where` may list a word that no longer holds a pair (entries are never removed, which is
    cheaper than keeping them exact); such a word is scanned and left alone.
    """
    appeared: set[tuple[int, int]] = set()
    for index in where.pop((a, b)):
        word = words[index]
        if a not in word:
            continue
        n = counts[index]
        merged: list[int] = []
        i, length = 0, len(word)
        while i < length:
            if word[i] != a or i + 1 == length or word[i + 1] != b:
                merged.append(word[i])
                i += 1
                continue
            if merged:  # left neighbour: (x, a) becomes (x, new); x may itself be `new`
                pair_counts[word[i - 1], a] -= n
                pair = (merged[-1], new)
                pair_counts[pair] += n
                appeared.add(pair)
                where[pair].add(index)
            if i + 2 < length and not (word[i + 2] == a and i + 3 < length and word[i + 3] == b):
                right = word[i + 2]  # right neighbour, unless it starts the next occurrence
                pair_counts[b, right] -= n
                pair = (new, right)
                pair_counts[pair] += n
                appeared.add(pair)
                where[pair].add(index)
            merged.append(new)
            i += 2
        if len(merged) < length:
            words[index] = merged
    pair_counts.pop((a, b), None)
    return appeared


# The `tokenizers` engine ---------------------------------------------------------------------------

def _train_with_tokenizers(paths: list[Path], specials: list[str], num_merges: int, progress: bool,
                           errors: str) -> list[tuple[bytes, bytes]]:
    """Merges from the `tokenizers` BPE trainer, fed the text between special tokens (its trainer
    would otherwise learn merges across them)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from minillama.tokenizer.pretokenize import token_str_to_bytes

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + num_merges, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress, min_frequency=0,
    )
    splitter = SpecialSplitter(specials)
    total_bytes = estimated_text_bytes(paths)
    chunk_chars = min(max(total_bytes // 16, 1 << 16), 8 << 20)
    seen_text = False

    def pieces():
        nonlocal seen_text
        for chunk in iter_chunks(paths, splitter, chunk_chars, errors=errors):
            for piece in splitter.split(chunk):
                if piece:
                    seen_text = True
                    yield piece

    tok.train_from_iterator(pieces(), trainer)
    if not seen_text:
        names = ", ".join(str(p) for p in paths)
        raise MiniLlamaError(f"no text to train on in {names} (empty, or only special tokens)")
    merges = tok.model.get_merges() if hasattr(tok.model, "get_merges") else None
    if merges is None:
        import json

        merges = json.loads(tok.to_str())["model"]["merges"]
    out = []
    for merge in merges:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        out.append((token_str_to_bytes(a), token_str_to_bytes(b)))
    return out
