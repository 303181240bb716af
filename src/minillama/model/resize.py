"""Growing a trained model's vocabulary: more rows in `embed_tokens` and `lm_head`, the old rows
untouched, so the model's outputs on old-vocabulary inputs are unchanged (the new rows only add
logit columns).

How the new rows start (docs/tokenizer.md, "Extending the vocabulary", measures them):
- `random`: the model's initialisation, normal(0, initializer_range);
- `mean`: the mean of the old rows (a new token starts as an "average token");
- `subword`: the mean of the rows of the old tokens the new token used to be spelled with (its
  decomposition under the old tokenizer), so it starts near what the model read there before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from minillama.errors import MiniLlamaError

log = logging.getLogger(__name__)

INITS = ("mean", "random", "subword")
EXTENSION_FILE = "vocab_extension.json"  # written beside the weights: which rows are new, and how they started


def _new_rows(old: torch.Tensor, count: int, init: str, spellings: Sequence[Sequence[int]] | None, std: float,
              generator: torch.Generator | None) -> torch.Tensor:
    """(count, C) rows for a (V, C) matrix `old`."""
    if init == "random":
        rows = torch.empty(count, old.shape[1], dtype=torch.float32)
        return nn.init.normal_(rows, 0.0, std, generator=generator).to(old.dtype)
    if init == "mean":
        return old.float().mean(0, keepdim=True).expand(count, -1).to(old.dtype).clone()
    if spellings is None or len(spellings) != count:
        raise ValueError(f"init='subword' needs one spelling (old token ids) per new token ({count})")
    return torch.stack([old[list(ids)].float().mean(0) for ids in spellings]).to(old.dtype)


@torch.no_grad()
def resize_token_embeddings(model: nn.Module, vocab_size: int, init: str = "subword", *,
                            spellings: Sequence[Sequence[int]] | None = None,
                            generator: torch.Generator | None = None) -> nn.Module:
    """Grow `model`'s (a `MiniLlama`) embedding and LM head from V to `vocab_size` rows in place
    and update its config; a tied head stays tied. `spellings[k]`: the old ids new token V + k
    was spelled with (needed by init="subword"). Returns the model."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, not {init!r}")
    embed = model.model.embed_tokens
    old_size = embed.weight.shape[0]
    count = vocab_size - old_size
    if count < 1:
        raise ValueError(f"vocab_size {vocab_size} does not grow the model's {old_size} tokens")
    std = model.config.initializer_range
    tied = model.lm_head.weight is embed.weight
    old_embed = embed.weight.detach()
    embed.weight = nn.Parameter(torch.cat([old_embed, _new_rows(old_embed, count, init, spellings, std, generator)]))
    embed.num_embeddings = vocab_size
    if tied:
        model.lm_head.weight = embed.weight
    else:
        old_head = model.lm_head.weight.detach()
        model.lm_head.weight = nn.Parameter(
            torch.cat([old_head, _new_rows(old_head, count, init, spellings, std, generator)]))
    model.lm_head.out_features = vocab_size
    model.config.vocab_size = vocab_size
    return model


def resize_model_dir(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, init: str,
                     out_dir: str | os.PathLike, *, seed: int = 0, overwrite: bool = False) -> Mapping[str, int]:
    """Load the model in `model_dir`, grow it to the extended tokenizer in `tokenizer_dir` (which
    must extend the tokenizer saved with the model, when there is one) and write model + extended
    tokenizer to `out_dir` (atomically, checksummed; new, empty or an earlier model directory).
    Refuses (`MiniLlamaError`) before writing anything when the vocabularies do not fit.
    Returns {"old": V, "new": V'}."""
    from minillama.files import atomic_directory, check_output
    from minillama.model.config import load_config
    from minillama.model.io import write_causal_lm_dir
    from minillama.model.llama import MiniLlama
    from minillama.tokenizer import Tokenizer
    from minillama.tokenizer.extend import check_extends, old_spellings

    if init not in INITS:
        raise MiniLlamaError(f"--init must be one of {', '.join(INITS)}, not {init!r}")
    model_dir, tokenizer_dir = Path(model_dir), Path(tokenizer_dir)
    inputs = (model_dir, tokenizer_dir)
    check_output(out_dir, "model", overwrite=overwrite, inputs=inputs)
    extended = Tokenizer.from_pretrained(tokenizer_dir)
    config = load_config(model_dir)
    old_size = config.vocab_size
    if (model_dir / "tokenizer.json").is_file():
        old = Tokenizer.from_pretrained(model_dir)
        if old.vocab_size != old_size:
            raise MiniLlamaError(f"the model in {model_dir} has {old_size} embedding rows but its tokenizer "
                                 f"{old.vocab_size} tokens; resize only a model trained with its tokenizer's "
                                 "vocabulary")
        check_extends(old, extended)
    else:
        if extended.vocab_size <= old_size:
            raise MiniLlamaError(f"the tokenizer has {extended.vocab_size} tokens, no more than the model's "
                                 f"{old_size}: it does not extend the model's vocabulary")
        log.warning("%s holds no tokenizer: assuming the first %d tokens of %s are the model's", model_dir,
                    old_size, tokenizer_dir)
    model = MiniLlama.from_pretrained(model_dir)
    spellings = list(old_spellings(extended, old_size).values()) if init == "subword" else None
    generator = torch.Generator().manual_seed(seed)
    resize_token_embeddings(model, extended.vocab_size, init, spellings=spellings, generator=generator)
    with atomic_directory(out_dir, "model", overwrite=overwrite, inputs=inputs) as tmp:
        write_causal_lm_dir(model.config, model.state_dict(), tmp)
        extended.save_pretrained(tmp)
        record = {"old_vocab_size": old_size, "vocab_size": extended.vocab_size, "init": init, "source": str(model_dir)}
        (tmp / EXTENSION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {"old": old_size, "new": extended.vocab_size}
