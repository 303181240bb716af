"""The training loop: exact resume, schedules, faults, signals, checkpoint safety."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch

from minillama.errors import CheckpointError
from minillama.model import MiniLlama, ModelConfig
from minillama.train import checkpoint as ckpt
from minillama.train import loop
from minillama.train.config import TrainConfig
from minillama.train.distributed import Distributed
from minillama.train.loop import Trainer, TrainingStopped, pretraining_loss


class RandomWindows:
    """A minimal resumable batch source over a fixed token stream (the real loader has its own tests)."""

    def __init__(self, tokens, batch_size=4, seq_len=16, seed=0):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def __next__(self):
        starts = torch.randint(0, len(self.tokens) - self.seq_len - 1, (self.batch_size,), generator=self.generator)
        windows = torch.stack([self.tokens[s:s + self.seq_len + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self):
        return {"rng": self.generator.get_state().tolist()}

    def load_state_dict(self, state):
        self.generator.set_state(torch.tensor(state["rng"], dtype=torch.uint8))


TOKENS = torch.randint(0, 64, (5000,), generator=torch.Generator().manual_seed(0))
MODEL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)


def make_config(out_dir, **budget):
    config = TrainConfig()
    config.run.out_dir = str(out_dir)
    config.run.progress = False
    config.run.precision = "float32"
    config.run.eval_interval = 4
    config.run.checkpoint_interval = 4
    config.run.plot = False
    config.data.batch_size, config.data.seq_len = 4, 16
    config.optim.warmup_steps = 2
    config.optim.lr = 3e-3
    for key, value in budget.items():
        setattr(config.budget, key, value)
    return config


def run(config, loss_fn=pretraining_loss, seed=0):
    torch.manual_seed(seed)
    model = MiniLlama(ModelConfig(**MODEL))
    val = RandomWindows(TOKENS, seed=99)

    def evaluate(m):
        val.load_state_dict(RandomWindows(TOKENS, seed=99).state_dict())
        inputs, targets = next(val)
        return float(pretraining_loss(m, (inputs, targets)))

    trainer = Trainer(config, model, RandomWindows(TOKENS), evaluate, Distributed(0, 1, 0, torch.device("cpu")),
                      batch_loss=loss_fn)
    return trainer.fit()


def losses(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.parametrize("optimizer,schedule", [("adamw", "cosine"), ("muon", "wsd")])
def test_resume_gives_bitwise_identical_losses(tmp_path, optimizer, schedule):
    configs = (make_config(tmp_path / "a", max_steps=12), make_config(tmp_path / "b", max_steps=6, schedule_steps=12),
               make_config(tmp_path / "b", max_steps=12))
    for config in configs:
        config.run.log_interval = 1
        config.optim.optimizer, config.optim.schedule = optimizer, schedule
    straight, first, second = configs
    run(straight)
    assert run(first).step == 6
    result = run(second, seed=123)  # a different init seed: the checkpoint must overwrite everything
    assert result.step == 12
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s] for s in a] == [b[s] for s in a]  # bitwise equal floats


def test_logged_train_loss_is_the_mean_over_the_log_window(tmp_path):
    every_step = make_config(tmp_path / "a", max_steps=10)
    every_step.run.log_interval = 1
    run(every_step)
    windows = make_config(tmp_path / "b", max_steps=10)
    windows.run.log_interval = 5
    run(windows)
    per_step, logged = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(logged) == [1, 5, 10]
    assert logged[1] == per_step[1]
    assert logged[5] == pytest.approx(sum(per_step[s] for s in range(2, 6)) / 4, rel=1e-6)
    assert logged[10] == pytest.approx(sum(per_step[s] for s in range(6, 11)) / 5, rel=1e-6)


def test_checkpoints_rotate_and_keep_the_best(tmp_path):
    config = make_config(tmp_path, max_steps=20)
    config.run.keep_last = 2
    result = run(config)
    kept = ckpt.list_checkpoints(tmp_path / "checkpoints")
    best = ckpt.read_pointer(tmp_path / "checkpoints", "best")
    assert result.checkpoint == kept[0] and kept[0].name == "step-000020"
    assert len(kept) == 2 + (best not in kept[:2]) and best in kept
    reloaded = MiniLlama.from_pretrained(kept[0])  # a checkpoint is a model directory
    assert reloaded.config.hidden_size == 32


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    run(make_config(tmp_path, max_steps=8))
    newest = ckpt.list_checkpoints(tmp_path / "checkpoints")[0]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x04  # one flipped bit
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ckpt.load_checkpoint(newest)
    loaded = ckpt.load_latest_good(tmp_path / "checkpoints")
    assert loaded.state["step"] == 4
    assert "skipping checkpoint step-000008" in caplog.text


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    calls = {"n": 0}

    def poisoned(model, batch, smoothing):
        calls["n"] += 1
        loss = pretraining_loss(model, batch, smoothing)
        return loss * float("nan") if calls["n"] == 7 else loss

    with pytest.raises(TrainingStopped, match="non-finite loss at step 7"):
        run(make_config(tmp_path, max_steps=10), loss_fn=poisoned)
    assert ckpt.load_latest_good(tmp_path / "checkpoints").state["step"] == 4


def test_nonfinite_batches_can_be_skipped(tmp_path):
    calls = {"n": 0}

    def poisoned(model, batch, smoothing):
        calls["n"] += 1
        loss = pretraining_loss(model, batch, smoothing)
        return loss * float("inf") if calls["n"] in (3, 5) else loss

    config = make_config(tmp_path, max_steps=8)
    config.run.on_nonfinite = "skip"
    result = run(config, loss_fn=poisoned)
    assert result.step == 8 and math.isfinite(result.val_loss)


def test_a_time_budget_is_spent_on_training_steps_only(tmp_path, monkeypatch, caplog):
    # Evaluations do not count against the budget, so the first estimate of the steps it allows
    # (which sets the LR schedule) must not reserve time for them. A fake clock makes every
    # training step take exactly 5 ms: 1.8 s of budget is 360 steps.
    ticks = iter(range(10**9))
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: next(ticks) * 0.005))
    config = make_config(tmp_path, max_minutes=0.03)
    config.run.eval_interval = config.run.checkpoint_interval = 10
    trainer = Trainer(config, MiniLlama(ModelConfig(**MODEL)), RandomWindows(TOKENS), lambda m: 1.0,
                      Distributed(0, 1, 0, torch.device("cpu")))
    with caplog.at_level("INFO", logger="minillama.train.loop"):
        result = trainer.fit()
    estimates = [int(r.getMessage().split()[3]) for r in caplog.records if r.getMessage().startswith("time budget")]
    assert result.stopped_by == "budget" and abs(result.step - 360) <= 1
    assert abs(estimates[0] - result.step) <= 1


def test_token_budget_and_metrics(tmp_path):
    result = run(make_config(tmp_path, max_tokens=4 * 16 * 5))
    assert result.step == 5 and result.tokens == 320
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r and "val_perplexity" in r for r in records)
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in records if "loss" in r)


SIGNAL_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train_loop import make_config, run
    config = make_config({out!r}, max_steps=100000)
    config.run.checkpoint_interval = 100000
    result = run(config)
    print("STOPPED", result.stopped_by, result.step, flush=True)
""")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    script = SIGNAL_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stopped_by, step = out.split()[1], int(out.split()[2])
    assert stopped_by == "interrupted" and step > 0
    assert ckpt.load_latest_good(tmp_path / "checkpoints").state["step"] == step


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train_loop import make_config, run
    config = make_config({out!r}, max_steps=100000)
    config.run.checkpoint_interval = 1  # save at every step, so kill -9 lands inside a save
    config.run.keep_last = 1
    run(config)
