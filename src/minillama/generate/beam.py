"""Beam search: keep the `num_beams` most likely partial sequences instead of one.

The rules are transformers' (its vectorised beam search, so outputs match token for token):
- each step, every beam proposes its continuations; the 2 * num_beams best by total log-probability
  are kept, so that num_beams can continue even if the best ones all just ended;
- a candidate ends when it emits EOS or reaches max_new_tokens; among the top num_beams candidates,
  ended ones enter the finished pool scored as sum(log p) / generated_length ** length_penalty
  (length_penalty > 0 favours longer sequences; 0 compares raw log-probabilities);
- the search stops when no running beam can beat the worst finished one (early_stopping=False
  estimates this at the current length; "never" at the longest possible one for a positive
  length_penalty; True stops as soon as num_beams sequences have finished).
Shapes: B prompts, N beams, L = T + max_new_tokens total columns, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from minillama.generate import special
from minillama.generate.decode import check_prompt, decode_one_token, default_stop_ids, new_cache, prefill
from minillama.model import MiniLlama

NEG = -1.0e9  # "impossible" score, as transformers uses (finite, so sums stay ordered)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) -> the beams `index` (B, M) of each row, (B, M, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


def _could_improve(running_scores: torch.Tensor, finished_scores: torch.Tensor, finished: torch.Tensor,
                   generated: int, max_new_tokens: int, early_stopping: bool | str,
                   length_penalty: float) -> torch.Tensor:
    """(B, 1): can the best running beam still beat the worst finished sequence?"""
    length = max_new_tokens if early_stopping == "never" and length_penalty > 0.0 else generated
    best_running = running_scores[:, :1] / (length ** length_penalty)
    worst_finished = torch.where(finished, finished_scores.min(dim=1, keepdim=True).values, NEG)
    return (best_running > worst_finished).any(dim=-1, keepdim=True)


def check_beam_arguments(num_beams: int, max_new_tokens: int, early_stopping: bool | str) -> None:
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@torch.no_grad()
def beam_search(model: MiniLlama, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                num_beams: int = 4, max_new_tokens: int = 64, length_penalty: float = 1.0,
                early_stopping: bool | str = False, stop_token_ids: Iterable[int] | None = None,
                pad_token_id: int | None = None) -> torch.Tensor:
    """The best beam of each prompt row: (B, T + n) ids, prompt included, n the longest best beam;
    shorter ones are padded with `pad_token_id` (default: `special.pad_token_id`, as in `generate`).

    stop_token_ids: None means the model's EOS (if any); () searches to max_new_tokens.
    """
    check_beam_arguments(num_beams, max_new_tokens, early_stopping)
    input_ids, attention_mask = check_prompt(input_ids, attention_mask)
    stop_ids = default_stop_ids(model, stop_token_ids)
    if pad_token_id is None:
        pad_token_id = special.pad_token_id(model.config, stop_ids)
    B, T = input_ids.shape
    N = num_beams
    mask = None if attention_mask is None else attention_mask.repeat_interleave(N, dim=0)
    cache = new_cache(model, B * N, T + max_new_tokens)
    logits = prefill(model, input_ids.repeat_interleave(N, dim=0), cache, mask)  # (B*N, V)
    next_pos = torch.full((B * N, 1), T, device=input_ids.device) if mask is None else mask.sum(-1, keepdim=True)

    def advance(tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        nonlocal next_pos
        cache.reorder(rows)  # each running beam continues from its source beam's cache
        step_logits = decode_one_token(model, tokens, next_pos, cache)
        next_pos = next_pos + 1
        return step_logits

    return search_beams(input_ids, logits, advance, num_beams=N, max_new_tokens=max_new_tokens,
                        length_penalty=length_penalty, early_stopping=early_stopping, stop_ids=stop_ids,
                        pad_token_id=pad_token_id)


def search_beams(input_ids: torch.Tensor, logits: torch.Tensor,
                 advance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, num_beams: int,
                 max_new_tokens: int, length_penalty: float, early_stopping: bool | str,
                 stop_ids: tuple[int, ...], pad_token_id: int,
                 forced_eos_token_id: int | None = None) -> torch.Tensor:
    """The search itself, for any model: `input_ids` (B, T) the prompt (a decoder-only model's, or an
    encoder–decoder's decoder start), `logits` (B*N, V) the next-token logits of each beam after it,
    `advance(tokens (B*N, 1), rows (B*N,))` continues beam i from beam rows[i] with tokens[i] and
    returns the next logits (B*N, V). `forced_eos_token_id`: the only token allowed at the last step
    (transformers' ForcedEOSTokenLogitsProcessor, Marian's default). Returns (B, T + n) as
    `beam_search`."""
    B, T = input_ids.shape
    N, L, V, device = num_beams, T + max_new_tokens, logits.shape[-1], input_ids.device
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    keep = 2 * N  # candidates per step (transformers: max(2, 1 + number of EOS ids) * N; one EOS here)
    if stops.numel() > 1:
        keep = (1 + stops.numel()) * N
    is_top_n = torch.arange(keep, device=device) < N  # only the best N candidates may finish

    # Every beam of a row starts as the prompt; only beam 0 is live at first, or all N would pick
    # the same token.
    running = input_ids[:, None, :].expand(B, N, T)
    running = torch.cat([running, running.new_full((B, N, max_new_tokens), pad_token_id)], dim=-1)  # (B,N,L)
    running_scores = torch.full((B, N), NEG, device=device)
    running_scores[:, 0] = 0.0
    best = running.clone()  # finished pool (B, N, L), with its scores and generated lengths
    best_scores = torch.full((B, N), NEG, device=device)
    best_lengths = torch.zeros(B, N, dtype=torch.long, device=device)
    finished = torch.zeros(B, N, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    row_offset = torch.arange(B, device=device)[:, None] * N
    cur = T
    while True:
        # Total log-probability of every (beam, token) continuation, flattened per row.
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if forced_eos_token_id is not None and cur + 1 == L:
            log_probs = torch.full_like(log_probs, float("-inf"))
            log_probs[:, forced_eos_token_id] = 0.0
        log_probs = log_probs.view(B, N, V) + running_scores[:, :, None]
        top_scores, top_index = torch.topk(log_probs.view(B, N * V), keep)  # (B, K)
        source_beam, token = top_index // V, top_index % V
        candidates = _gather(running, source_beam)  # (B, K, L)
        candidates[:, :, cur] = token
        ends = torch.isin(token, stops) | (cur + 1 >= L)  # (B, K)

        # The best N candidates that have not ended keep running.
        live_scores = top_scores + ends.float() * NEG
        pick = torch.topk(live_scores, N).indices
        running, running_scores = _gather(candidates, pick), _gather(live_scores, pick)
        beam_source = _gather(source_beam, pick)

        # Candidates that just ended (among the best N) compete for the finished pool.
        generated = cur + 1 - T
        scores = top_scores / (generated ** length_penalty)
        pool_full = finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        blocked = pool_full | ~improvable | ~(ends & is_top_n)
        scores = scores + blocked.float() * NEG
        merged_scores = torch.cat([best_scores, scores], dim=1)
        order = torch.topk(merged_scores, N).indices
        best = _gather(torch.cat([best, candidates], dim=1), order)
        best_scores = _gather(merged_scores, order)
        best_lengths = _gather(torch.cat([best_lengths, torch.full_like(token, generated)], dim=1), order)
        finished = _gather(torch.cat([finished, ends & is_top_n], dim=1), order)

        cur += 1
        improvable = improvable & _could_improve(running_scores, best_scores, finished, cur - T,
                                                 max_new_tokens, early_stopping, length_penalty)
        done = ~improvable.any() | (finished.all() & (early_stopping is True)) | ends.all()
        if bool(done):
            break
        logits = advance(running[:, :, cur - 1].reshape(B * N, 1), (beam_source + row_offset).flatten())

    winner = best[:, 0]  # (B, L): pools are sorted best first
    return winner[:, :T + int(best_lengths[:, 0].max())]
