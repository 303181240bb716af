"""NumPy generation: greedy equals the torch model's greedy, seeded sampling, and text streaming
that never cuts a UTF-8 character."""

from __future__ import annotations

from functools import partial

import helpers
import numpy as np
import pytest
import torch

from minillama.model import KVCache
from minillama.numpy_model import (
    NumpyLlama,
    decode_stream,
    sample_next_token,
    sampling_probabilities,
    stream_text,
)

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1)


random_model = partial(helpers.random_model, BASE, perturb=0.1)  # norms and biases random too
numpy_twin = helpers.numpy_twin


class ByteTokenizer:
    """One token per byte: every multi-byte character spans several tokens."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def torch_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The reference: a plain loop over `MiniLlama.forward` with its KV cache, argmax each step."""
    cache = KVCache(model.config, 1, len(prompt) + max_new_tokens)
    ids, new = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(ids, cache=cache, logits_to_keep=1).logits[0, -1].argmax())
            new.append(token)
            ids = torch.tensor([[token]])
    return new


@pytest.mark.parametrize("overrides", [dict(), dict(tie_word_embeddings=False, attention_bias=True)])
def test_greedy_100_tokens_match_torch(overrides):
    model = random_model(seed=3, **overrides)
    prompt = [5, 17, 42, 99, 7]
    expected = torch_greedy(model, prompt, 100)
    assert numpy_twin(model).generate(prompt, 100, temperature=0) == expected
    assert len(set(expected)) > 3  # not a degenerate run of one token


def test_sampling_is_seeded_and_filters_reduce_to_greedy():
    model = numpy_twin(random_model())
    prompt = [1, 2, 3]
    first = model.generate(prompt, 30, temperature=1.0, seed=7)
    assert model.generate(prompt, 30, temperature=1.0, seed=7) == first
    assert model.generate(prompt, 30, temperature=1.0, seed=8) != first
    greedy = model.generate(prompt, 30, temperature=0)
    assert model.generate(prompt, 30, temperature=0.7, top_k=1, seed=1) == greedy
    assert model.generate(prompt, 30, temperature=0.7, top_p=1e-6, seed=1) == greedy
    rng = np.random.default_rng(5)
    assert model.generate(prompt, 10, rng=rng) != model.generate(prompt, 10, rng=rng)  # rng advances


def test_stop_tokens_end_generation():
    model = numpy_twin(random_model())
    greedy = model.generate([1, 2, 3], 20, temperature=0)
    stop = greedy[4]
    stopped = model.generate([1, 2, 3], 20, temperature=0, stop_token_ids=[stop])
    assert stopped == greedy[:greedy.index(stop) + 1]
    assert model.generate([1, 2, 3], 0) == []


def test_sampling_probabilities():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1], dtype=np.float32))
    np.testing.assert_allclose(sampling_probabilities(logits), [0.5, 0.25, 0.15, 0.1], atol=1e-6)
    np.testing.assert_allclose(sampling_probabilities(logits, top_k=2), [2 / 3, 1 / 3, 0, 0], atol=1e-6)
    # top-p keeps the most likely tokens until their mass reaches p: 0.5 + 0.25 >= 0.7
    np.testing.assert_allclose(sampling_probabilities(logits, top_p=0.7), [2 / 3, 1 / 3, 0, 0], atol=1e-6)
    np.testing.assert_allclose(sampling_probabilities(logits, top_p=0.5), [1, 0, 0, 0], atol=1e-6)
    hot = sampling_probabilities(logits, temperature=2.0)  # p ** (1 / 2), renormalised
    np.testing.assert_allclose(hot, np.sqrt([0.5, 0.25, 0.15, 0.1]) / np.sqrt([0.5, 0.25, 0.15, 0.1]).sum(),
                               atol=1e-6)
    for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            sampling_probabilities(logits, **bad)


def test_samples_follow_the_distribution():
    logits = np.log(np.array([0.1, 0.4, 0.2, 0.3]))
    rng = np.random.default_rng(0)
    draws = np.array([sample_next_token(logits, rng, top_k=3) for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0, 4 / 9, 2 / 9, 3 / 9], atol=0.03)
    assert sample_next_token(logits, rng, temperature=0) == 1


def test_decode_stream_never_splits_a_character():
    tokenizer = ByteTokenizer()
    text = "a 世界🙂é!"
    pieces = list(decode_stream(tokenizer, tokenizer.encode(text), tokenizer.encode("prompt ")))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert pieces[:3] == ["a", " ", "世"]
    # An unfinished character at the end is released as U+FFFD, as a full decode shows it.
    assert "".join(decode_stream(tokenizer, tokenizer.encode("ab世")[:-1])) == "ab\ufffd"


def test_stream_text_joins_to_the_generated_text(tmp_path):
    model = random_model(bos_token_id=1)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer = ByteTokenizer()
    twin = NumpyLlama.from_pretrained(tmp_path / "ckpt")
    prompt = "Once 世"
    ids = twin.generate(tokenizer.encode(prompt), 40, temperature=0.8, top_p=0.9, seed=3)
    pieces = list(stream_text(tmp_path / "ckpt", prompt, max_new_tokens=40, temperature=0.8, top_p=0.9,
                              seed=3, tokenizer=tokenizer))
    assert "".join(pieces) == tokenizer.decode(ids)
    # An empty prompt starts from BOS; a loaded model can be passed instead of a directory.
    assert "".join(stream_text(twin, "", max_new_tokens=5, temperature=0, tokenizer=tokenizer)) == \
        tokenizer.decode(twin.generate([1], 5, temperature=0))
    with pytest.raises(ValueError, match="context"):
        next(stream_text(twin, "x" * 200, tokenizer=tokenizer))


def test_stream_text_with_the_project_tokenizer(tmp_path):
    """Text I/O through `minillama.tokenizer.Tokenizer.from_pretrained`, once that exists."""
    tokenizer_module = pytest.importorskip("minillama.tokenizer")
    if not hasattr(tokenizer_module, "Tokenizer") or not hasattr(tokenizer_module, "train_bpe"):
        pytest.skip("minillama.tokenizer is not built yet")
    from minillama.numpy_model import load_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Once upon a time there was a little cat. 世界 🙂\n" * 20, encoding="utf-8")
    vocab, merges = tokenizer_module.train_bpe(str(corpus), 300, ["<|endoftext|>"])
    tokenizer = tokenizer_module.Tokenizer(vocab, merges, ["<|endoftext|>"])
    model = random_model(vocab_size=len(vocab), bos_token_id=0)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = load_tokenizer(tmp_path / "ckpt")
    twin = NumpyLlama.from_pretrained(tmp_path / "ckpt")
    eos = loaded.eos_token_id  # the config names none, so the tokenizer's end-of-text stops the text
    ids = twin.generate(loaded.encode("Once upon"), 30, temperature=1.0, seed=0, stop_token_ids=[eos])
    pieces = list(stream_text(tmp_path / "ckpt", "Once upon", max_new_tokens=30, temperature=1.0, seed=0))
    assert "".join(pieces) == loaded.decode([i for i in ids if i != eos])
