"""The optimizers (decay groups, the fused CPU kernel against torch's foreach AdamW, Muon for the
blocks' matrices) and the learning-rate schedules."""

import pytest
import torch

from minillama.model import MiniLlama, ModelConfig
from minillama.train.config import OptimSection, TrainConfig, set_field
from minillama.train.muon import Muon
from minillama.train.optim import build_optimizers, learning_rate


def test_matrices_decay_norms_do_not_and_cpu_uses_the_fused_kernel():
    model = MiniLlama(ModelConfig.from_preset("debug"))
    (optimizer,) = build_optimizers(model, OptimSection(weight_decay=0.1), "cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert optimizer.defaults["fused"] is True


def test_fused_steps_follow_torch_foreach_adamw():
    """The fused kernel is a faster route to the same update as torch's foreach AdamW."""
    torch.manual_seed(0)
    fused_model = MiniLlama(ModelConfig.from_preset("debug"))
    reference = MiniLlama(ModelConfig.from_preset("debug"))
    reference.load_state_dict(fused_model.state_dict())
    start = fused_model.lm_head.weight.detach().clone()
    settings = OptimSection(lr=1e-2, weight_decay=0.1)
    (fused,) = build_optimizers(fused_model, settings, "cpu")
    groups = [{"params": [p for p in reference.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in reference.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    foreach = torch.optim.AdamW(groups, lr=1e-2, betas=(settings.beta1, settings.beta2), eps=settings.eps,
                                foreach=True)
    x = torch.randint(0, 256, (2, 16))
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (reference, foreach)):
            model(x, targets=x.roll(-1, 1)).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), b in zip(fused_model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(fused_model.lm_head.weight, start)  # it trained


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = MiniLlama(ModelConfig.from_preset("debug"))
    adamw, muon = build_optimizers(model, OptimSection(optimizer="muon"), "cpu")
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert muon_names == {n for n, p in model.named_parameters() if n.startswith("model.layers.") and p.dim() == 2}
    assert {"model.embed_tokens.weight", "model.norm.weight"} <= adamw_names  # (the head is tied to it)
    assert muon_names.isdisjoint(adamw_names) and len(muon_names | adamw_names) == len(names)


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
def test_batched_muon_follows_torch_optim_muon(adjust_lr_fn):
    """Our Muon (Newton-Schulz batched per shape) against torch.optim.Muon on the same matrices and
    gradients: wide, tall (transposed for the iteration, then batched with the wide ones of the
    transposed shape), square, several of one shape."""
    torch.manual_seed(0)
    shapes = [(16, 48), (48, 16), (48, 16), (32, 32), (32, 32), (8, 32)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    initial = [p.detach().clone() for p in ours]
    settings = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust_lr_fn)
    optimizers = (Muon(ours, **settings), torch.optim.Muon(theirs, **settings))
    for _ in range(4):
        grads = [torch.randn(s) for s in shapes]
        for params, optimizer in zip((ours, theirs), optimizers):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b, start in zip(ours, theirs, initial):
        # both iterate in bfloat16 (measured: the same moves to 1e-6 of their size)
        ours_moved, theirs_moved = a.detach() - start, b.detach() - start
        assert (ours_moved - theirs_moved).norm() < 1e-5 * theirs_moved.norm()
    # float32 iterations (CPUs without native bf16) take the same step to within bf16's rounding
    fp32 = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    bf16 = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    grads = [torch.randn(s) for s in shapes]
    for params, dtype in ((fp32, "float32"), (bf16, "bfloat16")):
        optimizer = Muon(params, ns_dtype=dtype, **settings)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    for a, b, before in zip(fp32, bf16, ours):
        step_fp32, step_bf16 = a.detach() - before.detach(), b.detach() - before.detach()
        assert (step_fp32 - step_bf16).norm() < 0.03 * step_fp32.norm()


@pytest.mark.parametrize("native", [True, False])
def test_muon_iterates_in_bf16_exactly_where_training_would(native, monkeypatch):
    """One policy (hardware.runs_bf16_natively) picks autocast's bf16 and Muon's iteration dtype."""
    from minillama import hardware
    from minillama.train.loop import resolve_precision

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    _, muon = build_optimizers(MiniLlama(ModelConfig.from_preset("debug")), OptimSection(optimizer="muon"), "cpu")
    autocast = resolve_precision("auto", torch.device("cpu"))
    assert (muon.defaults["ns_dtype"], autocast) == (("bfloat16", torch.bfloat16) if native else
                                                     ("float32", torch.float32))


def test_a_muon_step_has_adamw_size_and_an_orthogonalised_direction():
    """Muon moves a matrix by lr x an update whose RMS is about AdamW's (0.2: match_rms_adamw) and
    whose singular values are nearly equal (Newton-Schulz), unlike the gradient's."""
    torch.manual_seed(0)
    model = MiniLlama(ModelConfig.from_preset("debug"))
    _, muon = build_optimizers(model, OptimSection(optimizer="muon", lr=1e-2, weight_decay=0.0), "cpu")
    weight = model.model.layers[0].mlp.down_proj.weight  # (64, 176)
    before = weight.detach().clone()
    x = torch.randint(0, 256, (8, 32))  # 256 tokens: a gradient of full rank
    model(x, targets=x.roll(-1, 1)).loss.backward()
    gradient = torch.linalg.svdvals(weight.grad)
    muon.step()
    update = (before - weight.detach()) / 1e-2
    assert 0.12 < update.pow(2).mean().sqrt() < 0.3
    singular = torch.linalg.svdvals(update)
    assert singular.max() / singular.min() < 3 < gradient.max() / gradient.min()


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_schedules_warm_up_and_end_at_the_floor(schedule):
    optim = OptimSection(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, schedule=schedule, decay_fraction=0.2)
    rates = [learning_rate(step, 100, optim) for step in range(101)]
    assert rates[0] < rates[5] < rates[9] < 1.0 and max(rates) == pytest.approx(1.0)
    assert rates[100] == pytest.approx(0.1) and all(a >= b for a, b in zip(rates[10:], rates[11:]))
    if schedule == "wsd":  # stable until the last 20 steps, then a straight line down
        assert all(rate == 1.0 for rate in rates[10:80]) and rates[90] == pytest.approx(0.55)
    else:
        assert rates[55] == pytest.approx(0.55)


def test_muon_under_fsdp_and_a_bad_decay_fraction_are_refused():
    for parallel in ("fsdp", "zero2", "zero3"):
        config = TrainConfig()
        config.optim.optimizer, config.run.parallel = "muon", parallel
        with pytest.raises(ValueError, match="FSDP"):
            config.validate()
    config = TrainConfig()
    config.optim.optimizer, config.run.parallel = "muon", "zero1"  # ZeRO-1 partitions whole matrices
    config.validate()
    config = TrainConfig()
    config.optim.decay_fraction = 0
    with pytest.raises(ValueError, match="decay_fraction"):
        config.validate()


def test_fsdp_is_zero3_and_unknown_stages_are_refused():
    config = TrainConfig()
    config.run.parallel = "fsdp"
    config.validate()
    assert config.run.parallel == "zero3"
    config.run.parallel = "zero0"
    with pytest.raises(ValueError, match="run.parallel must be one of ddp, zero1, zero2, zero3, fsdp"):
        config.validate()
    with pytest.raises(ValueError, match="run.parallel must be one of"):
        set_field(TrainConfig(), "run.parallel", "ZeRO-2")
