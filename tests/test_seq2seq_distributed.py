"""`minillama translate train` under torchrun on CPU with gloo: 2 processes with half the batch
follow 1 process's loss trajectory (DDP and ZeRO-3, with gradient accumulation and clipping), rank 0
alone writes checkpoints and the final model, which load in one process, and a run stopped on 2
processes resumes on 1.

The ranks' rows make up the batch one process takes (`ExampleBatches` cuts global batches), but a
rank's loss is the mean over its own target tokens, and the rows differ in length: each batch
carries its share of the global batch's target tokens (`loss_weight`) so that the ranks' means
average to one process's mean. Dropout is off there: each rank draws masks for its own rows, from
its own random stream, which a checkpoint keeps for each rank (the last test)."""

import json

import pytest
import torch
from helpers import assert_losses_match, logged_losses, needs_torchrun, run_minillama

from minillama.seq2seq import data
from minillama.seq2seq.model import MiniSeq2Seq

pytestmark = needs_torchrun
STEPS = 6
ACCUM = ["--optim.grad_accum", "2", "--optim.grad_clip", "0.5"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(a TSV of every 21st Tatoeba pair, a joint BPE of its training split): 1,182 training pairs
    and 69 validation pairs, all scored: the last global batch of 4 holds 1, so rank 1 has no rows
    of it and must still run the forward (FSDP gathers weights collectively)."""
    root = tmp_path_factory.mktemp("pairs")
    pairs = data.tatoeba_pairs()[::21]
    (root / "pairs.tsv").write_text("".join(f"{p.en}\t{p.zh}\n" for p in pairs), encoding="utf-8")
    data.train_joint_tokenizer(data.split_pairs(pairs)["train"], 300, root / "tokenizer", model_max_length=64)
    return root / "pairs.tsv", root / "tokenizer"


def translate(out, pairs, processes, batch_size, parallel="ddp", extra=(), dropout=0.0):
    path, tokenizer = pairs
    done = run_minillama(["translate", "train", "--data", str(path), "--data.tokenizer", str(tokenizer),
                   "--model.preset", "debug", "--model.dropout", str(dropout), "--run.out_dir", str(out),
                   "--data.batch_size", str(batch_size), "--budget.max_steps", str(STEPS), "--run.log_interval", "1",
                   "--run.eval_interval", "3", "--run.eval_batches", "100", "--run.precision", "float32",
                   "--run.progress", "false", "--run.plot", "false", "--run.parallel", parallel, "--run.threads", "1",
                   "--optim.warmup_steps", "2", "--test-limit", "4", "--eval-beams", "1", *ACCUM, *extra], processes)
    json.loads(done.stdout)  # one report, rank 0's, whatever the number of processes
    return logged_losses(out)


@pytest.fixture(scope="module")
def single(pairs, tmp_path_factory):
    return translate(tmp_path_factory.mktemp("single") / "run", pairs, 1, batch_size=4)


@pytest.mark.parametrize("parallel", ["ddp", "zero3"])
def test_two_processes_match_one_with_the_same_global_batch(single, pairs, tmp_path, parallel):
    losses, val_losses = single
    two_losses, two_val = translate(tmp_path, pairs, 2, batch_size=2, parallel=parallel)
    assert len(two_losses) == len(losses) == STEPS and len(two_val) == len(val_losses) == 2
    assert_losses_match(losses, two_losses)
    assert_losses_match(val_losses, two_val)
    assert losses[-1] < losses[0]  # it trains
    # Rank 0 alone wrote: each checkpoint once, whole (it verifies and loads in this one process),
    # and the final model with its test scores.
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "latest", "step-000006"]
    assert MiniSeq2Seq.from_pretrained(checkpoints / "step-000006").config.vocab_size == 300
    assert MiniSeq2Seq.from_pretrained(tmp_path / "model").config.d_model == 32
    assert (tmp_path / "report.json").is_file()


def test_a_run_on_two_processes_resumes_on_one(single, pairs, tmp_path):
    losses, _ = single
    # 3 of 6 scheduled steps on 2 processes under zero3, then the rest on 1 with the same global batch.
    translate(tmp_path, pairs, 2, batch_size=2, parallel="zero3", extra=["--budget.max_steps", "3",
                                                                        "--budget.schedule_steps", "6"])
    resumed, _ = translate(tmp_path, pairs, 1, batch_size=4)
    assert len(resumed) == STEPS
    assert_losses_match(losses, resumed)


def test_ranks_draw_their_own_dropout_and_a_run_resumes_exactly_on_as_many(pairs, tmp_path):
    straight, _ = translate(tmp_path / "straight", pairs, 2, batch_size=2, parallel="zero3", dropout=0.1)
    # 3 of 6 scheduled steps, then the rest: each rank goes on with its own random state
    out = tmp_path / "resumed"
    translate(out, pairs, 2, batch_size=2, parallel="zero3", dropout=0.1,
              extra=["--budget.max_steps", "3", "--budget.schedule_steps", "6"])
    saved = torch.load(out / "checkpoints" / "step-000003" / "optimizer.pt", weights_only=True)["rank_rng"]
    resumed, _ = translate(out, pairs, 2, batch_size=2, parallel="zero3", dropout=0.1)
    assert resumed == straight
    masks = []
    with torch.random.fork_rng():
        for state in saved:  # the dropout masks each rank would draw next
            torch.set_rng_state(state["torch_rng"])
            masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.1))
    assert len(masks) == 2 and not torch.equal(masks[0], masks[1])
