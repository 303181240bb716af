"""Where the norms sit in a block (ModelConfig.norm_placement): post-norm and sandwich blocks train,
decode with the cache, save and load; only pre-norm (the LLaMA block) leaves for transformers."""

from __future__ import annotations

import pytest
import torch

from minillama.errors import CheckpointError, MiniLlamaError
from minillama.model import MiniLlama, ModelConfig
from minillama.model.cache import KVCache
from tests.helpers import random_model

SHAPE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def test_unknown_placement_is_refused():
    with pytest.raises(ValueError, match="norm_placement must be one of"):
        ModelConfig(**SHAPE, norm_placement="middle")


def test_post_norm_normalises_the_residual_stream():
    """Post-norm: every block's output is norm(x + f(x)), unit RMS at init (norm weights are 1);
    pre-norm lets the residual stream keep the embedding's small scale."""
    ids = torch.randint(0, 97, (2, 12))
    for placement, unit in (("post", True), ("pre", False)):
        model = random_model(SHAPE, norm_placement=placement)
        outputs = []
        for layer in model.model.layers:
            layer.register_forward_hook(lambda module, args, out, seen=outputs: seen.append(out))
        model(ids)
        rms = torch.stack([out.pow(2).mean(-1).sqrt() for out in outputs])
        assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3) == unit, placement


def test_sandwich_adds_a_norm_on_each_sublayer_output():
    model = random_model(SHAPE, norm_placement="sandwich")
    names = {name for name, _ in model.named_parameters()}
    assert "model.layers.0.attn_output_norm.weight" in names and "model.layers.2.mlp_output_norm.weight" in names
    assert not any("output_norm" in name for name, _ in random_model(SHAPE).named_parameters())


@pytest.mark.parametrize("placement", ["post", "sandwich"])
def test_placement_trains_decodes_and_round_trips(placement, tmp_path):
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig(**SHAPE, norm_placement=placement))
    ids = torch.randint(0, 97, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

    model.eval()
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(model.config, batch_size=4, max_seq_len=16)
        step = torch.cat([model(ids[:, :10], cache=cache).logits]
                         + [model(ids[:, t:t + 1], cache=cache).logits for t in range(10, 16)], dim=1)
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)

    model.save_pretrained(tmp_path / "model")
    loaded = MiniLlama.from_pretrained(tmp_path / "model")
    assert loaded.config.norm_placement == placement
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, full)


@pytest.mark.parametrize("placement", ["post", "sandwich"])
def test_only_pre_norm_leaves_minillama(placement, tmp_path):
    from transformers import AutoModelForCausalLM

    from minillama.export import save_hf
    from minillama.numpy_model import NumpyLlama

    model = random_model(SHAPE, norm_placement=placement)
    with pytest.raises(MiniLlamaError, match="cannot be exported"):
        save_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(CheckpointError, match="pre-norm"):
        NumpyLlama(model.config, {k: v.numpy() for k, v in model.state_dict().items()})

    # A model directory says it is no Llama, so transformers refuses it instead of computing
    # something else with the same weights.
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="minillama"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "model")
