"""The training questions' conclusions, asserted on the lab's own measurements (quick setting)."""

from __future__ import annotations

import math

from minillama.lab import find_experiment, run_experiment


def facts(name: str, seed: int = 0) -> dict:
    return run_experiment(find_experiment(name), quick=True, seed=seed)[0].facts


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
    assert all(loss > f["base_loss"] + 0.05 for loss in f["random_b_losses"])  # a random B jumps the loss
    assert f["random_b_loss"] > f["base_loss"] + 0.15
    assert f["base_loss"] < math.log(256) - 1  # the base model did learn something


def test_init_std_small_is_uniform_large_is_worse_and_residual_scaling_holds_depth():
    f = facts("init-std")
    small, good, large = f["0.002"], f["0.02"], f["1.0"]
    assert abs(small["initial"] - f["ln_vocab"]) < 0.05 and abs(good["initial"] - f["ln_vocab"]) < 0.1
    assert large["initial"] > 3 * f["ln_vocab"]  # huge logits: confidently wrong
    assert small["grad"] < good["grad"] < large["grad"]
    assert good["final"] < small["final"] - 0.2  # too small: stuck longer on the plateau
    assert good["final"] < large["final"] - 0.1 and math.isfinite(large["final"])
    scaled, plain = f["residual_growth"]["scaled"], f["residual_growth"]["plain"]
    assert max(scaled) < 1.2 and plain[-1] > 2 * scaled[-1] and plain[-1] > plain[0]


def test_sft_mask_learns_answers_as_well_but_not_the_prompts():
    f = facts("sft-mask")
    init, full, sft = f["init"], f["pretraining-style (all tokens)"], f["SFT (answer only)"]
    assert 0.05 < f["learned_fraction"] < 0.5
    assert sft["answer"] < init["answer"] - 2 and sft["answer"] < full["answer"] + 0.1  # as good on answers
    assert sft["prompt"] > full["prompt"] + 0.25  # but not trained on the prompts


def test_forgetting_the_shift_collapses_the_loss_and_breaks_generation():
    f = facts("teacher-forcing")
    good, bad = f["decoder-only, targets = tokens[1:]"], f["decoder-only, targets = inputs"]
    assert bad["train_loss"] < 0.1 < good["train_loss"]  # copying the input is easy...
    assert bad["next_token_loss"] > good["next_token_loss"] + 2  # ...and useless for the next token
    assert bad["predicts_input"] > 0.9 and good["predicts_input"] < 0.4  # (a space after a space: ~0.2)
    assert bad["repeats_prompt_end"] > 0.9  # greedy generation only repeats the prompt's last token
    assert f["labels_vs_targets_difference"] < 1e-4  # unshifted labels + shift in the loss = shifted targets
    good, bad = f["enc-dec, decoder inputs = shift_right(labels)"], f["enc-dec, decoder inputs = labels"]
    assert bad["train_loss"] < 0.05 and bad["teacher_forced_accuracy"] > 0.99
    assert bad["free_running_accuracy"] < 0.3 < 0.5 < good["free_running_accuracy"]
    assert good["free_running_accuracy"] < good["teacher_forced_accuracy"]  # errors compound when free-running


def test_speculative_samples_follow_the_target_not_the_draft():
    f = facts("speculative")
    for token in ("token1", "token2"):
        t = f[token]
        assert t["tvd_draft_exact"] > 0.2  # the draft really differs from the target
        assert t["tvd_speculative"] < 0.15 and t["tvd_speculative"] < t["tvd_draft_exact"] / 3
        assert t["tvd_speculative"] < 2 * t["tvd_plain"] + 0.03  # sampling noise, as plain sampling's
    assert 0.02 < f["acceptance_rate"] < 0.95


def test_zero_memory_formula_matches_the_trainers_own_report():
    f = facts("zero-memory")
    stages = f["stages"]
    for stage, values in stages.items():
        for part in ("params", "grads", "optimizer"):
            formula, measured = values["formula"][part], values["measured"][part]
            tolerance = 0.03 if (stage, part) == ("zero1", "optimizer") else 0.002  # zero1 splits whole tensors
            assert abs(measured / formula - 1) < tolerance, (stage, part)
    totals = [stages[s]["measured"]["total"] for s in ("ddp", "zero1", "zero2", "zero3")]
    assert totals == sorted(totals, reverse=True) and totals[-1] / totals[0] < 0.51  # 16Ψ -> 16Ψ/N at N=2
    assert abs(f["paper's example: 7.5B, N=64 ddp"] - 120) < 0.1  # the paper's Figure 1
    assert abs(f["paper's example: 7.5B, N=64 zero3"] - 1.875) < 0.01


def test_extrapolation_unscaled_rope_degrades_beyond_the_context_and_ntk_yarn_help():
    f = facts("extrapolation")
    longest = f["lengths"][-1]
    none, linear = f[f"none {longest}"], f[f"linear {longest}"]
    assert none["beyond"] > none["inside"] + 0.08  # positions never trained on
    assert f[f"dynamic {longest}"]["beyond"] < none["beyond"] - 0.05  # NTK-aware scaling, no retraining
    assert linear["inside"] > none["inside"] + 0.2  # interpolation without fine-tuning hurts everywhere
    assert len({round(f[f"{name} {f['context']}"]["inside"], 6) for name in ("none", "linear", "dynamic", "yarn")}) == 1


def test_quantization_int8_is_nearly_free_and_gptq_beats_round_to_nearest_int4():
    """Three seeds (three trained models): GPTQ's advantage on one 150-step model ranges from 2.5x to
    10x across seeds and CPUs (seed 0 on an AVX512 EPYC: 2.5x), so the 3x claim is on the median."""
    ratios = []
    for seed in (0, 1, 2):
        f = facts("quantization", seed)
        int8, rtn, gptq = f["int8"], f["int4"], f["gptq-int4"]
        assert int8["kl"] < rtn["kl"] / 10
        assert gptq["kl"] < rtn["kl"] / 2  # GPTQ: output error, not weight error, is what it minimises
        ratios.append(gptq["kl"] / rtn["kl"])
        assert gptq["weight_error"] > 0.95 * rtn["weight_error"]
        assert f["float32"]["bytes"] > int8["bytes"] > rtn["bytes"] == gptq["bytes"]
        for method in ("int8", "int4", "gptq-int4"):
            assert abs(f[method]["loss"] - f["float32"]["loss"]) < 0.02
    assert sorted(ratios)[1] < 1 / 3, ratios
