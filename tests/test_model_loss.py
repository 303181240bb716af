"""The fused chunked head + cross-entropy against torch's own F.cross_entropy, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from minillama.model import MiniLlama, ModelConfig, token_cross_entropy
from minillama.model import loss as loss_module
from minillama.model.loss import linear_cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
# 1-row chunks; 4-row chunks, the last one shorter (21 rows); one chunk
@pytest.mark.parametrize("chunk_elements", [64, 200, 1 << 21])
def test_matches_cross_entropy_and_its_gradients(smoothing, chunk_elements, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :4] = -100
    ours = linear_cross_entropy(hidden, weight, targets, smoothing)
    (ours * 2.5).backward()  # a non-unit upstream gradient
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    reference = F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten(), ignore_index=-100,
                                label_smoothing=smoothing)
    (reference * 2.5).backward()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], weight.grad, atol=1e-5, rtol=1e-5)


def test_model_targets_path_equals_the_logits_path_with_a_tied_head():
    torch.manual_seed(0)
    config = ModelConfig.from_preset("debug", tie_word_embeddings=True)
    model = MiniLlama(config)
    ids = torch.randint(0, config.vocab_size, (2, 12))
    targets = torch.roll(ids, -1, 1)
    fused = model(ids, targets=targets)
    assert fused.logits is None
    fused.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    token_cross_entropy(model(ids).logits, targets).backward()
    torch.testing.assert_close(fused.loss, token_cross_entropy(model(ids).logits, targets))
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by inductor
def test_bf16_autocast_is_close_to_float32():
    torch.manual_seed(0)
    hidden, weight = torch.randn(4, 64, 32), torch.randn(300, 32) * 0.1
    targets = torch.randint(0, 300, (4, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = linear_cross_entropy(hidden, weight, targets)
    assert abs(low.item() - linear_cross_entropy(hidden, weight, targets).item()) < 2e-2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by inductor
def test_bf16_autocast_gradients_are_close_to_float32(monkeypatch):
    # Several chunks, so the bf16 products accumulate into the float32 weight gradient.
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 300 * 40)
    torch.manual_seed(0)
    hidden = torch.randn(4, 64, 32, requires_grad=True)
    weight = (torch.randn(300, 32) * 0.1).requires_grad_()
    targets = torch.randint(0, 300, (4, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear_cross_entropy(hidden, weight, targets).backward()
    low = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten()).backward()
    assert weight.grad.dtype == torch.float32
    for ours, reference in zip(low, (hidden.grad, weight.grad)):  # bf16 keeps 8 bits of mantissa
        torch.testing.assert_close(ours, reference, atol=1e-2 * reference.abs().max().item(), rtol=2e-2)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_fused_low_precision_chunk_computes_the_float32_chunk(smoothing):
    """The chunk function compiled for bf16 / fp16 logits, run on float32 ones: the same loss and
    logit gradient as the in-place float32 path, and as F.cross_entropy's gradient."""
    torch.manual_seed(0)
    logits = torch.randn(9, 40) * 3
    targets = torch.randint(0, 40, (9, 1))
    counted = torch.ones(9, 1)
    counted[2] = 0  # an ignored row
    fused, in_place = logits.clone(), logits.clone()
    loss_fused = loss_module._chunk_loss_fused(fused, targets, counted, smoothing, True)
    loss_in_place = loss_module._chunk_loss_in_place(in_place, targets, counted, smoothing, True)
    torch.testing.assert_close(loss_fused, loss_in_place, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, in_place, atol=1e-6, rtol=1e-5)
    reference = logits.clone().requires_grad_()
    F.cross_entropy(reference, targets[:, 0], reduction="sum", label_smoothing=smoothing).backward()
    torch.testing.assert_close(fused, reference.grad, atol=1e-6, rtol=1e-5)


def test_no_gradient_work_in_evaluation():
    hidden, weight = torch.randn(2, 5, 8), torch.randn(20, 8)
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, torch.randint(0, 20, (2, 5)))
    assert value.grad_fn is None and value.item() > 0


def test_confidently_wrong_rows_keep_a_finite_exact_loss():
    # Logit gaps of ~500 nats: the target's softmax probability underflows to 0 in float32,
    # so a loss taken as -log(p_target) would be inf; the log-sum-exp route stays exact.
    torch.manual_seed(0)
    hidden = torch.randn(2, 3, 8) * 40
    weight = torch.randn(30, 8, requires_grad=True)
    targets = torch.randint(0, 30, (2, 3))
    ours = linear_cross_entropy(hidden, weight, targets)
    reference = F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten())
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)


def test_a_compiled_model_trains_through_the_eager_fused_loss(monkeypatch):
    # torch.compile stops at linear_cross_entropy (compiler.disable) and resumes in its backward.
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 3 * 256)  # several chunks for the debug vocab
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig.from_preset("debug", tie_word_embeddings=True))
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    targets = torch.roll(ids, -1, 1)
    results = []
    for step_model in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        loss = step_model(ids, targets=targets).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_bf16_fused_loss_takes_any_number_of_shapes_in_one_process():
    """Padded batches change the rows of every call and each model brings its vocabulary: more
    shapes than dynamo's recompile limit (8) must not turn into a hard error under fullgraph."""
    torch.manual_seed(0)
    for vocab in (50, 97, 130):
        weight = torch.randn(vocab, 16, requires_grad=True)
        for rows in (3, 5, 11, 17, 29):
            hidden = torch.randn(1, rows, 16, requires_grad=True)
            targets = torch.randint(0, vocab, (1, rows))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = linear_cross_entropy(hidden, weight, targets)
            loss.backward()
            expected = F.cross_entropy((hidden[0].bfloat16() @ weight.bfloat16().T).float(), targets[0])
            torch.testing.assert_close(loss, expected, atol=2e-2, rtol=2e-2)
