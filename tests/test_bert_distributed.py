"""`minillama bert pretrain` under torchrun on CPU with gloo: 2 processes with half the batch follow
1 process's loss trajectory (DDP and ZeRO-3, with gradient accumulation and clipping), rank 0 alone
writes checkpoints that load in one process, and a run stopped on 2 processes resumes on 1.

Every rank reads and masks the whole global batch, with the generator one process would use for
it (seeded by (seed, step)), and trains on its rows; the loss is a mean over the selected tokens,
so each rank's mean is weighted by its share of them (`MLMBatches.share`). Validation masks the
same way, and its sums are added over the ranks. Dropout is off: each rank would draw masks for
its own rows."""

import pytest
from helpers import assert_losses_match, logged_losses, needs_torchrun, run_minillama

from minillama.bert.model import BertForMaskedLM
from minillama.data.tokenfile import TokenFile

pytestmark = needs_torchrun
STEPS = 6
ACCUM = ["--optim.grad_accum", "2", "--optim.grad_clip", "0.5"]


def pretrain(out, data, processes, batch_size, parallel="ddp", extra=()):
    """`data`: the text to train a tokenizer on and prepare, or (tokenizer dir, token files dir) of a run."""
    given = ["--data.dataset", str(data)] if not isinstance(data, tuple) else \
        ["--data.tokenizer", str(data[0]), "--data.prepared", str(data[1])]
    done = run_minillama(["bert", "pretrain", *given, "--run.out_dir", str(out), "--data.vocab_size", "400",
                   "--model.preset", "tiny", "--model.hidden_size", "64", "--model.hidden_dropout_prob", "0",
                   "--model.attention_probs_dropout_prob", "0", "--data.seq_len", "48",
                   "--data.batch_size", str(batch_size), "--budget.max_steps", str(STEPS), "--run.log_interval", "1",
                   "--run.eval_interval", "3", "--run.eval_batches", "100", "--run.precision", "float32",
                   "--run.progress", "false", "--run.plot", "false", "--run.parallel", parallel, "--run.threads", "1",
                   "--optim.warmup_steps", "2", *ACCUM, *extra], processes)
    assert done.stdout.count(" at step ") == 1, done.stdout  # rank 0 alone prints the result
    return logged_losses(out)


@pytest.fixture(scope="module")
def single(small_corpus, tmp_path_factory):
    """1 process, 4 windows a micro-batch; its tokenizer and token files serve the other runs."""
    out = tmp_path_factory.mktemp("single") / "run"
    return pretrain(out, small_corpus[2], 1, batch_size=4), (out / "tokenizer", out / "data")


@pytest.mark.parametrize("parallel", ["ddp", "zero3"])
def test_two_processes_match_one_with_the_same_global_batch(single, tmp_path, parallel):
    (losses, val_losses), data = single
    # All validation windows are scored; the last global batch of 4 holds 1, so rank 1 has no rows
    # of it and must still run the forward (FSDP gathers weights collectively).
    assert (len(TokenFile(data[1] / "val.bin")) - 1) // 46 % 4 == 1
    two_losses, two_val = pretrain(tmp_path, data, 2, batch_size=2, parallel=parallel)
    assert len(two_losses) == len(losses) == STEPS and len(two_val) == len(val_losses) == 2
    assert_losses_match(losses, two_losses)
    assert_losses_match(val_losses, two_val)
    assert val_losses[-1] < val_losses[0]  # it trains
    # Rank 0 alone wrote: each checkpoint once, whole (it verifies and loads in this one process).
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "latest", "step-000006"]
    assert BertForMaskedLM.from_pretrained(checkpoints / "step-000006").config.hidden_size == 64


def test_a_run_on_two_processes_resumes_on_one(single, tmp_path):
    (losses, _), data = single
    # 3 of 6 scheduled steps on 2 processes under zero3, then the rest on 1 with the same global batch.
    pretrain(tmp_path, data, 2, batch_size=2, parallel="zero3", extra=["--budget.max_steps", "3",
                                                                      "--budget.schedule_steps", "6"])
    resumed, _ = pretrain(tmp_path, data, 1, batch_size=4)
    assert len(resumed) == STEPS
    assert_losses_match(losses, resumed)
