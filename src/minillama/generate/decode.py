"""Autoregressive decoding around the static KV cache: prefill, decode one token, generate.

The prompt goes through the model once (prefill), filling the cache; then each step feeds only the
newest token, which attends to the cached keys and values instead of recomputing the whole prefix.
Batched prompts of different lengths are left-padded: every row's next token then lands in the
same column, and the attention mask keeps padding invisible (positions count real tokens only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from minillama.generate import special
from minillama.generate.sampling import SamplingConfig, sample
from minillama.model import KVCache, MiniLlama

DecodeFn = Callable[[MiniLlama, torch.Tensor, torch.Tensor, KVCache], torch.Tensor]


def new_cache(model: MiniLlama, batch_size: int, max_seq_len: int) -> KVCache:
    """A cache for `batch_size` rows of up to `max_seq_len` tokens, on the model's device and dtype."""
    weight = model.lm_head.weight
    return KVCache(model.config, batch_size, max_seq_len, dtype=weight.dtype, device=weight.device)


class DecodingLinear(torch.nn.Linear):
    """`nn.Linear` for decoding on CPU, where a product with one or a few rows (a GEMV) is bound by
    memory bandwidth, and MKL runs it on one thread. `prepare_for_decoding` picks the layout:

    - eager: the weight column-major, multiplied in one block of output features per thread as a
      batched matmul over views of it, so every core streams its share (0.5 ms for the stories15M
      LM head instead of MKL's 1.3 ms);
    - compiled: the weight row-major (`nn.Linear`'s own), one row multiplied as a batched matmul
      with a single column, which inductor lowers into one parallel reduction along the weight's
      contiguous rows, fused with the code around it.
    Any other case is plain `nn.Linear`. The weight is one tensor either way (a tied embedding follows)."""

    @classmethod
    def holding(cls, linear: torch.nn.Linear, parts: int) -> DecodingLinear:
        """A DecodingLinear holding `linear`'s own weight and bias (no copy); `parts`: eager blocks."""
        with torch.device("meta"):
            layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.parts = parts
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if torch.compiler.is_compiling():
            if x.shape[:-1].numel() != 1 or not self.weight.is_contiguous():
                return super().forward(x)
            y = torch.bmm(self.weight[None], x.reshape(1, -1, 1)).reshape(*x.shape[:-1], self.out_features)
        else:
            weight_t = self.weight.t()  # (in, out), contiguous when laid out for eager decoding
            if self.parts == 1 or self.out_features % self.parts or not weight_t.is_contiguous():
                return super().forward(x)
            rows = x.reshape(1, -1, self.in_features).expand(self.parts, -1, -1)  # (P, M, in)
            blocks = weight_t.view(self.in_features, self.parts, -1).transpose(0, 1)  # (P, in, out / P)
            y = torch.bmm(rows, blocks).transpose(0, 1).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


@torch.no_grad()
def prepare_for_decoding(model: MiniLlama, compiled: bool = False) -> MiniLlama:
    """Convert `model` for decoding, in place, and return it: every projection (LM head included)
    becomes a `DecodingLinear` holding the same parameters, laid out for eager decoding (weights
    column-major, per-thread blocks for the current `torch.get_num_threads()`) or, with
    `compiled=True`, for a compiled decode step (weights row-major). The caller owns the converted
    model: its values, state dict and exports are unchanged (only memory order differs); it is
    meant for inference, and converting again switches the layout. A no-op off the CPU."""
    if model.lm_head.weight.device.type != "cpu":
        return model
    parts = torch.get_num_threads()
    for name, module in list(model.named_modules()):
        if type(module) not in (torch.nn.Linear, DecodingLinear):  # LoRA wrappers keep their forward
            continue
        weight = module.weight.data
        if compiled and not weight.is_contiguous():
            module.weight.data = weight.contiguous()
        elif not compiled and not weight.t().is_contiguous():
            module.weight.data = weight.t().contiguous().t()
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, DecodingLinear.holding(module, parts))
    return model


