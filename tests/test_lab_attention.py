"""The attention questions' conclusions, asserted on the lab's own measurements (quick setting)."""

from __future__ import annotations

from minillama.lab import find_experiment, run_experiment


def facts(name: str) -> dict:
    return run_experiment(find_experiment(name), quick=True)[0].facts


def test_unscaled_attention_saturates_and_sqrt_dk_scaling_does_not():
    f = facts("attention-scaling")
    unscaled, scaled, over = f["none"], f["1/sqrt(d_k)"], f["1/d_k"]
    assert unscaled["entropy"] == sorted(unscaled["entropy"], reverse=True)  # falls as d_k grows
    assert unscaled["grad"][-1] < 0.7 * unscaled["grad"][0]
    assert max(scaled["entropy"]) - min(scaled["entropy"]) < 0.02  # constant in d_k
    assert max(scaled["grad"]) < 1.1 * min(scaled["grad"])
    assert over["entropy"] == sorted(over["entropy"]) and over["entropy"][-1] > 0.99  # towards uniform
