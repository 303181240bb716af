"""The seed's attention sentiment example learns SST-2: well above chance on held-out sentences."""

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "attention_sentiment.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("attention_sentiment", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread(keep_thread_count):
    # A model this small runs best on one thread; more only contend with other work on the machine.
    torch.set_num_threads(1)


def test_the_architecture_is_the_seed_one(example):
    model = example.AttentionSentiment(vocab_size=50, dim=16, heads=4, dropout=0.25)
    attention = model.attention
    assert isinstance(attention, torch.nn.MultiheadAttention) and attention.num_heads == 4
    assert attention.in_proj_bias is None and attention.out_proj.bias is None and attention.dropout == 0.25
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    model.eval()
    # Padding changes nothing: mean pooling and attention see only the real words.
    torch.testing.assert_close(model(ids)[1], model(ids[1:, :2])[0])


def test_it_learns_sentiment_well_above_chance(example, one_thread):
    torch.manual_seed(0)
    vocab = example.sst2_word_vocab()
    train_ids, train_labels = example.sst2_word_ids("train", vocab)
    dev_ids, dev_labels = example.sst2_word_ids("dev", vocab)
    model = example.AttentionSentiment(len(vocab) + 2)
    before = example.accuracy(model, dev_ids, dev_labels)
    losses = example.train(model, train_ids, train_labels, epochs=2)
    after = example.accuracy(model, dev_ids, dev_labels)
    assert losses[-1] < losses[0] < 0.7
    majority = max(float(dev_labels.float().mean()), 1 - float(dev_labels.float().mean()))  # 0.51
    assert after > 0.68 > majority + 0.15, (before, after)
