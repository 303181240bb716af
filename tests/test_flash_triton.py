"""FlashAttention in Triton (model/flash_triton.py) against torch's SDPA math backend: outputs,
log-sum-exp and gradients, causal and not, grouped heads, lengths that do not divide the block, head
sizes that are no power of two, padding and dense masks; the model with it against the model with
SDPA; the one-line errors.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1: the same kernel code,
each block operation done by NumPy on CPU tensors). It is slow, so the shapes here are small. With a
CUDA device the same comparisons run on the compiled kernels too (float32 and bfloat16)."""

import importlib.util
import os
import subprocess
import sys

import helpers
import pytest
import torch

import minillama.model
from minillama.errors import MiniLlamaError
from minillama.model import ModelConfig, flash_triton
from minillama.model.config import config_to_hf_dict

pytestmark = pytest.mark.usefixtures("single_thread")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed: pip install triton")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the compiled kernels run on NVIDIA/AMD GPUs only "
                                       "(the interpreter tests check the same kernels on the CPU)")

# id -> (B, H, K, T, S, D, causal, mask); blocks of 16, so several tiles and a short last one
CASES = {
    "causal-mha": (1, 2, 2, 37, 37, 16, True, None),
    "full-gqa": (1, 4, 2, 37, 37, 16, False, None),
    "causal-mqa-cache": (1, 4, 1, 20, 45, 8, True, None),  # the last 20 of 45 positions; head size 8 < 16
    "key-padding": (2, 2, 1, 33, 33, 16, False, "keys"),
    "causal-key-padding": (2, 2, 1, 33, 33, 16, True, "keys"),
    "dense-mask-head-24": (2, 2, 2, 30, 30, 24, False, "dense"),  # a head size padded to 32
    "one-query": (2, 4, 2, 1, 29, 16, False, None),
}
# Measured under the interpreter (docs/attention_triton.md): float32 at most 1.4e-6 from SDPA (4 seeds,
# every case); float16 within 5e-4 of float32 SDPA on the same rounded inputs.
TOLERANCE = {torch.float32: dict(atol=4e-6, rtol=4e-6), torch.float16: dict(atol=1e-3, rtol=1e-3)}
# Not measured (no GPU here): float32 as test_flash.py's bound; bfloat16 keeps 8 bits of mantissa and
# the kernels round P and dS to it before their products, as any bfloat16 FlashAttention does.
CUDA_TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
                  torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.fixture
def interpreter():
    """Skips unless Triton interprets the kernels: it does when TRITON_INTERPRET=1 was in the
    environment when it was imported, which conftest.py sees to on machines without a CUDA device
    (on a GPU machine, `TRITON_INTERPRET=1 pytest tests/test_flash_triton.py` runs these too)."""
    if not flash_triton.interpreted():
        pytest.skip("Triton compiles the kernels in this process (TRITON_INTERPRET is not 1): the CUDA tests "
                    "check them")


@pytest.fixture
def compiler():
    if flash_triton.interpreted():
        pytest.skip("Triton was imported with TRITON_INTERPRET=1: the kernels are interpreted in this process")


def compare_with_sdpa(case, dtype, tolerance, device="cpu"):
    B, H, K, T, S, D, causal, mask = CASES[case]
    q, k, v, mask = helpers.attention_inputs(*CASES[case], dtype=dtype, device=device)
    grad = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    ours = flash_triton.flash_attention(q, k, v, mask, causal, block=16)
    ours.backward(grad)
    ours_grads = [t.grad.clone() for t in (q, k, v)]
    with torch.no_grad():
        _, lse = flash_triton.flash_forward(q, k, v, mask, causal, block=16)
    # the reference in float32 from the same (rounded) inputs
    q, k, v = (t.detach().float().requires_grad_() for t in (q, k, v))
    theirs = helpers.sdpa_math_attention(q, k, v, mask, causal)
    theirs.backward(grad.float())
    torch.testing.assert_close(ours.float(), theirs, **tolerance)
    torch.testing.assert_close(lse, helpers.attention_logsumexp(q.detach(), k.detach(), mask, causal), **tolerance)
    for mine, t in zip(ours_grads, (q, k, v), strict=True):
        torch.testing.assert_close(mine.float(), t.grad, **tolerance)


@needs_triton
@pytest.mark.parametrize("case", CASES)
def test_interpreted_kernels_equal_sdpa(case, interpreter):
    compare_with_sdpa(case, torch.float32, TOLERANCE[torch.float32])


@needs_triton
@pytest.mark.parametrize("case", ["causal-mqa-cache", "causal-key-padding", "dense-mask-head-24"])
def test_interpreted_kernels_in_float16_equal_sdpa(case, interpreter):
    """16-bit inputs: P and dS are rounded to the input's dtype before their products."""
    compare_with_sdpa(case, torch.float16, TOLERANCE[torch.float16])


