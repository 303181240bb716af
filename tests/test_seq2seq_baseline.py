"""The field's translators built to our config (seq2seq/reference.py) compute our model on our
weights, and every system of experiments/seq2seq_baseline.py trains a few steps on the same batches
and ends with scored translations."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from minillama.seq2seq.config import Seq2SeqConfig
from minillama.seq2seq.decode import generate_ids
from minillama.seq2seq.model import MiniSeq2Seq

transformers = pytest.importorskip("transformers")
from test_seq2seq_model import torch_transformer_like  # noqa: E402

from minillama.seq2seq.reference import MarianTranslator, TorchTransformerMT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(vocab_size=53, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=24,
            pad_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def random_model(seed: int = 0) -> MiniSeq2Seq:
    torch.manual_seed(seed)
    model = MiniSeq2Seq(Seq2SeqConfig(**BASE)).eval()
    with torch.no_grad():  # biases and norms away from their zeros and ones, so that a misplaced one shows
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


def batch(seed: int = 0, rows: int = 4, source: int = 9, target: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, BASE["vocab_size"], (rows, source), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, rows):
        mask[row, source - 2 * row:] = 0
    labels = torch.randint(3, BASE["vocab_size"], (rows, target), generator=g)
    labels[1:, -2:] = -100
    return ids.masked_fill(mask == 0, BASE["pad_token_id"]), mask, labels


def torch_copy_of(ours: MiniSeq2Seq) -> TorchTransformerMT:
    """A TorchTransformerMT holding our weights: the blocks copied as test_seq2seq_model copies them,
    our embeddings, a zero output bias (ours is Marian's zero final_logits_bias)."""
    torch_mt = TorchTransformerMT(ours.config).eval()
    torch_mt.transformer.load_state_dict(torch_transformer_like(ours).state_dict())
    torch_mt.embed.load_state_dict(ours.model.shared.state_dict())
    return torch_mt


def test_marian_translator_is_our_model_on_our_weights():
    ours = random_model()
    marian = MarianTranslator(ours.config, ours.state_dict()).eval()
    ids, mask, labels = batch()
    with torch.no_grad():
        expected = ours(ids, mask, labels=labels, label_smoothing=0.1).loss
        torch.testing.assert_close(marian(ids, mask, labels=labels, label_smoothing=0.1).loss, expected)
    assert torch.equal(marian.greedy_ids(ids, mask, 12), generate_ids(ours, ids, mask, max_new_tokens=12))


def test_torch_transformer_is_our_model_on_our_weights():
    """Post-norm without final LayerNorms, dropouts where ours has them: the same function; its
    uncached greedy loop gives our cached greedy tokens."""
    ours = random_model()
    torch_mt = torch_copy_of(ours)
    assert torch_mt.transformer.encoder.norm is None and torch_mt.transformer.decoder.norm is None
    layer = torch_mt.transformer.decoder.layers[0]
    assert layer.self_attn.dropout == layer.multihead_attn.dropout == 0.0 and layer.dropout.p == 0.0
    ids, mask, labels = batch()
    with torch.no_grad():
        for smoothing in (0.0, 0.1):
            torch.testing.assert_close(torch_mt(ids, mask, labels=labels, label_smoothing=smoothing).loss,
                                       ours(ids, mask, labels=labels, label_smoothing=smoothing).loss)
    assert torch.equal(torch_mt.greedy_ids(ids, mask, 12), generate_ids(ours, ids, mask, max_new_tokens=12))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("seq2seq_baseline", ROOT / "experiments" / "seq2seq_baseline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_every_system_trains_the_same_batches_and_scores(script, tmp_path):
    from minillama.seq2seq import data

    tokenizer = tmp_path / "tokenizer"
    data.train_joint_tokenizer(data.split_pairs(data.tatoeba_pairs())["train"][:1500], 300, tokenizer)
    args = script.parse_args(["--preset", "debug", "--test-sentences", "6", "--threads", "1",
                              "--tokenizer", str(tokenizer), "--out", str(tmp_path)])
    setup = script.prepare(args, tmp_path)
    setup.config.budget.max_minutes, setup.config.budget.max_steps = None, 3  # steps, not minutes: a test
    tokens = script.target_tokens(setup, 3)
    results = []
    for name in script.SYSTEMS:
        result = script.run_system(name, setup, tmp_path)
        assert result["steps"] == 3 and result["target_tokens"] == tokens, name
        assert math.isfinite(result["val_loss"]) and result["tokens_per_s"] > 0, name
        assert result["greedy"]["bleu"] >= 0 and len(result["greedy"]["examples"]) == 5, name
        assert all(isinstance(e["translation"], str) for e in result["greedy"]["examples"])
        assert script.run_system(name, setup, tmp_path) == result  # read back, not retrained
        results.append(result)
    pytest.importorskip("matplotlib")
    assert script.write_results(tmp_path, "a host") == results
    table = (tmp_path / "seq2seq_baseline.md").read_text()
    assert all(f"| {name} | debug | 3 steps x 1 | 3 |" in table for name in script.SYSTEMS)
    assert (tmp_path / "seq2seq_baseline.png").stat().st_size > 0
