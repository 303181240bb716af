"""Text in, text out: the tokenizer around `NumpyLlama`, streaming whole characters only."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from minillama.generate.special import start_token_id
from minillama.generate.special import stop_token_ids as end_tokens
from minillama.numpy_model.model import NumpyLlama

REPLACEMENT = "\ufffd"  # what decode gives for bytes that are not (yet) a whole UTF-8 character


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """minillama's own tokenizer (pure Python, no torch) from a checkpoint directory."""
    from minillama.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(directory)


def decode_stream(tokenizer: Any, new_ids: Iterable[int], context_ids: Iterable[int] = ()) -> Iterator[str]:
    """Text pieces for ids as they arrive; a piece is released only once it ends in a whole
    character, so a multi-byte UTF-8 character split over tokens is never cut.

    Each step decodes a short window (a few tokens already shown + the new ones) and releases what
    the new ones add; the window starts in `context_ids` (the prompt) so tokenizers whose decoding
    depends on the previous token (e.g. SentencePiece's leading space) read the same as decoding
    the whole sequence. Needs only `tokenizer.decode(ids) -> str` with U+FFFD for invalid bytes.
    """
    ids = list(context_ids)
    prefix, read = max(len(ids) - 5, 0), len(ids)  # window start; end of what has been shown
    for token in new_ids:
        ids.append(token)
        shown = tokenizer.decode(ids[prefix:read])
        text = tokenizer.decode(ids[prefix:])
        if len(text) > len(shown) and not text.endswith(REPLACEMENT):
            yield text[len(shown):]
            prefix, read = read, len(ids)
    if read < len(ids):  # the end: release whatever is left, incomplete bytes as U+FFFD
        tail = tokenizer.decode(ids[prefix:])[len(tokenizer.decode(ids[prefix:read])):]
        if tail:
            yield tail


def stream_text(checkpoint_dir: str | os.PathLike | NumpyLlama, prompt: str, max_new_tokens: int = 256,
                temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                seed: int | None = None, tokenizer: Any = None,
                stop_token_ids: Iterable[int] | None = None) -> Iterator[str]:
    """Generate from a text prompt with the NumPy model; yield the new text piece by piece.

    checkpoint_dir: a model directory (config.json + safetensors + tokenizer files), or an already
    loaded `NumpyLlama` (then pass `tokenizer` too). An empty prompt starts from the BOS token.
    Generation stops after max_new_tokens or at an end token (the config's or the tokenizer's:
    `minillama.generate.special`; `stop_token_ids` overrides), which is not part of the text.
    """
    if isinstance(checkpoint_dir, NumpyLlama):
        model = checkpoint_dir
        if tokenizer is None:
            raise ValueError("pass tokenizer= with an already loaded NumpyLlama")
    else:
        model = NumpyLlama.from_pretrained(checkpoint_dir)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(Path(checkpoint_dir))
    config = model.config
    prompt_ids = list(tokenizer.encode(prompt)) if prompt else []
    if not prompt_ids:
        start = start_token_id(config, tokenizer)
        if start is None:
            raise ValueError("the prompt is empty and neither the model nor the tokenizer names a BOS "
                             "or end-of-text token to start from; give a prompt")
        prompt_ids = [start]
    if len(prompt_ids) > config.max_position_embeddings:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens, more than the model's context of "
                         f"{config.max_position_embeddings}; shorten it")
    stops = set(end_tokens(config, tokenizer) if stop_token_ids is None else stop_token_ids)
    tokens = model.generate_stream(prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, seed=seed, stop_token_ids=list(stops))
    shown = (token for token in tokens if token not in stops)  # the stop token ends, it is not text
    yield from decode_stream(tokenizer, shown, prompt_ids)