@needs_triton
def test_inputs_of_several_dtypes_are_computed_as_sdpa_computes_them(interpreter):
    """The model under autocast hands over q, k in float32 (after RoPE) and v in the autocast dtype."""
    q, k, v, _ = helpers.attention_inputs(1, 2, 1, 20, 20, 16, True, None)
    half_v = v.detach().half()
    out = flash_triton.flash_attention(q, k, half_v, causal=True, block=16)
    assert out.dtype == torch.float32  # the widest
    torch.testing.assert_close(out, helpers.sdpa_math_attention(q, k, half_v.float(), None, True),
                               **TOLERANCE[torch.float32])
    with torch.autocast("cpu", dtype=torch.float16):
        out = flash_triton.flash_attention(q, k, half_v, causal=True, block=16)
        theirs = helpers.sdpa_math_attention(q, k, half_v, None, True)
    assert out.dtype == theirs.dtype == torch.float16
    torch.testing.assert_close(out, theirs, **TOLERANCE[torch.float16])


@needs_triton
def test_the_interpreter_is_not_asked_for_bfloat16(interpreter):
    q, k, v, _ = helpers.attention_inputs(1, 2, 2, 4, 4, 8, True, None, dtype=torch.bfloat16)
    with pytest.raises(MiniLlamaError, match="interpreter does not compute bfloat16 matrix products"):
        flash_triton.flash_attention(q, k, v, causal=True)


@needs_triton
def test_a_fully_masked_row_gives_zeros_not_nan(interpreter):
    q, k, v, _ = helpers.attention_inputs(1, 2, 2, 4, 4, 8, True, None)
    keep = torch.tensor([[False, True, True, True]])[:, None, None, :]  # query 0 sees only key 0: padding
    out = flash_triton.flash_attention(q, k, v, keep, causal=True, block=16)
    out.sum().backward()
    assert torch.isfinite(out).all() and out[:, :, 0].abs().max() == 0
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@needs_triton
def test_the_model_with_flash_triton_equals_sdpa(interpreter):
    """The model's own layout (heads transposed out of (B, T, H, D): strided views), its padding mask
    (B, 1, T, S), grouped heads: logits and the loss's gradients."""
    shape = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    models = {impl: helpers.random_model(shape, attn_implementation=impl) for impl in ("sdpa", "flash_triton")}
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(2))  # two 32-query tiles
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    logits = {impl: m(ids, attention_mask=mask).logits for impl, m in models.items()}
    valid = mask.bool()
    torch.testing.assert_close(logits["flash_triton"][valid], logits["sdpa"][valid], **TOLERANCE[torch.float32])
    for model in models.values():
        model(ids[1:], targets=ids[1:]).loss.backward()  # no padding: plain causal
    for (name, ours), theirs in zip(models["flash_triton"].named_parameters(), models["sdpa"].parameters(),
                                    strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, **TOLERANCE[torch.float32], msg=name)


@needs_triton
@needs_cuda
@pytest.mark.parametrize("dtype", list(CUDA_TOLERANCE))
@pytest.mark.parametrize("case", CASES)
def test_compiled_kernels_on_cuda_equal_sdpa(case, dtype, compiler):
    compare_with_sdpa(case, dtype, CUDA_TOLERANCE[dtype], device="cuda")


@needs_triton
def test_on_cpu_tensors_without_the_interpreter_it_says_what_to_do():
    """In a fresh process without TRITON_INTERPRET (this one may have it: conftest.py)."""
    program = ("import torch\n"
               "from minillama.errors import MiniLlamaError\n"
               "from minillama.model.flash_triton import flash_attention\n"
               "try:\n"
               "    flash_attention(*(torch.zeros(1, 2, 4, 8) for _ in range(3)), causal=True)\n"
               "except MiniLlamaError as error:\n"
               "    print(error)\n")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True, text=True,
                            check=True)
    assert result.stdout.startswith("attn_implementation 'flash_triton' runs on CUDA tensors, not cpu; start "
                                    "Python with TRITON_INTERPRET=1"), result
    assert "(set attn_implementation='flash_tiled'" in result.stdout and result.stdout.count("\n") == 1


def test_without_triton_it_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, "minillama.model.flash_triton_kernels", raising=False)
    monkeypatch.delattr(minillama.model, "flash_triton_kernels", raising=False)
    q, k, v, _ = helpers.attention_inputs(1, 2, 2, 4, 4, 8, True, None)
    with pytest.raises(MiniLlamaError, match="needs Triton, which is not installed; pip install triton"):
        flash_triton.flash_attention(q, k, v, causal=True)


def test_flash_triton_is_a_model_setting_and_exports_as_sdpa():
    config = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=4, attn_implementation="flash_triton")
    assert config_to_hf_dict(config)["attn_implementation"] == "sdpa"  # how attention runs, not what it is
