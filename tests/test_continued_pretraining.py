"""Continued pretraining through the one Trainer: run.init_from a resized model, a weighted data
mixture (deterministic, exactly resumable), and the embedding-only warmup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minillama.cli import main
from minillama.data import write_token_file
from minillama.data.mixture import MixtureLoader, parse_mixture
from minillama.errors import MiniLlamaError
from minillama.model import MiniLlama, ModelConfig
from minillama.model.resize import resize_model_dir
from minillama.tokenizer import Tokenizer
from minillama.tokenizer.extend import extend_tokenizer
from minillama.train.checkpoint import resolve_checkpoint

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def test_parse_mixture():
    assert parse_mixture("tinystories-sample") is None
    assert parse_mixture("a.txt:3,b:1") == [("a.txt", 0.75), ("b", 0.25)]
    for bad in ("a:1,b", "a:0,b:1", "a:1,a:2"):
        with pytest.raises(MiniLlamaError):
            parse_mixture(bad)


def test_mixture_loader_is_deterministic_weighted_and_resumable(tmp_path):
    files = [write_token_file(tmp_path / "a.bin", np.zeros(1000, dtype=np.uint16)),
             write_token_file(tmp_path / "b.bin", np.ones(500, dtype=np.uint16))]
    loader = MixtureLoader(files, [0.7, 0.3], batch_size=50, seq_len=8, seed=3)
    batches = [next(loader) for _ in range(20)]
    share = float(torch.cat([inputs for inputs, _ in batches]).float().mean())
    assert 0.25 < share < 0.35  # windows from b (all ones) about 30% of the time
    state = loader.state_dict()
    following = next(loader)
    again = MixtureLoader(files, [0.7, 0.3], batch_size=50, seq_len=8, seed=3)
    again.load_state_dict(state)
    assert torch.equal(next(again)[0], following[0])
    # two ranks of batch 25 see exactly the rows of one process with batch 50
    ranks = [MixtureLoader(files, [0.7, 0.3], batch_size=25, seq_len=8, seed=3, rank=r, world_size=2)
             for r in (0, 1)]
    assert torch.equal(torch.cat([next(r)[0] for r in ranks]), batches[0][0])
    with pytest.raises(MiniLlamaError, match="weights"):
        MixtureLoader(files, [0.5, 0.5], batch_size=50, seq_len=8, seed=3).load_state_dict(state)


@pytest.fixture(scope="module")
def resized(small_corpus, tmp_path_factory):
    """(an 'English' model directory with its 512-token tokenizer, the resized model directory)."""
    from minillama.data.sources import DATASETS

    root = tmp_path_factory.mktemp("continued")
    chinese = root / "zh.txt"
    chinese.write_text("\n".join(list(DATASETS["tatoeba-zh"].train.documents())[:3000]), encoding="utf-8")
    extend_tokenizer(small_corpus[0], [chinese], 60, root / "ext")
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig(vocab_size=512, **SHAPE))
    model.save_pretrained(root / "english")
    Tokenizer.from_pretrained(small_corpus[0]).save_pretrained(root / "english")
    resize_model_dir(root / "english", root / "ext", "subword", root / "resized")
    return root / "english", root / "resized"


def _train(out, init_from, dataset, steps, *extra):
    argv = ["train", "--run.out_dir", str(out), "--run.init_from", str(init_from), "--data.dataset", dataset,
            "--data.seq_len", "32", "--data.batch_size", "2", "--budget.max_steps", str(steps),
            "--budget.schedule_steps", "6", "--run.threads", "1", "--run.progress", "false", "--run.plot", "false",
            "--run.eval_interval", "3", "--run.eval_batches", "2", "--run.checkpoint_interval", "3", *extra]
    assert main(argv) == 0


def test_mixture_training_from_a_resized_model_resumes_exactly(resized, small_corpus, tmp_path, keep_thread_count):
    dataset = f"{small_corpus[2]}:0.7,tatoeba-zh:0.3"
    _train(tmp_path / "straight", resized[1], dataset, 6)
    _train(tmp_path / "twice", resized[1], dataset, 3)
    _train(tmp_path / "twice", resized[1], dataset, 6)  # resumes from step 3
    a = MiniLlama.from_pretrained(resolve_checkpoint(tmp_path / "straight")).state_dict()
    b = MiniLlama.from_pretrained(resolve_checkpoint(tmp_path / "twice")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = MiniLlama.from_pretrained(resized[1]).state_dict()
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], start["model.layers.0.mlp.up_proj.weight"])
    saved = Tokenizer.from_pretrained(resolve_checkpoint(tmp_path / "straight"))
    assert saved.fingerprint() == Tokenizer.from_pretrained(resized[1]).fingerprint()
    assert sorted(p.name for p in (tmp_path / "straight" / "data-mixture").iterdir()) == \
        ["0-stories.txt", "1-tatoeba-zh"]


def test_embedding_only_warmup_changes_only_the_new_rows(resized, small_corpus, tmp_path, keep_thread_count):
    _train(tmp_path / "warm", resized[1], "tatoeba-zh", 3, "--optim.trainable", "new-embeddings")
    before = MiniLlama.from_pretrained(resized[1]).state_dict()
    after = MiniLlama.from_pretrained(resolve_checkpoint(tmp_path / "warm")).state_dict()
    for key in before:
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[key][:512], before[key][:512]), key
            assert not torch.equal(after[key][512:], before[key][512:]), key
        else:
            assert torch.equal(after[key], before[key]), key


def test_embedding_only_warmup_needs_a_resized_model(resized, tmp_path, capsys, keep_thread_count):
    argv = ["train", "--run.out_dir", str(tmp_path / "warm"), "--run.init_from", str(resized[0]),
            "--data.dataset", "tatoeba-zh", "--optim.trainable", "new-embeddings", "--data.seq_len", "32"]
    assert main(argv) == 2
    assert "set run.init_from to a model it made" in capsys.readouterr().err
    assert not (tmp_path / "warm" / "data").exists()
