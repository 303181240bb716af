"""Instruction data for supervised fine-tuning: records -> conversations -> (ids, labels) examples.

Two record formats, one JSON object per line (`.jsonl` or `.jsonl.gz`):
- Alpaca: `{"instruction", "input", "output"}` (optional `"system"`): the user turn is the
  instruction, plus a blank line and the input when there is one; the assistant turn is the output;
- chat: `{"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}`.

Shipped sets, by name: `gsm8k` (grade-school math, MIT), `alpaca` (999 general instructions,
CC BY-NC 4.0), and `tinystories-instruct`, built at run time from the embedded TinyStories:
"Write a story that starts with: <first sentence>" -> the story, a task the tiny demo model can learn.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minillama.data.sources import read_jsonl
from minillama.errors import MiniLlamaError
from minillama.finetune.batches import IGNORE_INDEX, Example

log = logging.getLogger(__name__)
Messages = list[dict[str, str]]
STORY_PROMPT = "Write a story that starts with: {first}"
MAX_STORY_CHARS = 800  # about 190 tokens: with the prompt, a story fits the tiny model's 256 positions
FIRST_SENTENCE = re.compile(r"^(.+?[.!?][\"']?)(?=\s|$)", re.DOTALL)


def to_messages(record: dict[str, Any]) -> Messages:
    """A chat record's messages, or an Alpaca record as [system?, user, assistant]."""
    if "messages" in record:
        return list(record["messages"])
    if "instruction" in record and "output" in record:
        prompt = record["instruction"]
        if record.get("input"):
            prompt = f"{prompt}\n\n{record['input']}"
        system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return [*system, {"role": "user", "content": prompt},
                {"role": "assistant", "content": record["output"]}]
    raise MiniLlamaError(f"an SFT record needs 'messages' or 'instruction' + 'output'; got fields "
                         f"{', '.join(record)}")


def story_instruction(story: str) -> Messages:
    """One TinyStories instruction: the first sentence as the prompt, the whole story as the reply."""
    match = FIRST_SENTENCE.match(story)
    first = (match.group(1) if match else story).strip()
    return [{"role": "user", "content": STORY_PROMPT.format(first=first)},
            {"role": "assistant", "content": story}]


def tinystories_instructions(split: str) -> Iterator[Messages]:
    from minillama.data import load_documents

    for story in load_documents("tinystories-sample", split):
        if len(story) <= MAX_STORY_CHARS:
            yield story_instruction(story)


def _shipped(name: str) -> Callable[[], Iterator[Messages]]:
    def conversations() -> Iterator[Messages]:
        from minillama.assets import asset_path

        return (to_messages(r) for r in read_jsonl(asset_path(f"sft/{name}.jsonl.gz")))
    return conversations


@dataclass(frozen=True)
class SFTDataset:
    description: str
    train: Callable[[], Iterator[Messages]]
    val: Callable[[], Iterator[Messages]] | None = None  # None: hold out part of train


SFT_DATASETS: dict[str, SFTDataset] = {
    "tinystories-instruct": SFTDataset(
        f"'Write a story that starts with: <first sentence>' -> the story, from the embedded TinyStories "
        f"(stories up to {MAX_STORY_CHARS} characters)",
        lambda: tinystories_instructions("train"), lambda: tinystories_instructions("val")),
    "gsm8k": SFTDataset("7,473 grade-school math problems with worked answers (MIT); validation: its test",
                        _shipped("gsm8k_train"), _shipped("gsm8k_test")),
    "alpaca": SFTDataset("999 Alpaca-format general instructions (CC BY-NC 4.0, research use)",
                         _shipped("alpaca_en_demo")),
}


def load_conversations(dataset: str, val_dataset: str | None = None, val_fraction: float = 0.05,
                       utf8_errors: str = "strict") -> tuple[list[Messages], list[Messages]]:
    """(train, validation) conversations of a registered name or a JSONL path. Without a validation
    set of its own, a seeded `val_fraction` of the training conversations is held out."""
    train, val = _source(dataset, utf8_errors)
    if val_dataset:
        val = _source(val_dataset, utf8_errors)[0]
    train_conversations = list(train())
    if val is not None:
        return train_conversations, list(val())
    count = max(1, round(len(train_conversations) * val_fraction))
    if count >= len(train_conversations):
        raise MiniLlamaError(f"{dataset} has only {len(train_conversations)} conversations: too few to hold "
                             "out a validation set; pass --data.val_dataset")
    held_out = set(torch.randperm(len(train_conversations), generator=torch.Generator().manual_seed(0))
                   [:count].tolist())
    return ([c for i, c in enumerate(train_conversations) if i not in held_out],
            [c for i, c in enumerate(train_conversations) if i in held_out])


def _source(dataset: str, utf8_errors: str = "strict"
            ) -> tuple[Callable[[], Iterator[Messages]], Callable[[], Iterator[Messages]] | None]:
    if dataset in SFT_DATASETS:
        entry = SFT_DATASETS[dataset]
        return entry.train, entry.val
    if not Path(dataset).is_file():
        raise FileNotFoundError(f"no SFT dataset named {dataset!r} and no such file; use one of "
                                f"{', '.join(SFT_DATASETS)} or a .jsonl file")
    return (lambda: (to_messages(r) for r in read_jsonl(dataset, utf8_errors))), None


def truncate(ids: Sequence[int], labels: Sequence[int], max_len: int) -> tuple[list[int], list[int]]:
    """Cut ids and labels at the same place, so every label stays on its token."""
    return list(ids[:max_len]), list(labels[:max_len])


def tokenize_conversations(tokenizer: Any, conversations: Iterable[Messages], max_len: int) -> list[Example]:
    """Render each conversation in ChatML with its mask and truncate it to `max_len` tokens.
    A conversation with no learned token left after truncation is dropped (with a warning)."""
    from minillama.tokenizer import render_chat

    examples, dropped = [], 0
    for messages in conversations:
        ids, labels = truncate(*render_chat(tokenizer, messages), max_len)
        # labels[0] is never predicted (nothing comes before it): a learned token must come later.
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append(Example(ids, labels))
        else:
            dropped += 1
    if dropped:
        log.warning("%d conversation(s) had no assistant token within %d tokens and were dropped", dropped,
                    max_len)
    if not examples:
        raise MiniLlamaError(f"no conversation has an assistant reply within {max_len} tokens; "
                             "raise data.seq_len")
    return examples
