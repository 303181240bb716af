"""torchrun on CPU with gloo: 2 processes follow the same loss trajectory as 1 process with the
same global batch, for DDP and for FSDP2; and their checkpoints load on any world size."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from minillama.model import MiniLlama

STEPS = 6


def train(out_dir, corpus, processes, batch_size, parallel="ddp", extra=()):
    tokenizer, prepared, _ = corpus
    args = ["-m", "minillama", "train", "--model.preset", "debug", "--run.out_dir", str(out_dir),
            "--data.tokenizer", str(tokenizer), "--data.prepared", str(prepared), "--data.seq_len", "32",
            "--data.batch_size", str(batch_size), "--budget.max_steps", str(STEPS), "--run.log_interval", "1",
            "--run.eval_interval", "3", "--run.precision", "float32", "--run.progress", "false",
            "--run.parallel", parallel, "--run.threads", "1", "--optim.warmup_steps", "2", *extra]
    if processes > 1:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        command = [torchrun, "--standalone", f"--nproc_per_node={processes}", *args]
    else:
        command = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], [r["val_loss"] for r in records if "val_loss" in r]


@pytest.fixture(scope="module")
def single(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, train(out, small_corpus, 1, batch_size=8)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(single, small_corpus, tmp_path, parallel):
    _, (losses, val_losses) = single
    two_losses, two_val = train(tmp_path, small_corpus, 2, batch_size=4, parallel=parallel)
    assert len(two_losses) == len(losses) == STEPS
    assert max(abs(a - b) for a, b in zip(losses, two_losses)) < 1e-5, (losses, two_losses)
    assert max(abs(a - b) for a, b in zip(val_losses, two_val)) < 1e-5
    assert losses[-1] < losses[0]  # it trains
    # Only rank 0 wrote; the checkpoint holds the full model and loads in a single process.
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    assert MiniLlama.from_pretrained(tmp_path / "checkpoints" / latest).config.vocab_size == 512


def test_a_two_process_checkpoint_resumes_in_one_process(single, small_corpus, tmp_path):
    _, (losses, _) = single
    # Stop after 3 of the 6 scheduled steps, then continue in one process with the same global batch.
    train(tmp_path, small_corpus, 2, batch_size=4, extra=["--budget.max_steps", "3", "--budget.schedule_steps", "6"])
    resumed, _ = train(tmp_path, small_corpus, 1, batch_size=8)
    assert max(abs(a - b) for a, b in zip(losses, resumed)) < 1e-5
