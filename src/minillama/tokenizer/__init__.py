"""Byte-level BPE tokenizer (GPT-2 / Qwen2 style): a fast trainer, an encoder with exactly the ids of
the `tokenizers` library, and the Hugging Face file formats. See docs/tokenizer.md."""

from minillama.tokenizer.api import (
    check_tokenizer_matches,
    default_training_input,
    find_tokenizer_dir,
    train_tokenizer,
)
from minillama.tokenizer.chat import render_chat
from minillama.tokenizer.tokenizer import CHATML_TEMPLATE, Tokenizer
from minillama.tokenizer.train import DEFAULT_SPECIAL_TOKENS, train_bpe

__all__ = ["CHATML_TEMPLATE", "DEFAULT_SPECIAL_TOKENS", "Tokenizer", "check_tokenizer_matches",
           "default_training_input", "find_tokenizer_dir", "render_chat", "train_bpe", "train_tokenizer"]
