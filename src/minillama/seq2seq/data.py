"""Translation data: the shipped Tatoeba English–Chinese pairs (or any TSV of pairs), a split by
English sentence, multi-reference test sets, a joint byte-level BPE, and padded batches.

A TSV line is `first<TAB>second[<TAB>anything, e.g. the attribution]`; the first column is the
"en" side and the second the "zh" side (the shipped file's layout), and the direction says which
side is the source. The split is by the first column: its distinct sentences are ordered by the
SHA-256 of their text, the first `test_size` are the test set, the next `validation_size` the
validation set, the rest the training set, each with every translation it has. So no English
sentence is in two splits, the split does not depend on the file's order, and the test set scores
each source against all its reference translations.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minillama.errors import MiniLlamaError
from minillama.finetune.batches import ExampleBatches
from minillama.model.config import IGNORE_INDEX

log = logging.getLogger(__name__)
DIRECTIONS = ("en-zh", "zh-en")
TATOEBA = "tatoeba_cmn/cmn.txt.gz"
TEST_SIZE, VALIDATION_SIZE = 1000, 500
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<pad>"  # ids 0 and 1 of a tokenizer trained here
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)


@dataclass(frozen=True)
class Pair:
    en: str  # first column
    zh: str  # second column
    attribution: str = ""


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a TSV file (gzip when it ends in .gz); a BOM and blank lines are skipped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            lines = [line.rstrip("\r") for line in f.read().split("\n")]  # not splitlines: U+2028 is text
    except UnicodeDecodeError as exc:
        raise MiniLlamaError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    pairs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        first, tab, rest = line.partition("\t")
        if not tab:
            raise MiniLlamaError(f"{path}:{lineno}: expected 'source<TAB>target', found no tab in {line[:60]!r}")
        second, _, attribution = rest.partition("\t")
        if not first.strip() or not second.strip():
            side = "first" if not first.strip() else "second"
            raise MiniLlamaError(f"{path}:{lineno}: the {side} sentence is empty; every pair needs both sides")
        pairs.append(Pair(first.strip(), second.strip(), attribution))
    if not pairs:
        raise MiniLlamaError(f"{path} holds no sentence pairs")
    return pairs


def tatoeba_pairs() -> list[Pair]:
    """The shipped 29,155 Tatoeba English–Chinese pairs (CC-BY 2.0 France, see the asset README)."""
    from minillama.assets import asset_path

    return read_pairs(asset_path(TATOEBA))


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise MiniLlamaError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    return direction


def split_sizes(distinct: int, test_size: int = TEST_SIZE, validation_size: int = VALIDATION_SIZE) -> tuple[int, int]:
    """(test, validation) sentences: the defaults, or a tenth and a twentieth of a small file."""
    test = min(test_size, max(1, distinct // 10))
    validation = min(validation_size, max(1, distinct // 20))
    if distinct < test + validation + 1:
        raise MiniLlamaError(f"{distinct} distinct source sentences are too few to split into training, "
                             "validation and test sets")
    return test, validation


def split_pairs(pairs: Sequence[Pair], test_size: int = TEST_SIZE,
                validation_size: int = VALIDATION_SIZE) -> dict[str, list[Pair]]:
    """{"train", "validation", "test"}: by first-column sentence, deterministic (see the module doc)."""
    def key(sentence: str) -> str:
        return hashlib.sha256(sentence.encode("utf-8")).hexdigest()

    ordered = sorted({p.en for p in pairs}, key=key)
    test, validation = split_sizes(len(ordered), test_size, validation_size)
    split_of = {s: "test" for s in ordered[:test]}
    split_of |= {s: "validation" for s in ordered[test:test + validation]}
    splits: dict[str, list[Pair]] = {"train": [], "validation": [], "test": []}
    for pair in pairs:
        splits[split_of.get(pair.en, "train")].append(pair)
    return splits


def oriented(pairs: Sequence[Pair], direction: str) -> list[tuple[str, str]]:
    """(source, target) sentences for `direction`."""
    check_direction(direction)
    return [(p.en, p.zh) if direction == "en-zh" else (p.zh, p.en) for p in pairs]


def with_references(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Each distinct source once, with all its target translations, in first-appearance order."""
    references: dict[str, list[str]] = {}
    for source, target in pairs:
        references.setdefault(source, []).append(target)
    return list(references.items())


