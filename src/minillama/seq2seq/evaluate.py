"""Translating sentences with a trained model, and scoring translations with sacrebleu: BLEU and
chrF against every reference of each source (multi-reference), with sacrebleu's `zh` tokenization
when the target is Chinese (BLEU on characters of Chinese, as WMT scores it) and `13a` otherwise."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from minillama.errors import MiniLlamaError
from minillama.seq2seq.data import encode_sources, pad_sources
from minillama.seq2seq.decode import beam_search_ids, generate_ids
from minillama.seq2seq.model import MiniSeq2Seq

log = logging.getLogger(__name__)


def output_length(model: MiniSeq2Seq, source_length: int) -> int:
    """New tokens a batch may generate: twice its longest source and some, within the positions
    (a sentence that has not ended by then is repeating itself)."""
    return min(model.config.max_position_embeddings, 2 * source_length + 16)


@torch.no_grad()
def translate(model: MiniSeq2Seq, tokenizer: Any, sentences: Sequence[str], *, num_beams: int = 1,
              batch_size: int = 64, truncate: bool = False, length_penalty: float = 1.0,
              temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
              seed: int | None = None) -> list[str]:
    """The translation of each sentence: greedy (num_beams 1, temperature 0), beam search, or
    sampling (temperature > 0). Sentences are batched by length (less padding), answers come back in
    order. A sentence longer than the model's positions is refused, or cut with `truncate`."""
    device = next(model.parameters()).device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)

    def decode(input_ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        if num_beams > 1:
            return beam_search_ids(model, input_ids, mask, num_beams=num_beams, max_new_tokens=n,
                                   length_penalty=length_penalty)
        return generate_ids(model, input_ids, mask, max_new_tokens=n, temperature=temperature, top_k=top_k,
                            top_p=top_p, generator=generator)

    return translate_with(decode, model, tokenizer, sentences, batch_size=batch_size, truncate=truncate)


@torch.no_grad()
def translate_with(decode: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], model: torch.nn.Module,
                   tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 64,
                   truncate: bool = False) -> list[str]:
    """`translate` with any decoding: decode(input_ids (B, S), attention_mask (B, S), max_new_tokens)
    -> (B, 1 + n) ids, the decoder start token first (another implementation's generate, say);
    `model` gives the config and the device."""
    config = model.config
    rows = encode_sources(tokenizer, sentences, config.max_position_embeddings, truncate)
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    results: list[str] = [""] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        input_ids, mask = (t.to(device) for t in pad_sources([rows[i] for i in chunk], config.pad_token_id))
        out = decode(input_ids, mask, output_length(model, input_ids.shape[1]))
        for i, ids in zip(chunk, out[:, 1:].tolist()):
            if config.eos_token_id in ids:
                ids = ids[:ids.index(config.eos_token_id)]
            results[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return results


def score(hypotheses: Sequence[str], references: Sequence[Sequence[str]], target: str) -> dict[str, float]:
    """Corpus BLEU and chrF of `hypotheses` against each one's references (any number of them);
    `target` is the target language ("zh" selects sacrebleu's Chinese tokenization)."""
    try:
        import sacrebleu
    except ImportError:
        raise MiniLlamaError("scoring translations needs sacrebleu: pip install sacrebleu") from None
    most = max(len(r) for r in references)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(most)]
    bleu = sacrebleu.BLEU(tokenize="zh" if target == "zh" else "13a")
    chrf = sacrebleu.CHRF()
    return {"bleu": round(bleu.corpus_score(list(hypotheses), streams).score, 2),
            "chrf": round(chrf.corpus_score(list(hypotheses), streams).score, 2),
            "bleu_signature": str(bleu.get_signature())}


def evaluate_translations(model: MiniSeq2Seq, tokenizer: Any, test: Sequence[tuple[str, list[str]]],
                          target: str, beams: Sequence[int] = (1, 4), batch_size: int = 64,
                          limit: int | None = None) -> dict[str, Any]:
    """BLEU / chrF of greedy (1) and beam search (e.g. 4) side by side on (source, references) pairs,
    with a few example translations and the time each took."""
    test = list(test)[:limit] if limit else list(test)
    sources, references = [s for s, _ in test], [r for _, r in test]
    report: dict[str, Any] = {"sentences": len(test), "references": sum(len(r) for r in references)}
    for beams_n in beams:
        started = time.perf_counter()
        hypotheses = translate(model, tokenizer, sources, num_beams=beams_n, batch_size=batch_size, truncate=True)
        seconds = time.perf_counter() - started
        name = "greedy" if beams_n == 1 else f"beam{beams_n}"
        report[name] = {**score(hypotheses, references, target), "seconds": round(seconds, 1),
                        "examples": [{"source": s, "translation": h, "references": r}
                                     for s, h, r in list(zip(sources, hypotheses, references))[:5]]}
        log.info("%s: BLEU %.2f, chrF %.2f (%d sentences, %.0f s)", name, report[name]["bleu"],
                 report[name]["chrf"], len(test), seconds)
    return report
