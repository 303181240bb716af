"""The training questions' conclusions, asserted on the lab's own measurements (quick setting)."""

from __future__ import annotations

import math

from minillama.lab import find_experiment, run_experiment


def facts(name: str) -> dict:
    return run_experiment(find_experiment(name), quick=True)[0].facts


def test_parameter_formula_equals_the_real_models_counts():
    f = facts("parameter-count")
    assert f["GPT-2 124M"]["transformers"] == f["GPT-2 124M"]["formula"] == 124_439_808
    assert f["LLaMA-7B"]["formula"] == f["LLaMA-7B"]["ours"] == f["LLaMA-7B"]["transformers"] == 6_738_415_616
    for name, counts in f.items():
        assert counts["formula"] == counts["transformers"], name
        assert counts["ours"] in (None, counts["formula"]), name


def test_lora_counts_and_b_starts_at_zero():
    f = facts("lora")
    for name, counts in f["counts"].items():
        assert counts["formula"] == counts["real"] == counts["peft"], name
    assert f["zero_b_max_logit_diff"] == 0.0 and f["zero_b_loss"] == f["base_loss"]
    assert f["grad_A"] == 0.0 and f["grad_B"] > 0  # the first step moves B only
    assert all(loss > f["base_loss"] + 0.1 for loss in f["random_b_losses"])  # a random B jumps the loss
    assert f["base_loss"] < math.log(256) - 1  # the base model did learn something
