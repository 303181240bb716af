"""The NumPy model against the torch model (which itself matches transformers): logits, the KV
cache, every RoPE variant, checkpoint loading (single file, sharded, bf16) and bad input."""

from __future__ import annotations

import json
import shutil
from functools import partial

import helpers
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from minillama.errors import CheckpointError
from minillama.model import KVCache, ModelConfig
from minillama.model.config import config_from_hf_dict, load_config
from minillama.numpy_model import NumpyLlama, read_state

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
# name -> (config overrides, sequence length). The llama3 and yarn settings put some frequencies in
# each of their regimes (kept, ramped, squeezed); dynamic runs past max_position_embeddings.
CONFIGS = {
    "mha-tied": (dict(num_key_value_heads=4), 24),
    "gqa-untied": (dict(tie_word_embeddings=False), 24),
    "mqa-qwen2-bias": (dict(num_key_value_heads=1, attention_bias=True, tie_word_embeddings=False), 24),
    "head-dim-32": (dict(head_dim=32, rope_theta=500000.0), 24),
    "linear": (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), 24),
    "dynamic-past-context": (dict(max_position_embeddings=16,
                                  rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 40),
    "llama3": (dict(rope_scaling=LLAMA3), 24),
    "yarn": (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                  max_position_embeddings=256), 24),
    "yarn-mscale": (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "mscale": 0.707,
                                       "mscale_all_dim": 1.0, "beta_fast": 16, "truncate": False}), 24),
}


random_model = partial(helpers.random_model, BASE, perturb=0.1)  # norms and biases random too
numpy_twin = helpers.numpy_twin


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_torch(name):
    overrides, length = CONFIGS[name]
    model = random_model(**overrides)
    ids = torch.randint(0, BASE["vocab_size"], (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    logits = numpy_twin(model).forward(ids.numpy())
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["gqa-untied", "mqa-qwen2-bias", "yarn", "llama3"])
def test_cached_decoding_equals_full_forward(name):
    model = numpy_twin(random_model(**CONFIGS[name][0]))
    ids = np.random.default_rng(0).integers(0, BASE["vocab_size"], size=(2, 20))
    full = model.forward(ids)
    cache = model.new_cache(batch_size=2, max_seq_len=20)
    chunks = [model.forward(ids[:, :7], cache)]  # prefill
    chunks += [model.forward(ids[:, t:t + 1], cache) for t in range(7, 15)]  # one token at a time
    chunks.append(model.forward(ids[:, 15:], cache))  # several new tokens after a cache
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=0, atol=1e-5)
    assert cache.length == 20


def test_dynamic_rope_with_cache_matches_torch():
    """Dynamic scaling recomputes the frequencies per call from its last position, so cached keys
    keep the old ones: not the full forward, but exactly what the torch model does."""
    overrides, _ = CONFIGS["dynamic-past-context"]
    model = random_model(**overrides)
    twin = numpy_twin(model)
    ids = torch.randint(0, BASE["vocab_size"], (1, 30), generator=torch.Generator().manual_seed(2))
    cache, twin_cache = KVCache(model.config, 1, 30), twin.new_cache(1, 30)
    for start, end in [(0, 12), (12, 20), *((t, t + 1) for t in range(20, 30))]:
        with torch.no_grad():
            expected = model(ids[:, start:end], cache=cache).logits.numpy()
        np.testing.assert_allclose(twin.forward(ids[:, start:end].numpy(), twin_cache), expected,
                                   rtol=0, atol=1e-4)


def test_logits_to_keep_and_single_sequence():
    model = numpy_twin(random_model())
    ids = np.arange(10)
    full = model.forward(ids)  # (T,) in -> (T, V) out
    assert full.shape == (10, BASE["vocab_size"])
    np.testing.assert_allclose(model.forward(ids[None], logits_to_keep=1)[0], full[-1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("tie", [True, False])
def test_from_pretrained_matches_torch(tmp_path, tie):
    model = random_model(tie_word_embeddings=tie, attention_bias=not tie)
    model.save_pretrained(tmp_path / "ckpt")
    twin = NumpyLlama.from_pretrained(tmp_path / "ckpt")
    ids = torch.arange(12)[None]
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    np.testing.assert_allclose(twin.forward(ids.numpy()), expected, rtol=0, atol=1e-4)


def _write_dir(directory, config: ModelConfig, files: dict[str, dict[str, torch.Tensor]]) -> None:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", **config.to_dict()}))
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, directory / name)


def test_sharded_checkpoint(tmp_path):
    model = random_model(tie_word_embeddings=False)
    state = model.state_dict()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": {k: state[k] for k in keys[:7]},
              "model-00002-of-00002.safetensors": {k: state[k] for k in keys[7:]}}
    _write_dir(tmp_path / "sharded", model.config, shards)
    weight_map = {key: name for name, tensors in shards.items() for key in tensors}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    twin = NumpyLlama.from_pretrained(tmp_path / "sharded")
    with torch.no_grad():
        expected = model(torch.arange(9)[None]).logits[0].numpy()
    np.testing.assert_allclose(twin.forward(np.arange(9)), expected, rtol=0, atol=1e-4)


def test_bf16_and_fp16_weights_are_widened_exactly(tmp_path):
    model = random_model()
    state = model.state_dict()
    state.pop("lm_head.weight")  # tied: stored once
    half = {k: v.to(torch.bfloat16 if "mlp" in k else torch.float16) for k, v in state.items()}
    _write_dir(tmp_path / "half", model.config, {"model.safetensors": half})
    loaded = read_state(tmp_path / "half")
    for key, tensor in half.items():
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], tensor.float().numpy())
    NumpyLlama.from_pretrained(tmp_path / "half")  # and it loads as a model


def test_bad_checkpoints_and_inputs(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="no config.json"):
        NumpyLlama.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "ok", broken)
    (broken / "checksums.sha256").unlink()
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="missing"):
        NumpyLlama.from_pretrained(broken)
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(CheckpointError, match="shape"):
        NumpyLlama.from_pretrained(broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        NumpyLlama.from_pretrained(broken)
    with pytest.raises(CheckpointError, match="not supported"):
        config_from_hf_dict({**config, "model_type": "gpt2"})
    assert load_config(tmp_path / "ok").to_dict() == model.config.to_dict()

    twin = numpy_twin(model)
    with pytest.raises(ValueError, match="vocab_size"):
        twin.forward([1, -1])
    with pytest.raises(ValueError, match="shape"):
        twin.forward(np.zeros((1, 0), dtype=np.int64))
    cache = twin.new_cache(1, 4)
    twin.forward([[1, 2, 3]], cache)
    with pytest.raises(ValueError, match="KV cache"):
        twin.forward([[4, 5]], cache)
