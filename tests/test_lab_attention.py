"""The attention questions' conclusions, asserted on the lab's own measurements (quick setting)."""

from __future__ import annotations

import pytest

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


def test_dropout_is_random_in_train_mode_off_in_eval_mode_mean_preserving_and_curbs_overfitting():
    f = facts("attention-dropout")
    assert f["none"]["train_mode_diff"] == 0 and f["both"]["train_mode_diff"] > 0.1
    assert f["none"]["eval_mode_diff"] == 0 and f["both"]["eval_mode_diff"] == 0
    assert abs(f["inverted_mean"] - 1) < 0.01 and abs(f["unscaled_mean"] - (1 - f["p"])) < 0.01
    none, both = f["none"], f["both"]
    assert none["val_loss"] - none["train_loss"] > 0.5  # a few KB of text: the model overfits
    assert both["val_loss"] - both["train_loss"] < none["val_loss"] - none["train_loss"]
    assert both["val_loss"] < none["val_loss"]


def test_a_key_bias_is_redundant_without_rope_but_query_and_value_biases_are_not():
    f = facts("attention-bias")
    assert f["no_rope"]["k"] < 1e-5  # float32 rounding of the softmax
    assert f["no_rope"]["q"] > 1e-2 and f["no_rope"]["v"] > 1e-2
    assert f["rope"]["k"] > 1e-2  # RoPE rotates the key bias by each key's position
    assert f["val_loss_zeros"] < 2.8 and f["val_loss_random"] < 2.8
    assert f["val_loss_random"] > f["val_loss_zeros"]  # random (std 0.5) still behind (seeds 0-3: by 0.06-0.11)


def test_attention_memory_and_flops_grow_quadratically_and_flash_memory_linearly():
    f = facts("attention-cost")
    assert f["flops_exponent"] == pytest.approx(2.0)
    assert f["eager"]["memory_exponent"] == pytest.approx(2.0, abs=0.05)  # the (T, T) scores
    assert f["flash (tiled)"]["memory_exponent"] == pytest.approx(1.0, abs=0.05)  # tiles: linear
    assert f["eager"]["seconds"][-1] > f["eager"]["seconds"][0]


def test_shared_qkv_makes_scores_symmetric_and_tokens_attend_to_themselves():
    f = facts("attention-shared-qkv")
    shared, separate = f["shared"], f["separate"]
    assert shared["init"]["asymmetry"] < 1e-5 and shared["trained"]["asymmetry"] < 1e-5
    assert separate["init"]["asymmetry"] > 0.5
    assert shared["init"]["argmax_self"] > separate["init"]["argmax_self"] + 0.3
    assert shared["trained"]["argmax_self"] > separate["trained"]["argmax_self"] + 0.2
    assert shared["val_loss"] > separate["val_loss"]


def test_more_heads_are_not_always_better_at_a_fixed_hidden_size():
    f = facts("attention-heads")
    loss = dict(zip(f["heads"], f["val_loss"]))
    assert loss[4] < loss[1] and loss[4] < loss[16]  # a sweet spot between one wide and many narrow heads


def test_fewer_key_value_heads_shrink_the_cache_in_proportion_at_little_loss():
    f = facts("attention-kv-heads")
    mha, gqa, mqa = f["MHA"], f["GQA"], f["MQA"]
    # 2 layers x (keys + values) x kv heads x head_dim 8 x 4 bytes
    assert [x["cache_bytes_per_token"] for x in (mha, gqa, mqa)] == [1024, 256, 128]
    losses = [x["val_loss"] for x in (mha, gqa, mqa)]
    assert max(losses) < 2.5 and max(losses) - min(losses) < 0.15
    # one decoding step reads the cached keys once per key head, not once per query head
    assert gqa["step_largest_bytes"] * 4 == mha["step_largest_bytes"] == mqa["step_largest_bytes"] * 8


def test_stacking_attention_layers_does_not_beat_one_on_sentiment():
    f = facts("attention-depth")
    one, four = f["1 layer"]["dev_accuracy"], f["4 layers"]["dev_accuracy"]
    assert one > 0.58  # learned: the majority class is 0.51
    assert four < one + 0.03
