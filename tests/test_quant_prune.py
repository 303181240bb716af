"""Pruning: the masks against their definitions, fine-tuning that keeps the zeros (and resumes
exactly), and the prune command and sweep."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_model
from test_train_loop import MODEL, TOKENS, RandomWindows, losses, make_config

from minillama.cli import main
from minillama.model import MiniLlama, ModelConfig
from minillama.quant.linear import quantizable_linears
from minillama.quant.prune import apply_masks, magnitude_masks, sparsity_of, two_four_mask
from minillama.tokenizer import Tokenizer
from minillama.train.distributed import Distributed
from minillama.train.loop import Trainer

SHAPE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def test_layer_and_global_magnitude_masks():
    model = random_model(SHAPE, seed=0)
    weights = {name: linear.weight.detach().clone() for name, linear in quantizable_linears(model).items()}
    per_layer = magnitude_masks(model, 0.3, "layer")
    for name, mask in per_layer.items():
        w = weights[name].abs()
        assert (~mask).sum() == int(0.3 * w.numel())
        assert w[~mask].max() <= w[mask].min()  # the smallest go
    global_masks = magnitude_masks(model, 0.3, "global")
    pruned = torch.cat([weights[n].abs()[~m] for n, m in global_masks.items()])
    kept = torch.cat([weights[n].abs()[m] for n, m in global_masks.items()])
    assert pruned.max() <= kept.min()  # one threshold for all layers
    counts = [(~m).float().mean().item() for m in global_masks.values()]
    assert max(counts) > min(counts)  # ... so layers give up different shares (o_proj/down_proj are smaller)
    assert apply_masks(model, global_masks) == pytest.approx(0.3, abs=1e-4)
    assert sparsity_of(model) == pytest.approx(0.3, abs=1e-4)


def test_two_four_keeps_the_two_largest_of_every_four():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    mask = two_four_mask(w)
    groups, keep = w.abs().reshape(8, 4, 4), mask.reshape(8, 4, 4)
    assert (keep.sum(-1) == 2).all()
    assert (groups.masked_fill(~keep, float("inf")).amin(-1) >= groups.masked_fill(keep, -1).amax(-1)).all()


def _fit_pruned(out_dir, max_steps, schedule_steps=None):
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig(**MODEL))
    apply_masks(model, magnitude_masks(model, 0.5, "layer"))
    config = make_config(out_dir, max_steps=max_steps, schedule_steps=schedule_steps)
    config.run.keep_sparsity, config.run.log_interval = True, 1
    trainer = Trainer(config, model, RandomWindows(TOKENS), None, Distributed(0, 1, 0, torch.device("cpu")))
    trainer.fit()
    return model


def test_fine_tuning_keeps_the_zeros_and_resumes_exactly(tmp_path):
    straight = _fit_pruned(tmp_path / "a", 6)
    assert sparsity_of(straight) == pytest.approx(0.5, abs=1e-3)
    _fit_pruned(tmp_path / "b", 3, schedule_steps=6)
    resumed = _fit_pruned(tmp_path / "b", 6)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 7)) and [a[s] for s in a] == [b[s] for s in a]
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_prune_command_and_sweep(small_corpus, tmp_path, capsys, single_thread):
    float_dir = tmp_path / "float"
    random_model({**SHAPE, "vocab_size": 512, "max_position_embeddings": 128}, seed=2).save_pretrained(float_dir)
    Tokenizer.from_pretrained(small_corpus[0]).save_pretrained(float_dir)
    assert main(["prune", "--checkpoint", str(float_dir), "--method", "2:4", "--out", str(tmp_path / "p")]) == 0
    assert "pruned 50.0% of the block weights (2:4)" in capsys.readouterr().out
    assert sparsity_of(MiniLlama.from_pretrained(tmp_path / "p")) == 0.5
    assert (tmp_path / "p" / "tokenizer.json").is_file()
    assert main(["prune", "--checkpoint", str(float_dir), "--sweep", "--max-documents", "3", "--seq-len", "64",
                 "--out", str(tmp_path / "sweep")]) == 0
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert len(rows) == 21 and rows[0]["sparsity"] == 0 and rows[-1]["method"] == "2:4"
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
    assert "| layer | 50% |" in capsys.readouterr().out
