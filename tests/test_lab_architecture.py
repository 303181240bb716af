"""The architecture questions' conclusions, asserted on the lab's own measurements (quick setting)."""

from __future__ import annotations

from minillama.lab import find_experiment, run_experiment


def facts(name: str) -> dict:
    return run_experiment(find_experiment(name), quick=True)[0].facts


def test_larger_vocabularies_shorten_text_less_and_leave_more_tokens_rare():
    f = facts("tokenizer-vocab")
    assert f["prefix_equals_smaller_run"]  # the smaller tokenizers are what a smaller run trains
    bpt, gains, used10 = f["bytes_per_token"], f["gain_per_doubling"], f["used_10"]
    assert bpt == sorted(bpt) and bpt[0] < 1.05 and bpt[-1] > 3.5  # merges always shorten the text
    assert gains[-1] < gains[-2] < gains[2]  # but each doubling past 1024 buys less
    peak = used10.index(max(used10))
    assert 0 < peak < len(used10) - 1 and used10[-1] < 0.5 * max(used10)  # many tokens of 4096 are rare


def test_the_model_learns_where_eos_goes_and_an_unseen_special_token_keeps_its_embedding():
    f = facts("special-tokens")
    assert f["story_ends"] > 10 * f["everywhere_else"] and f["other_line_ends"] > 10 * f["everywhere_else"]
    assert f["unused_embedding_change"] == 0.0 and f["seen_embedding_change"] > 0.1  # no gradient reaches it
    assert f["p_unused_after"] < f["p_unused_before"] / 100  # but the head learns never to predict it


def test_at_equal_budget_decoder_only_predicts_a_continuation_best():
    f = facts("decoder-only")
    assert f["ranking"] == ["decoder-only", "encoder-decoder", "BERT"]
    assert f["BERT"]["bits_per_byte"] > f["decoder-only"]["bits_per_byte"] + 0.5
    params = [f[k]["params"] for k in ("decoder-only", "encoder-decoder", "BERT")]
    assert max(params) < 1.15 * min(params)  # the same size, to within 15 %


def test_rmsnorm_and_layernorm_reach_the_same_loss_and_rmsnorm_has_no_bias():
    f = facts("rmsnorm-vs-layernorm")
    assert abs(f["loss_rms"] - f["loss_ln"]) < 0.05
    assert f["params_ln"] - f["params_rms"] == 5 * 64  # a bias per norm: 2 per block + the final one
    assert set(f["norm_seconds"]) >= {"RMSNorm (model/llama.py)", "nn.LayerNorm"}  # timed, not asserted


def test_without_residuals_a_deep_stack_loses_its_signal_or_trains_worse():
    f = facts("residual-connections")
    residual, plain, fan_in = f["residual"], f["plain"], f["plain_fan_in"]
    assert plain["last_block_output"] < 1e-6 and max(plain["grads"]) < 1e-6  # the model's init: nothing gets through
    assert plain["loss"] > 5.0  # so it stays at the uniform guess, ln 256 = 5.55
    assert fan_in["loss"] > residual["loss"] + 0.3  # a scale-keeping init learns, but worse
    assert 0.5 < residual["first_over_last"] < 2 and fan_in["first_over_last"] > 3  # residuals even out gradients


def test_post_norm_starts_with_smaller_even_gradients_and_is_behind_in_a_short_run():
    f = facts("pre-vs-post-norm")
    post = f["post"]
    assert f["pre_over_post_grad"] > 10  # post-norm's blocks start with much smaller gradients ...
    assert 0.5 < post["first_over_last"] < 2  # ... but evenly: nothing vanishes towards block 1 at 8 layers
    assert f["ahead"] == "pre" and min(f["post_minus_pre"]) > 0.1  # 40 steps at lr 1e-2


def test_a_wider_ffn_reaches_a_lower_loss_at_equal_steps():
    f = facts("ffn-width")
    assert f["factors"][0] < f["factors"][-1] and f["params"] == sorted(f["params"])
    assert f["loss"][-1] < f["loss"][0] - 0.05  # 4x the hidden size against 0.5x


def test_rope_is_relative_and_a_model_without_positions_cannot_copy():
    f = facts("positions")
    assert f["rope_same_offset_spread"] < 1e-4 < 0.1 < f["rope_across_offsets_spread"]  # q·k depends on m - n only
    copy = f["copy"]
    assert copy["RoPE"] < 0.1 and copy["learned absolute"] < 0.3  # positions: the copy is learned
    assert copy["none"] > f["copy_set_only"] - 0.3  # none: at best the set of symbols, far from the copy


def test_batchnorm_makes_a_sequence_depend_on_its_batch_and_future_and_layernorm_does_not():
    f = facts("batchnorm-vs-layernorm")
    ln, bn = f["LayerNorm"], f["BatchNorm"]
    for what in ("batchmates", "padding", "future", "train_vs_eval"):
        assert ln[what] < 1e-4 and bn[what] > 1e-3, what
    assert bn["batchmates"] > 0.5 and bn["padding"] > 0.5 and bn["train_vs_eval"] > 0.5
    assert bn["eval_loss"] > ln["eval_loss"] + 0.03 and bn["eval_loss"] > bn["train_mode_loss"]
