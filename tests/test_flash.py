"""FlashAttention written out (model/flash.py) against torch's SDPA math backend: outputs and
gradients, causal and not, grouped heads, lengths that do not divide the block, padding masks;
gradcheck in float64; the model trained with it; its NumPy twin."""

import helpers
import numpy as np
import pytest
import torch

from minillama.model.flash import flash_attention, flash_forward
from minillama.numpy_model import flash_attention_forward

pytestmark = pytest.mark.usefixtures("single_thread")

# id -> (B, H, K, T, S, D, causal, mask)
CASES = {
    "causal-mha": (2, 4, 4, 37, 37, 16, True, None),
    "full-gqa": (2, 4, 2, 37, 37, 16, False, None),
    "causal-mqa-cache": (2, 4, 1, 20, 45, 8, True, None),  # queries are the last 20 of 45 positions
    "key-padding": (2, 4, 2, 33, 33, 16, False, "keys"),
    "causal-key-padding": (2, 4, 2, 33, 33, 16, True, "keys"),
    "dense-mask": (2, 4, 2, 30, 30, 16, False, "dense"),
    "one-query": (3, 4, 2, 1, 29, 16, False, None),
}


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_gradients_equal_sdpa(case):
    B, H, K, T, S, D, causal, mask = CASES[case]
    q, k, v, mask = helpers.attention_inputs(*CASES[case])
    grad = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1))
    ours = flash_attention(q, k, v, mask, causal, block=16)  # several tiles, the last ones short
    ours.backward(grad)
    ours_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    theirs = helpers.sdpa_math_attention(q, k, v, mask, causal)
    theirs.backward(grad)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for mine, t in zip(ours_grads, (q, k, v), strict=True):
        torch.testing.assert_close(mine, t.grad, atol=1e-5, rtol=1e-5)
    # the saved log-sum-exp is each row's logsumexp over the scores it may see
    with torch.no_grad():
        torch.testing.assert_close(flash_forward(q, k, v, mask, causal, block=16)[1],
                                   helpers.attention_logsumexp(q, k, mask, causal), atol=1e-5, rtol=1e-5)


def test_gradcheck_in_float64():
    q, k, v, mask = helpers.attention_inputs(1, 2, 1, 7, 7, 4, True, "keys", dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: flash_attention(a, b, c, mask, True, 3), (q, k, v))


def test_a_fully_masked_row_gives_zeros_not_nan():
    q, k, v, _ = helpers.attention_inputs(1, 2, 2, 4, 4, 8, True, None)
    keep = torch.tensor([[False, True, True, True]])[:, None, None, :]  # query 0 sees only key 0: padding
    out = flash_attention(q, k, v, keep, causal=True, block=2)
    assert torch.isfinite(out).all() and out[:, :, 0].abs().max() == 0


def test_the_model_with_flash_tiled_equals_sdpa_and_trains_alike():
    shape = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96)
    models = {impl: helpers.random_model(shape, attn_implementation=impl) for impl in ("sdpa", "flash_tiled")}
    ids = torch.randint(0, 97, (2, 80), generator=torch.Generator().manual_seed(2))  # two 64-query tiles
    mask = torch.ones_like(ids)
    mask[0, :11] = 0  # left padding
    with torch.no_grad():
        logits = {impl: m(ids, attention_mask=mask).logits for impl, m in models.items()}
    valid = mask.bool()
    torch.testing.assert_close(logits["flash_tiled"][valid], logits["sdpa"][valid], atol=1e-5, rtol=1e-5)
    losses = {}
    for impl, model in models.items():  # 20 steps of training, the same batches
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(3)
        losses[impl] = []
        for _ in range(20):
            batch = torch.randint(0, 97, (2, 65), generator=generator)
            loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[impl].append(loss.item())
    assert max(abs(a - b) for a, b in zip(losses["sdpa"], losses["flash_tiled"], strict=True)) < 1e-5
    assert losses["sdpa"][-1] < losses["sdpa"][0]


@pytest.mark.parametrize("case", ["causal-mqa-cache", "key-padding", "dense-mask", "full-gqa"])
def test_the_numpy_twin_computes_the_torch_forward(case):
    q, k, v, mask = helpers.attention_inputs(*CASES[case])
    causal = CASES[case][6]
    with torch.no_grad():
        out, lse = (t.numpy() for t in flash_forward(q, k, v, mask, causal, block=16))
    numpy_out, numpy_lse = flash_attention_forward(q.detach().numpy(), k.detach().numpy(), v.detach().numpy(),
                                                   None if mask is None else mask.numpy(), causal, block=16)
    np.testing.assert_allclose(numpy_out, out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(numpy_lse, lse, atol=1e-5, rtol=1e-5)



def test_the_walkthrough_in_docs_points_at_the_lines_it_quotes():
    """docs/attention.md maps the algorithm to `flash.py:N` `code`: each N must still hold that code."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lines = (root / "src/minillama/model/flash.py").read_text(encoding="utf-8").splitlines()
    references = re.findall(r"`flash\.py:(\d+)` `([^`]+)`", (root / "docs/attention.md").read_text(encoding="utf-8"))
    assert len(references) >= 20
    for number, code in references:
        assert code in lines[int(number) - 1], f"flash.py:{number} no longer holds {code!r}"
