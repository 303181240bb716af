"""Weight quantization: the grids against their definitions, QuantLinear against F.linear on the
dequantized weight, GPTQ against round-to-nearest, and quantized directories through the loader."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import random_model
from torch import nn

from minillama.errors import CheckpointError
from minillama.files import verify_manifest
from minillama.model import MiniLlama
from minillama.quant import rtn
from minillama.quant.gptq import gptq_quantize, hessian
from minillama.quant.linear import QuantLinear
from minillama.quant.model import QuantizationError, quantize_model, save_quantized

SHAPE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def test_int8_codes_and_error_bound():
    w = torch.randn(48, 80, generator=torch.Generator().manual_seed(0))
    w[3] = 0  # an all-zero row stays zero
    q, scales = rtn.quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert torch.equal(scales[[0, 5]], w[[0, 5]].abs().amax(1) / 127)
    error = (rtn.dequantize_int8(q, scales) - w).abs()
    assert (error <= scales[:, None] / 2 + 1e-7).all()  # round to nearest: half a step at most
    assert torch.equal(rtn.dequantize_int8(q, scales)[3], torch.zeros(80))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_groups_error_bound_and_zero_exact(group_size):
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1)) + 0.3  # asymmetric groups
    w[:, 7] = 0
    packed, scales, zeros = rtn.quantize_int4(w, group_size)
    assert packed.shape == (16, 128) and packed.dtype == torch.uint8
    assert scales.shape == zeros.shape == (16, 256 // group_size) and zeros.max() <= 15
    dq = rtn.dequantize_int4(packed, scales, zeros)
    step = scales.float().repeat_interleave(group_size, dim=1)
    assert ((dq - w).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(dq[:, 7], torch.zeros(16))  # zero is on the grid


def test_int4_packing_round_trip_is_exact():
    codes = torch.randint(0, 16, (7, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    packed = rtn.pack_int4(codes)
    assert packed.shape == (7, 32)
    assert torch.equal(packed[0, 0], codes[0, 0] | (codes[0, 1] << 4))  # the documented nibble order
    assert torch.equal(rtn.unpack_int4(packed), codes)


@pytest.mark.parametrize("bits,bias", [(8, False), (8, True), (4, False), (4, True)])
def test_quant_linear_equals_f_linear_on_the_dequantized_weight(bits, bias):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias)
    layer = QuantLinear.from_linear(linear, bits, group_size=32)
    x = torch.randn(1, 3, 64)  # decoding-sized: few enough rows for torch's kernels
    reference = F.linear(x, layer.dequantized_weight(), linear.bias)
    layer.use_kernel = False
    torch.testing.assert_close(layer(x), reference, rtol=0, atol=0)
    layer.use_kernel = True  # torch's int8 / int4 CPU kernels
    torch.testing.assert_close(layer(x), reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.weight, layer.dequantized_weight())
    layer.to(torch.bfloat16)  # scales keep their dtype: the codes mean the same
    assert layer.scales.dtype == (torch.float32 if bits == 8 else torch.float16)


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    g = torch.Generator().manual_seed(3)
    mixing = torch.randn(128, 128, generator=g) / 4 + torch.eye(128)
    x = torch.randn(2048, 128, generator=g) @ mixing * torch.linspace(0.2, 3, 128)  # correlated, uneven
    w = torch.randn(64, 128, generator=g) / 11
    rtn_w = rtn.dequantize_int4(*rtn.quantize_int4(w, 32))
    gptq_w = rtn.dequantize_int4(*gptq_quantize(w, hessian(x), 32))

    def output_error(q):
        return ((x @ (q - w).T) ** 2).mean().item()
    assert output_error(gptq_w) < 0.8 * output_error(rtn_w)


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """H = I: no column can compensate another, so GPTQ's codes are round-to-nearest's, exactly."""
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(9))
    rtn_codes = rtn.quantize_int4(w, 32)
    gptq_codes = gptq_quantize(w, torch.eye(64, dtype=torch.float64), 32)
    for a, b in zip(rtn_codes, gptq_codes):
        assert torch.equal(a, b)


@pytest.mark.parametrize("head", [False, True])
def test_quantized_directory_loads_with_same_logits_and_checksums(tmp_path, head):
    model = random_model(SHAPE, seed=4)  # a tied head: with --head it is untied, the embedding stays float
    quantization = quantize_model(model, "int4", group_size=32, head=head)
    assert quantization["modules"][0] == "model.layers.0.self_attn.q_proj"
    assert len(quantization["modules"]) == 14 + head
    save_quantized(model, quantization, tmp_path / "q")
    assert verify_manifest(tmp_path / "q", required=True)
    assert json.loads((tmp_path / "q/config.json").read_text())["quantization_config"]["bits"] == 4
    loaded = MiniLlama.from_pretrained(tmp_path / "q").eval()
    assert isinstance(loaded.model.layers[1].mlp.down_proj, QuantLinear)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    with open(tmp_path / "q/model.safetensors", "r+b") as f:  # a flipped bit is caught
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        MiniLlama.from_pretrained(tmp_path / "q")


def test_quantized_model_logits_stay_close_to_float():
    model = random_model(SHAPE, seed=6)
    ids = torch.randint(0, 96, (1, 16), generator=torch.Generator().manual_seed(7))
    reference = model(ids).logits
    errors = {}
    for method in ("int8", "int4"):
        quantized = random_model(SHAPE, seed=6)
        quantize_model(quantized, method, group_size=32, head=True)
        assert isinstance(quantized.lm_head, QuantLinear)
        errors[method] = (quantized(ids).logits - reference).abs().max().item()
    assert errors["int8"] < errors["int4"] < 0.5


def test_bad_requests_are_refused():
    model = random_model(SHAPE, seed=8)
    with pytest.raises(QuantizationError, match="unknown quantization method 'int3'"):
        quantize_model(model, "int3")
    with pytest.raises(QuantizationError, match="does not divide"):
        quantize_model(random_model({**SHAPE, "intermediate_size": 96}), "int4", group_size=64)
    quantize_model(model, "int8")
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_model(model, "int4")
