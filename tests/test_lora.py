"""LoRA: identity at init, what trains, merge / unmerge, PEFT's file format checked against the real
peft on the transformers export, merged export, exact resume, and the CLI."""

import itertools
import json
from functools import partial

import helpers
import pytest
import torch
from safetensors import safe_open

from minillama.export import save_hf
from minillama.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    add_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    parse_targets,
    save_adapter,
    trainable_parameters,
)
from minillama.model import MiniLlama, ModelConfig

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHAPE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.2)


random_model = partial(helpers.random_model, SHAPE)


def perturb_adapters(model, seed=1):
    """Non-zero B (a trained adapter), so the update is tested, not just the zero at init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(0.3 * torch.randn(layer.lora_B.weight.shape, generator=generator))


IDS = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(5))


pytestmark = pytest.mark.usefixtures("keep_thread_count")  # the runs below use one thread


def test_targets_by_name():
    assert parse_targets("v,q") == parse_targets(["q_proj", "v_proj"]) == ("q_proj", "v_proj")
    assert parse_targets("gate_proj, up,down") == ("gate_proj", "up_proj", "down_proj")
    with pytest.raises(ValueError, match="unknown LoRA target"):
        parse_targets("q,qkv")


def test_identity_at_init_and_only_adapters_train():
    model = random_model()
    with torch.no_grad():
        before = model(IDS).logits
    wrapped = add_lora(model, LoRAConfig(r=4, alpha=8, targets=ALL))
    assert len(wrapped) == 7 * 2
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, before)  # B = 0: exactly the base model
    trainable, total = trainable_parameters(model)
    c = model.config
    kv = c.num_key_value_heads * c.head_dim  # k/v are smaller under GQA and still adapted
    C, I = c.hidden_size, c.intermediate_size
    shapes = [(C, C), (C, kv), (C, kv), (C, C), (C, I), (C, I), (I, C)]  # (in, out): q k v o gate up down
    assert trainable == c.num_hidden_layers * sum(4 * (fan_in + fan_out) for fan_in, fan_out in shapes)
    assert total == random_model().num_parameters() + trainable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n in model.state_dict() if ".lora_" in n}


def test_the_first_gradient_reaches_b_not_a():
    model = random_model()
    add_lora(model, LoRAConfig(r=4, alpha=8))
    model(IDS, labels=IDS).loss.backward()
    for layer in lora_layers(model).values():
        assert layer.lora_B.weight.grad.abs().sum() > 0
        assert torch.equal(layer.lora_A.weight.grad, torch.zeros_like(layer.lora_A.weight))
        assert layer.weight.grad is None


def test_merge_and_unmerge_are_idempotent():
    model = random_model()
    add_lora(model, LoRAConfig(r=4, alpha=8, targets=("q", "v", "down")))
    perturb_adapters(model)
    layer = model.model.layers[0].self_attn.q_proj
    base = layer.weight.detach().clone()
    with torch.no_grad():
        unmerged = model(IDS).logits
        layer.merge()
        merged_once = layer.weight.detach().clone()
        layer.merge()
        assert torch.equal(layer.weight, merged_once)
        torch.testing.assert_close(merged_once, base + layer.delta_weight())
        layer.unmerge()
        layer.unmerge()
        torch.testing.assert_close(layer.weight, base, rtol=0, atol=1e-6)
        for module in lora_layers(model).values():
            module.merge()
        torch.testing.assert_close(model(IDS).logits, unmerged, rtol=1e-5, atol=1e-5)


def export_with_adapters(tmp_path, **overrides):
    model = random_model(**overrides)
    base_dir = save_hf(model, tmp_path / "base")
    config = LoRAConfig(r=4, alpha=8, targets=ALL)
    add_lora(model, config)
    perturb_adapters(model)
    save_adapter(model, config, tmp_path / "adapter", str(base_dir))
    return model, base_dir, tmp_path / "adapter"


@pytest.mark.parametrize("overrides", [{}, {"attention_bias": True, "tie_word_embeddings": False}],
                         ids=["llama", "qwen2"])
def test_peft_loads_our_adapters_with_equal_logits(tmp_path, overrides):
    model, base_dir, adapter_dir = export_with_adapters(tmp_path, **overrides)
    with safe_open(adapter_dir / "adapter_model.safetensors", framework="pt") as f:
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in f.keys()
    reference = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with_adapters = peft.PeftModel.from_pretrained(reference, adapter_dir).eval()
    with torch.no_grad():
        ours, theirs = model(IDS).logits, with_adapters(input_ids=IDS).logits
        with with_adapters.disable_adapter():
            base = with_adapters(input_ids=IDS).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (base - theirs).abs().max() > 1e-2  # the adapters do change the output


def test_we_load_adapters_that_peft_wrote(tmp_path):
    model = random_model()
    base_dir = save_hf(model, tmp_path / "base")
    reference = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(3)
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["k_proj", "o_proj", "up_proj"],
                             init_lora_weights=False)  # random A and B: a non-trivial adapter
    peft_model = peft.get_peft_model(reference, config).eval()
    peft_model.save_pretrained(tmp_path / "peft")
    loaded = load_adapter(model, tmp_path / "peft")
    assert loaded.targets == ("k_proj", "o_proj", "up_proj") and loaded.scale == 3.0
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, peft_model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)


def test_merged_export_equals_the_unmerged_model(tmp_path):
    model, base_dir, adapter_dir = export_with_adapters(tmp_path)
    with torch.no_grad():
        unmerged = model(IDS).logits
    merged = merge_lora(model)
    assert not lora_layers(merged) and set(merged.state_dict()) == set(random_model().state_dict())
    save_hf(merged, tmp_path / "merged")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reference(input_ids=IDS).logits, unmerged, rtol=1e-5, atol=1e-5)


def test_merge_lora_cli(tmp_path, capsys):
    from minillama.cli import main

    model, base_dir, adapter_dir = export_with_adapters(tmp_path)
    assert main(["merge-lora", "--base", str(base_dir), "--adapter", str(adapter_dir),
                 "--out", str(tmp_path / "out")]) == 0
    with torch.no_grad():
        expected = model(IDS).logits
        torch.testing.assert_close(MiniLlama.from_pretrained(tmp_path / "out")(IDS).logits, expected,
                                   rtol=1e-5, atol=1e-5)
    assert main(["merge-lora", "--base", str(base_dir), "--adapter", str(base_dir), "--out",
                 str(tmp_path / "bad")]) == 2
    assert "not a LoRA adapter directory" in capsys.readouterr().err


def test_lora_layer_keeps_the_base_names():
    linear = torch.nn.Linear(6, 5)
    layer = LoRALinear(linear, r=2, alpha=4, dropout=0.1)
    assert set(layer.state_dict()) == {"weight", "bias", "lora_A.weight", "lora_B.weight"}
    assert layer.weight is linear.weight and layer.scale == 2.0


def sft_run(base_dir, data, out_dir, max_steps):
    from minillama.finetune.sft import SFTSettings, sft
    from minillama.train.config import TrainConfig

    config = TrainConfig()
    config.data.dataset, config.data.batch_size, config.data.seq_len = str(data), 4, 64
    config.optim.lr, config.optim.warmup_steps = 1e-2, 1
    config.budget.max_steps, config.budget.schedule_steps = max_steps, 6
    config.run.out_dir, config.run.precision = str(out_dir), "float32"
    config.run.progress = config.run.plot = False
    config.run.eval_interval, config.run.eval_batches, config.run.checkpoint_interval = 3, 1, 3
    config.run.threads = 1
    # Dropout on the adapters' input: exact resume needs the RNG state restored, not just the weights.
    return sft(config, SFTSettings(str(base_dir), LoRAConfig(r=2, alpha=4, dropout=0.1, targets=("q", "v"))))


def test_lora_sft_resumes_exactly_and_checkpoints_hold_only_adapters(small_corpus, tmp_path):
    from safetensors.torch import load_file

    from minillama.assets import asset_path
    from minillama.finetune.sft_data import read_jsonl, to_messages
    from minillama.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(small_corpus[0])
    torch.manual_seed(0)
    config = ModelConfig.from_preset("debug", vocab_size=tokenizer.vocab_size,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    base_dir = save_hf(MiniLlama(config), tmp_path / "base", tokenizer)
    data = tmp_path / "chats.jsonl"  # a small chat-format file: 40 Alpaca examples as messages
    records = itertools.islice(read_jsonl(asset_path("sft/alpaca_en_demo.jsonl.gz")), 40)
    data.write_text("".join(json.dumps({"messages": to_messages(r)}) + "\n" for r in records))
    straight = sft_run(base_dir, data, tmp_path / "straight", 6)
    sft_run(base_dir, data, tmp_path / "resumed", 3)
    resumed = sft_run(base_dir, data, tmp_path / "resumed", 6)
    assert straight.step == resumed.step == 6
    assert sorted(p.name for p in straight.checkpoint.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "checksums.sha256", "optimizer.pt",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "trainer_state.json"]
    a, b = (load_file(r.checkpoint / "adapter_model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.val_loss == resumed.val_loss
    merged = MiniLlama.from_pretrained(tmp_path / "straight" / "model")
    assert merged.config.eos_token_id == tokenizer.token_to_id("<|im_end|>")
    assert load_adapter(MiniLlama.from_pretrained(base_dir), tmp_path / "straight" / "adapter").r == 2
