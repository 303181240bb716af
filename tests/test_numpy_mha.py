"""The seed's exercise: NumPy multi-head attention equals `torch.nn.MultiheadAttention(bias=False)`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minillama.numpy_model import multi_head_attention_forward

E, HEADS = 32, 4


def torch_attention(**kwargs):
    torch.manual_seed(0)
    return torch.nn.MultiheadAttention(E, HEADS, bias=False, **kwargs).eval()


def run_both(module, query, key, value, **kwargs):
    with torch.no_grad():
        out, weights = module(query, key, value, **kwargs)
    as_numpy = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    mine, my_weights = multi_head_attention_forward(
        query.numpy(), key.numpy(), value.numpy(), E, HEADS, module.in_proj_weight.detach().numpy(),
        module.out_proj.weight.detach().numpy(), batch_first=module.batch_first, **as_numpy)
    np.testing.assert_allclose(mine, out.numpy(), rtol=0, atol=1e-5)
    if weights is None:
        assert my_weights is None
    else:
        np.testing.assert_allclose(my_weights, weights.numpy(), rtol=0, atol=1e-5)


def test_self_attention_sequence_first():
    x = torch.randn(7, 3, E)  # (L, N, E), torch's default layout
    run_both(torch_attention(), x, x, x)


def test_cross_attention_with_masks():
    query, memory = torch.randn(5, 2, E), torch.randn(9, 2, E)
    module = torch_attention()
    run_both(module, query, memory, memory)
    causal = torch.ones(5, 9, dtype=torch.bool).triu(5)  # True = may not attend
    run_both(module, query, memory, memory, attn_mask=causal)
    run_both(module, query, memory, memory, attn_mask=torch.randn(5, 9))  # float: added to scores
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    run_both(module, query, memory, memory, key_padding_mask=padding, average_attn_weights=False)


@pytest.mark.parametrize("need_weights", [True, False])
def test_batch_first(need_weights):
    x, memory = torch.randn(2, 6, E), torch.randn(2, 4, E)  # (N, L, E)
    run_both(torch_attention(batch_first=True), x, memory, memory, need_weights=need_weights)


def test_wrong_embedding_size():
    x = np.zeros((3, 1, E), dtype=np.float32)
    with pytest.raises(ValueError, match="embed_dim"):
        multi_head_attention_forward(x, x, x, E + 1, HEADS, np.zeros((3 * E, E)), np.zeros((E, E)))
