"""Which token starts a text, which end it, and which pads a row that has ended: one rule for
every decoder (torch and NumPy, the CLI and the server). Plain Python, no torch.

A model's config and its tokenizer may each name an end token: a base model's both say
<|endoftext|>; a chat fine-tune's config says <|im_end|> while its tokenizer still says
<|endoftext|>. Either ends the text.
"""

from __future__ import annotations

from typing import Any

END_OF_TURN = "<|im_end|>"  # ChatML: the end of an assistant's reply


def stop_token_ids(config: Any, tokenizer: Any = None, chat: bool = False) -> tuple[int, ...]:
    """The end tokens: the config's EOS, the tokenizer's, and with `chat` the end of a turn."""
    ids = [config.eos_token_id, getattr(tokenizer, "eos_token_id", None)]
    if chat and tokenizer is not None:
        ids.append(tokenizer.token_to_id(END_OF_TURN))
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def start_token_id(config: Any, tokenizer: Any = None) -> int | None:
    """What an empty prompt starts from: BOS (the config's, else the tokenizer's), else the
    end-of-text token, which GPT-2 style tokenizers use as both."""
    candidates = (config.bos_token_id, getattr(tokenizer, "bos_token_id", None), *stop_token_ids(config, tokenizer))
    return next((i for i in candidates if i is not None), None)


def pad_token_id(config: Any, stop_ids: tuple[int, ...] = ()) -> int:
    """What fills a row after it has ended: the config's pad token, else its first stop token (as
    transformers does), else 0."""
    if config.pad_token_id is not None:
        return config.pad_token_id
    return stop_ids[0] if stop_ids else 0
