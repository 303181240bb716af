"""Helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from minillama.model import MiniLlama, ModelConfig


def random_model(shape: dict, seed: int = 0, perturb: float = 0.0, **overrides) -> MiniLlama:
    """A seeded random float32 `MiniLlama` of `shape` (ModelConfig fields) with `overrides`, in eval
    mode. `perturb` moves the 1-D parameters (norm weights, biases) away from their init of 1 and 0
    by perturb x N(0, 1), so that tests see them."""
    torch.manual_seed(seed)
    model = MiniLlama(ModelConfig(**{**shape, **overrides})).eval()
    if perturb:
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 1:
                    param.add_(perturb * torch.randn_like(param))
    return model


def numpy_twin(model: MiniLlama):
    """The NumPy engine holding `model`'s weights."""
    from minillama.numpy_model import NumpyLlama

    return NumpyLlama(model.config, {k: v.detach().numpy() for k, v in model.state_dict().items()})
