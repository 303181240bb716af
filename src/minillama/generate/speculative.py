"""Speculative decoding: a small draft model guesses k tokens, the target checks them in one forward.

Each round the draft samples d_1..d_k from its distributions q_1..q_k; the target then scores the
whole guess at once, giving its own distributions p_1..p_{k+1} at those positions. Token d_i is
kept with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection a replacement is drawn
from the residual max(0, p_i - q_i) (normalised); if all k are kept, a bonus token comes from
p_{k+1}. Every emitted token is then distributed exactly as the target alone would sample it
(Leviathan et al. 2023; Chen et al. 2023): P(emit x) = min(p, q)(x) + (1 - sum min(p, q)) * residual(x)
= p(x). Greedy decoding is the special case of one-hot p and q: keep d_i while it equals the
target's argmax, then emit the target's argmax, so the output is exactly the target's greedy output.
The speed-up comes from the target running once per round instead of once per token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from minillama.generate.decode import check_prompt, default_stop_ids, make_generator, new_cache
from minillama.generate.sampling import SamplingConfig, probabilities, sample_from_probs
from minillama.model import KVCache, MiniLlama


@dataclass
class SpeculativeStats:
    """Counters of one `speculative_generate` call."""

    rounds: int = 0  # target forwards after the prompt
    proposed: int = 0  # draft tokens checked by the target
    accepted: int = 0  # draft tokens kept

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def accept_draft(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[int, int]:
    """The rejection-sampling rule. draft_tokens (k,), draft_probs q (k, V), target_probs p (k+1, V),
    where row i of p is the target's distribution for the position of draft token i (row k: after
    the whole guess). Returns (n, token): keep draft_tokens[:n], then emit `token`."""
    k = draft_tokens.shape[0]
    steps = torch.arange(k, device=draft_tokens.device)
    p_draft = target_probs[steps, draft_tokens]  # (k,) p_i(d_i)
    q_draft = draft_probs[steps, draft_tokens]  # (k,) q_i(d_i) > 0: d_i was drawn from q_i
    u = torch.rand(k, generator=generator, device=draft_tokens.device)
    keep = u * q_draft < p_draft  # P(keep) = min(1, p / q)
    n = int(keep.int().cumprod(0).sum())  # leading run of kept tokens
    if n == k:
        dist = target_probs[k]  # all kept: a bonus token from the target's next distribution
    else:
        dist = (target_probs[n] - draft_probs[n]).clamp_(min=0)
        if not bool(dist.sum() > 0):  # p == q up to rounding: then the rejection had probability ~0
            dist = target_probs[n]
    return n, int(sample_from_probs(dist[None], generator))


def _greedy_accept(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """Greedy: keep the leading draft tokens that equal the target's argmax, then emit its argmax."""
    best = target_logits.argmax(-1)  # (k+1,)
    k = draft_tokens.shape[0]
    n = int((draft_tokens == best[:k]).int().cumprod(0).sum())
    return n, int(best[n])


