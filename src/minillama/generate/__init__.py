"""Text generation as small pure functions around the model's static KV cache.

- `generate`: greedy / temperature / top-k / top-p / min-p / repetition penalty, batched prompts.
- `beam_search`: transformers' beam search, token for token.
- `speculative_generate`: a draft model guesses, the target verifies; same output distribution.
- `stream_generate` / `TextStreamer`: text pieces as they come, never half a character.
See docs/generation.md.
"""

from minillama.lazy import lazy_attributes

_NAMES = {
    "beam_search": "minillama.generate.beam",
    "decode_one_token": "minillama.generate.decode",
    "generate": "minillama.generate.decode",
    "iter_tokens": "minillama.generate.decode",
    "new_cache": "minillama.generate.decode",
    "prefill": "minillama.generate.decode",
    "prepare_for_decoding": "minillama.generate.decode",
    "SamplingConfig": "minillama.generate.sampling",
    "process_logits": "minillama.generate.sampling",
    "sample": "minillama.generate.sampling",
    "SpeculativeStats": "minillama.generate.speculative",
    "accept_draft": "minillama.generate.speculative",
    "iter_speculative": "minillama.generate.speculative",
    "speculative_generate": "minillama.generate.speculative",
    "IncrementalDecoder": "minillama.generate.streaming",
    "StopStrings": "minillama.generate.streaming",
    "TextStreamer": "minillama.generate.streaming",
    "generate_text": "minillama.generate.streaming",
    "stream_generate": "minillama.generate.streaming",
    "text_pieces": "minillama.generate.streaming",
}

__all__ = sorted(_NAMES)
__getattr__ = lazy_attributes(__name__, _NAMES)  # torch loads on first use
