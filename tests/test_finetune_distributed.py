"""`minillama sft` and `minillama classify train` under torchrun on CPU with gloo: 2 processes with
half the batch follow 1 process's loss trajectory (DDP and ZeRO-3, with gradient accumulation and
clipping), and rank 0 alone prints the result.

Each rank takes its rows of the global batch one process takes (`ExampleBatches`). SFT's loss is a
mean over the learned (assistant) tokens, whose count differs between the ranks' rows, so each
batch carries its share of the global batch's learned tokens (`loss_weight`); a classifier's loss
is a mean per sentence and every rank has as many. Validation cuts global batches too
(`rank_rows`) and adds the sums over the ranks; every rank runs a forward for every batch."""

import json

import pytest
import torch
from helpers import assert_losses_match, logged_losses, needs_torchrun, run_minillama

from minillama.finetune.batches import Example
from minillama.finetune.sft_data import load_conversations
from minillama.model import MiniLlama, ModelConfig
from minillama.tokenizer import Tokenizer
from minillama.train.distributed import rank_rows

STEPS = 6
ACCUM = ["--optim.grad_accum", "2", "--optim.grad_clip", "0.5"]
COMMON = ["--budget.max_steps", str(STEPS), "--run.log_interval", "1", "--run.eval_interval", "3",
          "--run.precision", "float32", "--run.progress", "false", "--run.plot", "false", "--run.threads", "1",
          "--optim.warmup_steps", "2", *ACCUM]


def test_rank_rows_split_each_global_batch_and_every_rank_runs_each():
    rows = list(range(11))
    one = [r for mine, counted in rank_rows(rows, 4) for r in mine if counted]
    assert one == rows
    ranks = [list(rank_rows(rows, 2, rank, 2)) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3  # as many forwards on each rank
    assert ranks[0][0] == ([0, 1], True) and ranks[1][0] == ([2, 3], True)
    assert ranks[0][2] == ([8], True) and ranks[1][2] == ([9, 10], True)
    # a last global batch of one row: a rank without rows runs a forward on it and counts nothing
    assert list(rank_rows(rows[:9], 2, 0, 2))[-1] == ([8], False)
    assert list(rank_rows(rows[:9], 2, 1, 2))[-1] == ([8], True)
    assert len(list(rank_rows(rows, 2, 1, 2, max_batches=2))) == 2


def test_loss_weights_of_the_ranks_average_to_one():
    from minillama.finetune.batches import ExampleBatches, learned_tokens, pad_batch

    examples = [Example(list(range(2 + i % 5)), [-100] * (i % 3) + [7] * (2 + i % 5 - i % 3)) for i in range(20)]
    ranks = [ExampleBatches(examples, 2, lambda b: pad_batch(b, 0), seed=1, rank=r, world_size=2,
                            targets=learned_tokens) for r in (0, 1)]
    single = ExampleBatches(examples, 4, lambda b: pad_batch(b, 0), seed=1, targets=learned_tokens)
    for _ in range(6):
        weights = [float(next(loader)["loss_weight"]) for loader in ranks]
        assert sum(weights) / 2 == pytest.approx(1.0)
        assert float(next(single)["loss_weight"]) == 1.0


# ---- under torchrun ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_data(small_corpus, tmp_path_factory):
    """(a debug-size base model directory, 48 training records, 9 validation records): validation is
    scored whole, so the last global batch of 4 holds 1 and one rank has no rows of it."""
    from minillama.export import save_hf

    root = tmp_path_factory.mktemp("sft_data")
    tokenizer = Tokenizer.from_pretrained(small_corpus[0])
    torch.manual_seed(0)
    config = ModelConfig.from_preset("debug", vocab_size=tokenizer.vocab_size, max_position_embeddings=128,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    base = save_hf(MiniLlama(config), root / "base", tokenizer)
    train, val = load_conversations("tinystories-instruct")
    for name, chats in (("train.jsonl", train[:48]), ("val.jsonl", val[:9])):
        (root / name).write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats), encoding="utf-8")
    return base, root / "train.jsonl", root / "val.jsonl"


def sft(out, sft_data, processes, batch_size, parallel="ddp"):
    base, train, val = sft_data
    done = run_minillama(["sft", "--base", str(base), "--data", str(train), "--data.val_dataset", str(val),
                   "--data.seq_len", "64", "--run.out_dir", str(out), "--data.batch_size", str(batch_size),
                   "--run.eval_batches", "100", "--run.parallel", parallel, *COMMON], processes)
    assert done.stdout.count(" at step ") == 1, done.stdout  # rank 0 alone prints the result
    return logged_losses(out)


def classify(out, tokenizer, processes, batch_size, parallel="ddp"):
    done = run_minillama(["classify", "train", "--data.tokenizer", str(tokenizer), "--model.preset", "debug",
                   "--data.seq_len", "32", "--run.out_dir", str(out), "--data.batch_size", str(batch_size),
                   "--run.eval_batches", "5", "--run.parallel", parallel, *COMMON], processes)
    json.loads(done.stdout)  # one report, rank 0's, whatever the number of processes
    return logged_losses(out)


def assert_match(single, two):
    (losses, val_losses), (two_losses, two_val) = single, two
    assert len(two_losses) == len(losses) == STEPS and len(two_val) == len(val_losses) == 2
    assert_losses_match(losses, two_losses)
    assert_losses_match(val_losses, two_val)


@pytest.fixture(scope="module")
def sft_single(sft_data, tmp_path_factory):
    return sft(tmp_path_factory.mktemp("sft_single") / "run", sft_data, 1, batch_size=4)


@pytest.fixture(scope="module")
def classify_single(small_corpus, tmp_path_factory):
    return classify(tmp_path_factory.mktemp("classify_single") / "run", small_corpus[0], 1, batch_size=4)


@needs_torchrun
@pytest.mark.parametrize("parallel", ["ddp", "zero3"])
def test_sft_on_two_processes_matches_one_with_the_same_global_batch(sft_single, sft_data, tmp_path, parallel):
    assert_match(sft_single, sft(tmp_path / "run", sft_data, 2, batch_size=2, parallel=parallel))
    assert MiniLlama.from_pretrained(tmp_path / "run" / "model").config.vocab_size == 512  # rank 0 wrote it


@needs_torchrun
@pytest.mark.parametrize("parallel", ["ddp", "zero3"])
def test_classify_on_two_processes_matches_one_with_the_same_global_batch(classify_single, small_corpus, tmp_path,
                                                                          parallel):
    assert_match(classify_single, classify(tmp_path / "run", small_corpus[0], 2, batch_size=2, parallel=parallel))
    assert (tmp_path / "run" / "report.json").is_file()