""")


@pytest.mark.parametrize("delay", [1.5, 2.3])
def test_kill_9_at_any_moment_leaves_the_run_resumable(tmp_path, delay):
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "checkpoints" / "latest").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    loaded = ckpt.load_latest_good(tmp_path / "checkpoints")
    assert loaded is not None and loaded.state["step"] >= 1
    result = run(make_config(tmp_path, max_steps=loaded.state["step"] + 2))
    assert result.step == loaded.state["step"] + 2


def test_pruning_counts_and_removes_only_this_runs_checkpoints(tmp_path):
    other = make_config(tmp_path / "other", max_steps=4)
    run(other)
    first = make_config(tmp_path / "run", max_steps=8)
    first.run.keep_last = 1
    run(first)
    checkpoints = tmp_path / "run" / "checkpoints"
    foreign = checkpoints / "step-000002"  # a folder of the user's, named like a checkpoint
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    stray = checkpoints / "step-000003"  # a checkpoint of another run, copied in
    shutil.copytree(tmp_path / "other" / "checkpoints" / "step-000004", stray)
    second = make_config(tmp_path / "run", max_steps=16)
    second.run.keep_last = 1
    run(second)
    assert (foreign / "notes.txt").read_text() == "mine" and ckpt.load_checkpoint(stray).state["step"] == 4
    ours = [p.name for p in ckpt.list_checkpoints(checkpoints) if p not in (foreign, stray)]
    best = ckpt.read_pointer(checkpoints, "best").name
    assert ours[0] == "step-000016" and set(ours) == {"step-000016", best}


def test_an_interrupted_run_says_which_step_its_validation_loss_is_from(tmp_path):
    calls = {"n": 0}

    def interrupting(model, batch, smoothing):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the loop stops after this step
        return pretraining_loss(model, batch, smoothing)

    result = run(make_config(tmp_path, max_steps=100), loss_fn=interrupting)
    assert (result.stopped_by, result.step, result.val_step) == ("interrupted", 6, 4)


def test_compiled_training_follows_eager_training(tmp_path):
    """run.compile (the demo's default where a C++ compiler exists) trains the same model: every
    step's loss within float tolerance of the eager run's."""
    eager, compiled = make_config(tmp_path / "eager", max_steps=6), make_config(tmp_path / "compiled", max_steps=6)
    compiled.run.compile = True
    for config in (eager, compiled):
        config.run.log_interval = 1
        run(config)
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert [b[s] for s in b] == pytest.approx([a[s] for s in a], rel=1e-4)


def test_compiling_without_a_cpp_compiler_is_one_clear_error(tmp_path, monkeypatch):
    from minillama.errors import MiniLlamaError
    from minillama.train import distributed

    monkeypatch.setattr(distributed, "cpp_compiler_available", lambda: False)
    config = make_config(tmp_path, max_steps=2)
    config.run.compile = True
    with pytest.raises(MiniLlamaError, match="needs a C.. compiler.*install g\\+\\+") as error:
        run(config)
    assert error.value.remedy[:2] == ("run.compile", "false")