# ---- the tokenizer ---------------------------------------------------------------------------------
def train_joint_tokenizer(pairs: Sequence[Pair], vocab_size: int, out_dir: str | os.PathLike,
                          model_max_length: int | None = None) -> Any:
    """A byte-level BPE learned from both sides of `pairs` at once (one vocabulary for English and
    Chinese, so embeddings can be shared), with `<|endoftext|>` (id 0, the end of every target) and
    `<pad>` (id 1, also the decoder's start token); saved to `out_dir`."""
    import tempfile

    from minillama.files import atomic_directory
    from minillama.tokenizer import Tokenizer, train_bpe

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "pairs.txt"
        text.write_text("".join(f"{p.en}\n{p.zh}\n" for p in pairs), encoding="utf-8")
        vocab, merges = train_bpe([text], vocab_size, SPECIAL_TOKENS)
    tokenizer = Tokenizer(vocab, merges, list(SPECIAL_TOKENS), eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                          model_max_length=model_max_length, chat_template=None)
    with atomic_directory(out_dir, "tokenizer") as tmp:
        tokenizer.save_pretrained(tmp)
    return tokenizer


def bytes_per_token(tokenizer: Any, sentences: Sequence[str]) -> float:
    """UTF-8 bytes per token over `sentences` (Chinese characters are 3 bytes each)."""
    ids = tokenizer.encode_batch(list(sentences))
    return sum(len(s.encode("utf-8")) for s in sentences) / max(1, sum(len(row) for row in ids))


# ---- examples and batches ----------------------------------------------------------------------------
@dataclass
class TranslationExample:
    ids: list[int]  # source tokens (no special token: what AutoTokenizer gives for the text)
    labels: list[int]  # target tokens, then EOS


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]],
                 max_len: int) -> tuple[list[TranslationExample], int]:
    """Examples of the pairs whose source and target (with EOS) fit in `max_len` positions; returns
    (examples, how many pairs were too long and left out)."""
    sources = tokenizer.encode_batch([s for s, _ in pairs])
    targets = tokenizer.encode_batch([t for _, t in pairs])
    examples = [TranslationExample(s, [*t, tokenizer.eos_token_id]) for s, t in zip(sources, targets, strict=True)
                if len(s) <= max_len and len(t) + 1 <= max_len]
    return examples, len(pairs) - len(examples)


class LengthBucketedBatches(ExampleBatches):
    """`ExampleBatches` whose batches hold pairs of similar length, so little of a batch is padding:
    each epoch's seeded permutation is cut into windows of `BUCKET_BATCHES` global batches, each
    window sorted by length, and the batches shuffled again. The order is still a function of
    (seed, epoch), so the state stays (epoch, position) and resume is exact."""

    BUCKET_BATCHES = 50

    @staticmethod
    def targets(example: TranslationExample) -> int:
        """Each batch's `loss_weight` (see `ExampleBatches`) counts the target tokens."""
        return len(example.labels)

    def _permutation(self) -> list[int]:
        order = super()._permutation()
        window = self.global_batch * self.BUCKET_BATCHES
        length = [len(e.ids) + len(e.labels) for e in self.examples]
        for start in range(0, len(order), window):
            order[start:start + window] = sorted(order[start:start + window], key=length.__getitem__)
        batches = [order[i:i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        tail = batches.pop() if len(batches[-1]) < self.global_batch else []  # stays last: dropped by the epoch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7919)
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return [i for batch in shuffled for i in batch] + tail


def collate(examples: Sequence[TranslationExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids (B, S) with attention_mask (B, S), and labels (B, T) padded with -100."""
    S, T = max(len(e.ids) for e in examples), max(len(e.labels) for e in examples)
    input_ids = torch.full((len(examples), S), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), S), dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, :len(example.ids)] = torch.tensor(example.ids)
        attention_mask[row, :len(example.ids)] = 1
        labels[row, :len(example.labels)] = torch.tensor(example.labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_sources(tokenizer: Any, sentences: Sequence[str], max_len: int,
                   truncate: bool = False) -> list[list[int]]:
    """Token ids of source sentences; one longer than the model's `max_len` positions is refused
    (naming the limit) or, with `truncate`, cut to it."""
    rows = tokenizer.encode_batch(list(sentences))
    for i, row in enumerate(rows):
        if not row:
            raise MiniLlamaError(f"sentence {i + 1} is empty; give text to translate")
        if len(row) > max_len:
            if not truncate:
                raise MiniLlamaError(f"sentence {i + 1} is {len(row)} tokens long, more than the model's "
                                     f"{max_len} positions (max_position_embeddings); shorten it or pass --truncate")
            rows[i] = row[:max_len]
    return rows


def pad_sources(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask), each (B, S)."""
    S = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), S), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), S), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return input_ids, mask
