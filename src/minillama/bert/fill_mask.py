"""Fill-mask: the masked LM's most likely tokens for each [MASK] of a text, as transformers'
`pipeline("fill-mask")` computes them (softmax over the vocabulary at the [MASK] position)."""

from __future__ import annotations

from typing import Any

import torch

from minillama.bert.tokenizer import MASK, BertTokenizer
from minillama.errors import MiniLlamaError


@torch.no_grad()
def fill_mask(model: Any, tokenizer: BertTokenizer, text: str, top_k: int = 5) -> list[list[dict[str, Any]]]:
    """For each [MASK] in `text` (in order), the `top_k` candidates: {"token": id, "token_str": its
    text, "score": probability, "sequence": the text with it filled in (the other masks kept)}."""
    if MASK not in text:
        raise MiniLlamaError(f"the text has no {MASK} to fill: {text[:60]!r}; write {MASK} where a word is "
                             f"missing, e.g. \"Lily went to the {MASK}.\"")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    ids, types = tokenizer.encode_for_model(text)
    if len(ids) > model.config.max_position_embeddings:
        raise MiniLlamaError(f"the text is {len(ids)} tokens long, more than the model's "
                             f"{model.config.max_position_embeddings} positions")
    input_ids = torch.tensor([ids], device=next(model.parameters()).device)
    logits = model(input_ids, token_type_ids=torch.tensor([types], device=input_ids.device)).logits[0]  # (T, V)
    positions = [i for i, token in enumerate(ids) if token == tokenizer.mask_token_id]
    results = []
    for position in positions:
        probs = logits[position].float().softmax(-1)
        scores, candidates = probs.topk(min(top_k, probs.numel()))
        row = []
        for score, candidate in zip(scores.tolist(), candidates.tolist(), strict=True):
            filled = list(ids)
            filled[position] = candidate
            row.append({"token": candidate, "token_str": tokenizer.decode([candidate]), "score": score,
                        "sequence": tokenizer.decode(filled[1:-1])})
        results.append(row)
    return results
