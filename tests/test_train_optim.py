"""The optimizer: decay groups, and the fused CPU kernel against torch's foreach AdamW."""

import torch

from minillama.model import MiniLlama, ModelConfig
from minillama.train.config import OptimSection
from minillama.train.optim import build_optimizer


def test_matrices_decay_norms_do_not_and_cpu_uses_the_fused_kernel():
    model = MiniLlama(ModelConfig.from_preset("debug"))
    optimizer = build_optimizer(model, OptimSection(weight_decay=0.1), "cpu")
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
    fused = build_optimizer(fused_model, settings, "cpu")
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
