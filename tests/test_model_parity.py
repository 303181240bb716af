"""Our hand-written model against the real transformers, on the directory our exporter writes."""


import json

import helpers
import pytest
import torch

from minillama.export import load_hf, save_hf

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=32, initializer_range=0.2)

# id -> (config overrides, batch, sequence length)
CONFIGS = {
    "mha-tied": (dict(num_key_value_heads=4, tie_word_embeddings=True), 1, 16),
    "gqa2-untied": (dict(num_key_value_heads=2, tie_word_embeddings=False), 3, 20),
    "mqa1": (dict(num_key_value_heads=1), 2, 12),
    "qwen2-bias": (dict(num_key_value_heads=2, attention_bias=True, tie_word_embeddings=False), 2, 16),
    "head-dim-explicit": (dict(num_key_value_heads=2, head_dim=32), 2, 10),
    "rope-linear-long": (dict(num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0}), 2, 50),
    "rope-dynamic-long": (dict(num_key_value_heads=4, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 2, 60),
    "rope-dynamic-short": (dict(rope_scaling={"rope_type": "dynamic", "factor": 4.0}), 1, 20),
    "rope-llama3": (dict(num_key_value_heads=2, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}), 2, 40),
    "rope-yarn": (dict(num_key_value_heads=2, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}), 2, 40),
    "eager-theta": (dict(num_key_value_heads=2, rope_theta=1000.0, attn_implementation="eager"), 2, 24),
}


def random_model(overrides, seed=0):
    return helpers.random_model(BASE, seed, perturb=0.1, **overrides)  # norms and biases tested too


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory):
    overrides, batch, seq = CONFIGS[request.param]
    model = random_model(overrides)
    out = tmp_path_factory.mktemp(request.param)
    save_hf(model, out)
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return model, reference, batch, seq, out


def test_logits_and_loss_match_transformers(exported):
    model, reference, batch, seq, _ = exported
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        ours = model(ids, labels=labels)
        theirs = reference(ids, labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    assert ours.logits.std() > 0.1  # a meaningful comparison, not two near-zero tensors


def test_exported_architecture(exported):
    model, reference, *_ = exported
    expected = "Qwen2ForCausalLM" if model.config.attention_bias else "LlamaForCausalLM"
    assert type(reference).__name__ == expected
    assert set(reference.state_dict()) >= set(model.state_dict()) - {"lm_head.weight"}


def test_import_then_export_is_bitwise_lossless(exported, tmp_path):
    model, _, _, _, out = exported
    imported = load_hf(out)
    save_hf(imported, tmp_path / "again")
    again = load_hf(tmp_path / "again")
    for key, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key
    assert again.config == model.config


def test_imports_a_model_saved_by_transformers(exported, tmp_path):
    model, reference, batch, seq, _ = exported
    reference.save_pretrained(tmp_path / "hf")
    imported = load_hf(tmp_path / "hf")
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    with torch.no_grad():
        torch.testing.assert_close(imported(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_config_json_readable_by_both_rope_spellings(exported):
    model, _, _, _, out = exported
    data = json.loads((out / "config.json").read_text())
    rope = data["rope_parameters"]
    assert rope["rope_theta"] == data["rope_theta"] == model.config.rope_theta
    if model.config.rope_scaling:
        assert data["rope_scaling"]["rope_type"] == rope["rope_type"]
        assert data["rope_scaling"]["factor"] == rope["factor"]
    else:
        assert rope["rope_type"] == "default" and data["rope_scaling"] is None


def test_left_padded_batch_matches_transformers_with_position_ids(tmp_path):
    model = random_model(dict(num_key_value_heads=2, tie_word_embeddings=False))
    save_hf(model, tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, BASE["vocab_size"], (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits  # positions derived from the mask
        theirs = reference(ids, attention_mask=mask, position_ids=positions).logits
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-5, rtol=1e-5)