def _with_seen(seen: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor | None:
    """seen (1, V) -> (len(tokens) + 1, V): row i also marks tokens[:i] (for the repetition penalty)."""
    if seen is None:
        return None
    rows = seen.repeat(tokens.shape[0] + 1, 1)
    for i, token in enumerate(tokens.tolist()):
        rows[i + 1:, token] = True
    return rows


def _forward(model: MiniLlama, tokens: torch.Tensor, cache: KVCache, keep: int) -> torch.Tensor:
    """Feed tokens (n,) into the cache; logits of the last `keep` positions (keep, V)."""
    return model(tokens[None], cache=cache, logits_to_keep=keep).logits[0]


def iter_speculative(target: MiniLlama, draft: MiniLlama, input_ids: torch.Tensor, *, max_new_tokens: int,
                     num_draft_tokens: int, sampling: SamplingConfig, stop_token_ids: Iterable[int] = (),
                     generator: torch.Generator | None = None,
                     stats: SpeculativeStats | None = None) -> Iterator[list[int]]:
    """Yield the tokens each round adds (1 to num_draft_tokens + 1 of them), for one prompt (1, T).
    Ends after max_new_tokens or a stop token (which is yielded). Call under `torch.no_grad()`."""
    if not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft's vocabulary ({draft.config.vocab_size}) differs from the target's "
                         f"({target.config.vocab_size}); use a draft trained with the same tokenizer")
    input_ids, _ = check_prompt(input_ids, None)
    if input_ids.shape[0] != 1:
        raise ValueError("speculative decoding takes one prompt at a time (batch size 1)")
    device, T, k = input_ids.device, input_ids.shape[1], num_draft_tokens
    stats = SpeculativeStats() if stats is None else stats
    stops = set(stop_token_ids)
    end = T + max_new_tokens

    tokens = torch.zeros(end + k + 1, dtype=torch.long, device=device)
    tokens[:T] = input_ids[0]
    length = T  # tokens[:length] are the prompt and the output so far
    target_cache = new_cache(target, 1, tokens.shape[0])
    draft_cache = new_cache(draft, 1, tokens.shape[0])
    if T > 1:  # the caches hold everything but the newest token, which the next round feeds
        _forward(target, tokens[:T - 1], target_cache, 1)
        _forward(draft, tokens[:T - 1], draft_cache, 1)
    seen = None
    if sampling.uses_history:
        seen = torch.zeros(1, target.config.vocab_size, dtype=torch.bool, device=device)
        seen[0, input_ids[0]] = True

    while length < end:
        guess = min(k, end - length - 1)  # the round also emits one token of the target's own
        # Draft: catch up on the tokens it has not seen, then guess `guess` tokens one by one.
        draft_probs = []
        fed = tokens[draft_cache.length:length]
        for i in range(guess):
            logits = _forward(draft, fed, draft_cache, 1)
            history = None if seen is None else _with_seen(seen, tokens[length:length + i])[-1:]
            q = probabilities(logits, sampling, history)
            fed = q.argmax(-1) if sampling.greedy else sample_from_probs(q, generator)
            tokens[length + i] = fed[0]
            draft_probs.append(q[0])
        guessed = tokens[length:length + guess]

        # Target: score the newest token and the whole guess in one forward.
        target_logits = _forward(target, tokens[target_cache.length:length + guess], target_cache, guess + 1)
        if sampling.greedy and not sampling.uses_history:
            n, token = _greedy_accept(guessed, target_logits)
        else:
            p = probabilities(target_logits, sampling, _with_seen(seen, guessed))
            q = torch.stack(draft_probs) if guess else p[:0]
            n, token = accept_draft(guessed, q, p, generator)
        stats.rounds += 1
        stats.proposed += guess
        stats.accepted += n
        tokens[length + n] = token
        new = tokens[length:length + n + 1].tolist()
        stop_at = next((i for i, t in enumerate(new) if t in stops), None)
        new = new if stop_at is None else new[:stop_at + 1]
        if seen is not None:
            seen[0, new] = True
        length += len(new)
        # Roll the caches back to the kept tokens (the rejected guesses' slots get overwritten).
        target_cache.length = min(target_cache.length, length - 1)
        draft_cache.length = min(draft_cache.length, length - 1)
        yield new
        if stop_at is not None:
            return


@torch.no_grad()
def speculative_generate(target: MiniLlama, draft: MiniLlama, input_ids: torch.Tensor, *,
                         max_new_tokens: int = 64, num_draft_tokens: int = 4, temperature: float = 1.0,
                         top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                         repetition_penalty: float = 1.0, stop_token_ids: Iterable[int] | None = None,
                         seed: int | None = None, generator: torch.Generator | None = None,
                         ) -> tuple[torch.Tensor, SpeculativeStats]:
    """Sample from `target` with `draft`'s help (same tokenizer). One prompt (T,) or (1, T);
    returns ((1, T + n) ids with the prompt, stats). Settings mean what they mean in `generate`,
    and the output follows the same distribution as `generate(target, ...)`."""
    sampling = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty)
    input_ids, _ = check_prompt(input_ids, None)
    stats = SpeculativeStats()
    rounds = iter_speculative(target, draft, input_ids, max_new_tokens=max_new_tokens,
                              num_draft_tokens=num_draft_tokens, sampling=sampling,
                              stop_token_ids=default_stop_ids(target, stop_token_ids),
                              generator=make_generator(seed, generator, input_ids.device), stats=stats)
    new = [token for tokens in rounds for token in tokens]
    return torch.cat([input_ids, input_ids.new_tensor([new])], dim=1), stats
