"""Translation decoding around the encoder–decoder: encode the source once, then grow the target
one token at a time, each step feeding only the newest token (`DecoderCache` keeps the decoder's
self-attention keys / values, and the cross-attention keys / values of the encoder's output,
computed once per source).

- `generate_ids`: greedy (temperature 0) or sampling, with `minillama.generate`'s sampler;
- `beam_search_ids`: `minillama.generate.beam`'s search (transformers' rules), over beams of the decoder.
Both follow `MarianMTModel.generate` token for token (tested): the output starts with the decoder
start token, rows that ended are padded, and with `forced_eos_token_id` the last allowed step can only
end the sentence. Shapes: B sources, S source tokens, N beams, n generated tokens, V vocabulary.
"""

from __future__ import annotations

import torch

from minillama.generate.beam import check_beam_arguments, search_beams
from minillama.generate.decode import make_generator
from minillama.generate.sampling import SamplingConfig, sample
from minillama.seq2seq.model import DecoderCache, MiniSeq2Seq, padding_mask


def _max_new_tokens(model: MiniSeq2Seq, max_new_tokens: int | None) -> int:
    """The decoder reads the start token and all generated tokens but the last: at most
    max_position_embeddings of them; transformers' default max_length counts the start token too."""
    limit = model.config.max_position_embeddings
    if max_new_tokens is None:
        return limit - 1
    if not 1 <= max_new_tokens <= limit:
        raise ValueError(f"max_new_tokens must be in [1, {limit}] (the model's positions), got {max_new_tokens}")
    return max_new_tokens


def start_decoding(model: MiniSeq2Seq, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   max_new_tokens: int, beams: int = 1) -> tuple[DecoderCache, torch.Tensor]:
    """Encode the sources (B, S) once, build the cache for B * beams target rows and feed the decoder
    start token. Returns (cache, first logits (B * beams, V))."""
    memory = model.encode(input_ids, attention_mask)  # (B, S, C)
    cache = DecoderCache(model, memory, padding_mask(attention_mask), max_new_tokens, repeat=beams)
    start = torch.full((input_ids.shape[0] * beams, 1), model.config.decoder_start_token_id,
                       dtype=torch.long, device=input_ids.device)
    return cache, next_logits(model, start, cache)


def next_logits(model: MiniSeq2Seq, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
    """Feed one token per row, tokens (R, 1); return the next token's logits (R, V) in float32."""
    return model.logits(model.decode(tokens, None, cache=cache)[:, -1]).float()


@torch.no_grad()
def generate_ids(model: MiniSeq2Seq, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each source row (B, S), right-padded with attention_mask (B, S) 1 = token.
    temperature 0 is greedy; otherwise sampling with top_k / top_p / min_p (transformers' rules).
    Returns (B, 1 + n): the decoder start token, then each row's tokens up to and including EOS,
    padded with pad_token_id after it."""
    config = model.config
    n = _max_new_tokens(model, max_new_tokens)
    sampling = SamplingConfig(temperature, top_k, top_p, min_p)
    generator = make_generator(seed, generator, input_ids.device)
    cache, logits = start_decoding(model, input_ids, attention_mask, n)
    B = input_ids.shape[0]
    out = [torch.full((B,), config.decoder_start_token_id, dtype=torch.long, device=input_ids.device)]
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for step in range(n):
        if config.forced_eos_token_id is not None and step == n - 1:
            token = torch.full_like(finished, config.forced_eos_token_id, dtype=torch.long)
        else:
            token = sample(logits, sampling, generator)  # (B,)
        token = token.masked_fill(finished, config.pad_token_id)
        finished = finished | (token == config.eos_token_id)
        out.append(token)
        if step + 1 == n or bool(finished.all()):
            break
        logits = next_logits(model, token[:, None], cache)
    return torch.stack(out, dim=1)


@torch.no_grad()
def beam_search_ids(model: MiniSeq2Seq, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                    num_beams: int = 4, max_new_tokens: int | None = None, length_penalty: float = 1.0,
                    early_stopping: bool | str = False) -> torch.Tensor:
    """The best of `num_beams` beams for each source row: (B, 1 + n) as `generate_ids`.
    length_penalty: finished beams are scored sum(log p) / length ** length_penalty; early_stopping:
    True stops once num_beams hypotheses finished, False / "never" as transformers (`generate.beam`)."""
    config = model.config
    n = _max_new_tokens(model, max_new_tokens)
    check_beam_arguments(num_beams, n, early_stopping)
    cache, logits = start_decoding(model, input_ids, attention_mask, n, beams=num_beams)
    start = torch.full((input_ids.shape[0], 1), config.decoder_start_token_id, dtype=torch.long,
                       device=input_ids.device)

    def advance(tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        cache.reorder(rows)  # each running beam continues from its source beam's cache
        return next_logits(model, tokens, cache)

    return search_beams(start, logits, advance, num_beams=num_beams, max_new_tokens=n,
                        length_penalty=length_penalty, early_stopping=early_stopping,
                        stop_ids=(config.eos_token_id,), pad_token_id=config.pad_token_id,
                        forced_eos_token_id=config.forced_eos_token_id)


@torch.no_grad()
def teacher_forced_logits(model: MiniSeq2Seq, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          decoder_input_ids: torch.Tensor) -> torch.Tensor:
    """The logits (B, T, V) of `decoder_input_ids` fed one token at a time through the cache: what
    decoding computes, to compare with the full forward."""
    cache = DecoderCache(model, model.encode(input_ids, attention_mask), padding_mask(attention_mask),
                         decoder_input_ids.shape[1])
    steps = [model.logits(model.decode(decoder_input_ids[:, t:t + 1], None, cache=cache))
             for t in range(decoder_input_ids.shape[1])]
    return torch.cat(steps, dim=1)