def prefill(model: MiniLlama, input_ids: torch.Tensor, cache: KVCache,
            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run the prompt (B, T) through the model into `cache`; return the last position's logits (B, V)."""
    return model(input_ids, attention_mask=attention_mask, cache=cache, logits_to_keep=1).logits[:, -1]


def decode_one_token(model: MiniLlama, token: torch.Tensor, position_ids: torch.Tensor,
                     cache: KVCache) -> torch.Tensor:
    """Feed one new token per row, token (B, 1) at position_ids (B, 1); return its logits (B, V)."""
    return model(token, position_ids=position_ids, cache=cache, logits_to_keep=1).logits[:, -1]


def make_generator(seed: int | None, generator: torch.Generator | None,
                   device: torch.device) -> torch.Generator | None:
    """An explicit generator: the one given, or a new one from `seed`, or None (torch's global RNG)."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def check_prompt(input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Make the prompt (B, T) and verify the mask is left padding (B, T) with a token in every row."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got shape "
                         f"{tuple(input_ids.shape)}; start an empty prompt with the BOS token")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                             f"{tuple(input_ids.shape)}")
        mask = attention_mask.bool()
        if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError("attention_mask must be left padding (0s then 1s, a token in the last column); "
                             "pad batched prompts on the left for generation")
        if bool(mask.all()):
            attention_mask = None
    return input_ids, attention_mask


def default_stop_ids(model: MiniLlama, stop_token_ids: Iterable[int] | None,
                     tokenizer: Any = None) -> tuple[int, ...]:
    """None means the end tokens of the model (and of the tokenizer, if given: `special.stop_token_ids`);
    pass () to never stop early."""
    if stop_token_ids is None:
        return special.stop_token_ids(model.config, tokenizer)
    return tuple(int(t) for t in stop_token_ids)


def seen_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                vocab_size: int) -> torch.Tensor:
    """bool (B, V): which tokens occur in each row's real prompt (for the repetition penalty)."""
    counts = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.long, device=input_ids.device)
    real = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    return counts.scatter_add_(1, input_ids, real) > 0


def iter_tokens(model: MiniLlama, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                max_new_tokens: int, sampling: SamplingConfig | None = None,
                stop_token_ids: Iterable[int] = (), pad_token_id: int = 0,
                generator: torch.Generator | None = None,
                decode_fn: DecodeFn = decode_one_token) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,), step by step. A row that has produced a stop token
    yields `pad_token_id` from then on; iteration ends when every row has stopped or after
    `max_new_tokens` steps. Call under `torch.no_grad()`."""
    sampling = SamplingConfig() if sampling is None else sampling
    input_ids, attention_mask = check_prompt(input_ids, attention_mask)
    B, T = input_ids.shape
    if max_new_tokens <= 0:
        return
    device = input_ids.device
    cache_length = getattr(decode_fn, "cache_length", None)  # a compiled step may want a fixed size
    needed = T + max_new_tokens
    cache = new_cache(model, B, needed if cache_length is None else cache_length(model, needed))
    # Next position of each row = how many real tokens it has; precomputed for every step.
    start = torch.full((B,), T, device=device) if attention_mask is None else attention_mask.sum(-1)
    positions = start[:, None] + torch.arange(max_new_tokens, device=device)  # (B, N)
    stops = torch.tensor(list(stop_token_ids), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    seen = seen_tokens(input_ids, attention_mask, model.config.vocab_size) if sampling.uses_history else None

    logits = prefill(model, input_ids, cache, attention_mask)
    for step in range(max_new_tokens):
        token = sample(logits, sampling, generator, seen)  # (B,)
        if stops.numel():
            token = token.masked_fill(finished, pad_token_id)
            finished = finished | (token[:, None] == stops).any(dim=1)  # (isin is slower for a few ids)
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        yield token
        if step + 1 == max_new_tokens or (stops.numel() and bool(finished.all())):
            return
        logits = decode_fn(model, token[:, None], positions[:, step:step + 1], cache)


@torch.no_grad()
def generate(model: MiniLlama, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             max_new_tokens: int = 64, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, repetition_penalty: float = 1.0,
             stop_token_ids: Iterable[int] | None = None, pad_token_id: int | None = None,
             seed: int | None = None, generator: torch.Generator | None = None,
             compile: bool = False) -> torch.Tensor:
    """Continue each prompt row; returns (B, T + n) token ids, the prompt included (as transformers does).

    input_ids (B, T), left-padded when rows differ in length, with attention_mask (B, T) 1 = token.
    temperature 0 is greedy; top_k / top_p / min_p / repetition_penalty follow transformers' rules.
    stop_token_ids: None stops at the model's EOS (if its config has one), () never stops early; after
    a row stops, its remaining columns hold `pad_token_id` (default: `special.pad_token_id`: the
    config's pad, else the first stop token, else 0).
    seed or generator make sampling reproducible. compile: run the decode step through torch.compile.
    """
    sampling = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty)
    input_ids, attention_mask = check_prompt(input_ids, attention_mask)
    stops = default_stop_ids(model, stop_token_ids)
    tokens = list(iter_tokens(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens, sampling=sampling, stop_token_ids=stops,
        pad_token_id=special.pad_token_id(model.config, stops) if pad_token_id is None else pad_token_id,
        generator=make_generator(seed, generator, input_ids.device),
        decode_fn=compiled_decode_one_token() if compile else decode_one_token))
    if not tokens:
        return input_ids
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)


def compiled_decode_one_token() -> DecodeFn:
    """A new `CompiledDecodeStep`: `decode_one_token` through torch.compile."""
    from minillama.generate.compiled import CompiledDecodeStep

    return CompiledDecodeStep()
