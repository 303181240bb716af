"""Internal consistency of the model: cache, padding, attention paths, checkpointing, config."""

import dataclasses
import json

import pytest
import torch

from minillama.errors import CheckpointError
from minillama.files import MANIFEST
from minillama.model import PRESETS, KVCache, MiniLlama, ModelConfig
from minillama.model.config import config_from_hf_dict, config_to_hf_dict

SMALL = dict(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    return MiniLlama(ModelConfig(**{**SMALL, **overrides})).eval()


@pytest.mark.parametrize("overrides", [{}, {"attn_implementation": "eager"},
                                       {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}])
@torch.no_grad()
def test_cached_decoding_equals_full_forward(overrides):
    model = make(**overrides)
    ids = torch.randint(0, 101, (2, 24))
    full = model(ids).logits
    cache = KVCache(model.config, batch_size=2, max_seq_len=32)
    steps = [model(ids[:, :10], cache=cache).logits]  # prefill
    steps.append(model(ids[:, 10:14], cache=cache).logits)  # a chunk after the prefill
    steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(14, 24)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 24


@torch.no_grad()
def test_fixed_size_cache_view_equals_the_growing_view():
    # The compiled decode step's view: writes at given slots, attends over every slot under a mask.
    model = make()
    ids = torch.randint(0, 101, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding in the first row
    growing = KVCache(model.config, batch_size=2, max_seq_len=16)
    fixed = KVCache(model.config, batch_size=2, max_seq_len=16)
    expected = model(ids[:, :8], attention_mask=mask[:, :8], cache=growing).logits
    got = model(ids[:, :8], attention_mask=mask[:, :8], cache=fixed, cache_position=torch.arange(8)).logits
    torch.testing.assert_close(got[mask[:, :8].bool()], expected[mask[:, :8].bool()], atol=1e-5, rtol=1e-5)
    assert fixed.length == 0  # the caller advances the fixed-size view
    fixed.advance(8)
    for t in range(8, 12):
        positions = growing.key_valid[:, :t].sum(-1, keepdim=True)  # (B, 1): real tokens so far
        expected = model(ids[:, t:t + 1], position_ids=positions, cache=growing).logits
        got = model(ids[:, t:t + 1], position_ids=positions, cache=fixed, cache_position=torch.tensor([t])).logits
        fixed.advance(1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cpu_autocast_runs_sdpa_in_float32():
    from minillama.model.llama import sdpa_attention

    q, k, v = (torch.randn(2, 4, 16, 8).to(torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sdpa_attention(q, k, v, None, causal=True)
    assert out.dtype == torch.float32
    reference = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_left_padded_batch_equals_each_sequence_alone():
    model = make()
    lengths = [9, 5, 7]
    seqs = [torch.randint(0, 101, (n,)) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    cache = KVCache(model.config, batch_size=3, max_seq_len=width + 6)
    prefill = model(ids, attention_mask=mask, cache=cache, logits_to_keep=1).logits
    next_tokens = prefill[:, -1].argmax(-1, keepdim=True)
    step = model(next_tokens, attention_mask=torch.ones_like(next_tokens), cache=cache).logits
    for row, seq in enumerate(seqs):
        alone = model(torch.cat([seq, next_tokens[row]])[None]).logits
        torch.testing.assert_close(prefill[row, -1], alone[0, -2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[row, -1], alone[0, -1], atol=1e-5, rtol=1e-5)
    # and without a cache, every real position agrees
    full = model(ids, attention_mask=mask).logits
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(full[row, width - len(seq):], model(seq[None]).logits[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_sdpa_equals_eager_reference_with_and_without_masks():
    sdpa, eager = make(), make(attn_implementation="eager")
    ids = torch.randint(0, 101, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    torch.testing.assert_close(sdpa(ids).logits, eager(ids).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa(ids, attention_mask=mask).logits[mask.bool()],
                               eager(ids, attention_mask=mask).logits[mask.bool()], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 101, (2, 16))
    grads = []
    for enabled in (False, True):
        model = make().train()
        model.set_gradient_checkpointing(enabled)
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_loss_ignores_minus_100_and_label_smoothing_matches_torch():
    model = make()
    ids = torch.randint(0, 101, (2, 10))
    labels = ids.clone()
    labels[0, 4:] = -100
    logits = model(ids).logits
    targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    for eps in (0.0, 0.1):
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 101), targets.reshape(-1),
                                                     ignore_index=-100, label_smoothing=eps)
        torch.testing.assert_close(model(ids, labels=labels, label_smoothing=eps).loss, expected)


def test_logits_to_keep_returns_only_the_last_positions():
    model = make()
    ids = torch.randint(0, 101, (2, 10))
    torch.testing.assert_close(model(ids, logits_to_keep=1).logits, model(ids).logits[:, -1:])


def test_cache_overflow_is_a_clear_error():
    model = make()
    cache = KVCache(model.config, batch_size=1, max_seq_len=4)
    with pytest.raises(ValueError, match="KV cache holds 4 tokens"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_init_scales_residual_projections_and_ties_the_head():
    model = make(num_hidden_layers=8, initializer_range=0.02)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    q = model.model.layers[0].self_attn.q_proj.weight.std().item()
    o = model.model.layers[0].self_attn.o_proj.weight.std().item()
    assert abs(q - 0.02) < 0.003 and abs(o - 0.02 / 4) < 0.001


def test_parameter_count_and_flops():
    model = MiniLlama(ModelConfig.from_preset("stories15M"))
    assert 15.0e6 < model.num_parameters() < 15.5e6  # llama2.c's "15M"
    per_token = model.flops_per_token(256)
    weights = model.num_parameters(exclude_embeddings=True) + model.lm_head.weight.numel()
    assert per_token > 6 * weights and model.flops_per_token(256, training=False) * 3 == per_token


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip_through_json(name, tmp_path):
    config = ModelConfig.from_preset(name)
    (tmp_path / "c.json").write_text(json.dumps(config_to_hf_dict(config)))  # config.json, as saved
    assert config_from_hf_dict(json.loads((tmp_path / "c.json").read_text())) == config
    assert config.head_dim * config.num_attention_heads == config.hidden_size


def test_tinyllm_preset_is_the_seed_shape():
    c = ModelConfig.from_preset("tinyllm")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        288, 8, 8, 4, 4096)


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_size=65), "hidden_size"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(rope_scaling={"rope_type": "ntk-by-parts", "factor": 2.0}), "rope_type"),
    (dict(rope_scaling={"rope_type": "linear"}), "factor"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0.5}), "factor"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(head_dim=15), "head_dim"),
    (dict(attn_implementation="flash"), "attn_implementation"),
    (dict(eos_token_id=500), "eos_token_id"),
])
def test_bad_configs_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**SMALL, **overrides})


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="stories15M"):
        ModelConfig.from_preset("nope")


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = make(tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / MANIFEST).exists()
    loaded = MiniLlama.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)
    assert not list(tmp_path.glob(".*tmp*"))  # no leftovers


def test_a_flipped_bit_is_detected(tmp_path):
    make().save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        MiniLlama.from_pretrained(tmp_path / "ckpt")


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    make().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / MANIFEST).unlink()  # a hand-edited directory
    state = load_file(tmp_path / "ckpt" / "model.safetensors")
    state["model.layers.9.mlp.up_proj.weight"] = state.pop("model.layers.0.mlp.up_proj.weight")
    save_file(state, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing \['model.layers.0.mlp.up_proj.weight'\].*layers.9"):
        MiniLlama.from_pretrained(tmp_path / "ckpt")


def test_unsupported_architectures_are_refused(tmp_path):
    make().save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    (tmp_path / "ckpt" / MANIFEST).unlink()
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="gpt2"):
        MiniLlama.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="no config.json"):
        MiniLlama.from_pretrained(tmp_path)


def test_derived_fields_are_resolved_once_and_saved():
    config = ModelConfig(**{**SMALL, "num_key_value_heads": None})
    assert config.num_key_value_heads == 4 and config.head_dim == 16 and config.num_key_value_groups == 1
    assert ModelConfig.from_dict(dataclasses.asdict(config)) == config
