"""Quantization-aware training: the straight-through estimator, exact resume, and the quantized
model computing exactly what training saw."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_train_loop import MODEL, losses, make_config, run
from torch import nn

from minillama.model import MiniLlama
from minillama.quant import rtn
from minillama.quant.fake import FakeQuantLinear, apply_fake_quant
from minillama.quant.model import quantize_model


@pytest.mark.parametrize("bits", [8, 4])
def test_fake_quant_forward_is_the_grid_and_backward_is_straight_through(bits):
    torch.manual_seed(0)
    linear = nn.Linear(64, 16)
    layer = FakeQuantLinear.holding(linear, bits, 32 if bits == 4 else None)
    assert layer.weight is linear.weight  # the same Parameter: optimizer and checkpoints see no change
    x = torch.randn(5, 64)
    y = layer(x)
    w_q = rtn.fake_quantize(linear.weight, bits, 32)
    torch.testing.assert_close(y, F.linear(x, w_q, linear.bias), rtol=0, atol=0)
    y.square().sum().backward()
    # STE: dL/dW is dL/dW_q, i.e. (dL/dy)^T x with y computed from W_q.
    expected = (2 * y).T @ x
    torch.testing.assert_close(linear.weight.grad, expected, rtol=1e-5, atol=1e-5)


def test_qat_resume_gives_bitwise_identical_losses(tmp_path):
    configs = (make_config(tmp_path / "a", max_steps=8), make_config(tmp_path / "b", max_steps=4, schedule_steps=8),
               make_config(tmp_path / "b", max_steps=8))
    for config in configs:
        config.run.log_interval = 1
        config.run.qat = "int4"
    straight, first, second = configs
    run(straight)
    run(first)
    assert run(second, seed=123).step == 8
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert [a[s] for s in a] == [b[s] for s in a]
    float_run = make_config(tmp_path / "f", max_steps=8)
    float_run.run.log_interval = 1
    run(float_run)
    assert losses(tmp_path / "f")[2] != a[2]  # the rounding really is in the forward pass


def test_the_quantized_model_computes_what_qat_trained(tmp_path):
    config = make_config(tmp_path / "qat", max_steps=4)
    config.run.qat = "int4"
    checkpoint = run(config).checkpoint
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    trained = MiniLlama.from_pretrained(checkpoint).eval()  # the float weights, as saved
    apply_fake_quant(trained, "int4", 32)
    quantized = MiniLlama.from_pretrained(checkpoint).eval()
    quantize_model(quantized, "int4", group_size=32)
    assert MODEL["hidden_size"] % 32 == 0
    with torch.no_grad():
        torch.testing.assert_close(quantized(ids).logits, trained(ids).logits, rtol=0, atol=0)
