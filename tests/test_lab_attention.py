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


def test_additive_scores_learn_about_as_well_but_materialise_a_head_dim_times_larger_tensor():
    f = facts("attention-additive")
    dot, additive = f["dot"], f["additive"]
    assert f["memory_ratio"] == 16  # the (T, T, D) tanh intermediate vs the (T, T) scores, D = 16
    assert additive["score_flops"] == 2 * dot["score_flops"]
    assert dot["val_loss"] < 2.7 and additive["val_loss"] < 2.7  # both learned (uniform is 5.5)
    assert abs(additive["val_loss"] - dot["val_loss"]) < 0.1
