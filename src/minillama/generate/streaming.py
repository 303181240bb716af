"""Streaming text: token ids in, printable text pieces out, as they are generated.

A byte-level BPE token is a run of bytes, and a multi-byte UTF-8 character (é, 中, 🐉) may be split
across tokens; decoding each token on its own would print U+FFFD halves. So text is released only
once the bytes so far form whole characters: with a tokenizer that exposes `decode_bytes`, through
an incremental UTF-8 decoder; otherwise by decoding the accumulated ids and holding back a trailing
U+FFFD until the next token completes it. Stop strings are handled here too: text that could be the
beginning of a stop string is held back until it either completes one (generation stops and the
stop string is not shown) or can no longer do so.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from minillama.generate.decode import (
    check_prompt,
    compiled_decode_one_token,
    decode_one_token,
    default_stop_ids,
    iter_tokens,
    make_generator,
)
from minillama.generate.sampling import SamplingConfig
from minillama.model import MiniLlama


class IncrementalDecoder:
    """Token ids -> text pieces that never split a character."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bytes = getattr(tokenizer, "decode_bytes", None)
        self._ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to text already released (fallback path)
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        if self._bytes is not None:
            return self._utf8.decode(self._bytes([token_id]))
        self._ids.append(token_id)
        # Decode with a little left context, so tokenizers that strip a leading space see none.
        done = self.tokenizer.decode(self._ids[self._prefix:self._read])
        text = self.tokenizer.decode(self._ids[self._prefix:])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(done):]
        return ""

    def flush(self, drop_incomplete: bool = False) -> str:
        """The rest. An unfinished character at the very end becomes U+FFFD, as a full decode shows
        it, or is left out with `drop_incomplete` (output cut by a token limit, not by its end)."""
        if self._bytes is not None:
            if drop_incomplete:
                self._utf8.reset()
                return ""
            return self._utf8.decode(b"", final=True)
        done = self.tokenizer.decode(self._ids[self._prefix:self._read])
        text = self.tokenizer.decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        text = text[len(done):]
        return text.rstrip("\ufffd") if drop_incomplete else text


class StopStrings:
    """Text pieces -> the same text, cut before the first stop string (`stopped` is then True)."""

    def __init__(self, stop_strings: Sequence[str] = ()):
        self.stop_strings = [s for s in stop_strings if s]
        self.pending = ""  # released by the decoder, held back here
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.pending += piece
        if not self.stop_strings:
            out, self.pending = self.pending, ""
            return out
        hits = [i for i in (self.pending.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[:min(hits)], ""
            return out
        keep = self._partial_match_length()
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out

    def _partial_match_length(self) -> int:
        """Length of the longest end of `pending` that is the beginning of some stop string."""
        longest = 0
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class TextStreamer:
    """Token ids -> text pieces, whole characters only, stopping at any stop string."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()):
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = StopStrings(stop_strings)

    @property
    def stopped(self) -> bool:
        return self.stops.stopped

    def push(self, token_id: int) -> str:
        return self.stops.push(self.decoder.push(token_id))

    def flush(self, drop_incomplete: bool = False) -> str:
        """The text held back, at the end of generation (see `IncrementalDecoder.flush`)."""
        if self.stopped:
            return ""
        return self.stops.push(self.decoder.flush(drop_incomplete)) + self.stops.flush()


@torch.no_grad()
def stream_generate(model: MiniLlama, tokenizer: Any, input_ids: torch.Tensor | Sequence[int], *,
                    max_new_tokens: int = 256, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, min_p: float | None = None, repetition_penalty: float = 1.0,
                    stop_token_ids: Iterable[int] | None = None, stop_strings: Sequence[str] = (),
                    seed: int | None = None, generator: torch.Generator | None = None,
                    compile: bool = False) -> Iterator[str]:
    """Continue one prompt, yielding text as it is produced. A stop token (by default the model's
    and the tokenizer's end tokens) or stop string ends the stream and is not shown. Settings as
    in `generate`."""
    sampling = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty)
    device = model.lm_head.weight.device
    input_ids, _ = check_prompt(torch.as_tensor(input_ids, dtype=torch.long, device=device), None)
    stops = default_stop_ids(model, stop_token_ids, tokenizer)
    tokens = iter_tokens(model, input_ids, max_new_tokens=max_new_tokens, sampling=sampling,
                         stop_token_ids=stops, generator=make_generator(seed, generator, device),
                         decode_fn=compiled_decode_one_token() if compile else decode_one_token)
    yield from text_pieces((int(token[0]) for token in tokens), tokenizer, stops, stop_strings)


def text_pieces(token_ids: Iterable[int], tokenizer: Any, stop_ids: Iterable[int] = (),
                stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """Token ids as they come -> non-empty text pieces, whole characters only; a stop token or stop
    string ends the text and is not part of it."""
    stops = set(stop_ids)
    streamer = TextStreamer(tokenizer, stop_strings)
    for token_id in token_ids:
        if token_id in stops:
            break
        piece = streamer.push(token_id)
        if piece:
            yield piece
        if streamer.stopped:
            return
    tail = streamer.flush()
    if tail:
        yield tail


def generate_text(model: MiniLlama, tokenizer: Any, prompt: str, **settings: Any) -> str:
    """The continuation of `prompt` as a string (the prompt not included); settings as in
    `stream_generate`."""
    ids = tokenizer.encode(prompt)
    ids = getattr(ids, "ids", ids)  # a `tokenizers.Encoding`
    return "".join(stream_generate(model, tokenizer, ids, **settings))
