"""The one training loop: pretraining, SFT, LoRA and classification all run through `Trainer`.

What differs between them enters as data (a batch iterator with `state_dict()`), a loss
function `batch_loss(model, batch, label_smoothing) -> scalar` and which parameters require grad.
The loop owns everything else: precision, accumulation, clipping, the LR schedule, budgets,
evaluation, metrics, checkpoints, exact resume, faults and signals, DDP / FSDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from minillama.errors import CheckpointError, MiniLlamaError
from minillama.files import DirectoryLock
from minillama.hardware import runs_bf16_natively
from minillama.model import MiniLlama, ModelConfig, io
from minillama.model.config import IGNORE_INDEX
from minillama.progress import progress_bar
from minillama.train import checkpoint as ckpt
from minillama.train.config import TrainConfig
from minillama.train.distributed import Distributed
from minillama.train.metrics import MetricsLog
from minillama.train.optim import build_optimizers, learning_rate
from minillama.train.perf import peak_flops

log = logging.getLogger(__name__)
# Model settings that change how it runs, not what it is: a checkpoint resumes under other values.
RUNTIME_MODEL_SETTINGS = ("attn_implementation",)
CALIBRATION_STEPS = (5, 20)  # steps timed to turn a wall-clock budget into a step count


class BatchIterator(Protocol):
    def __next__(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ModelFiles(Protocol):
    """How a checkpoint stores the model: `write(full_state, directory)` and `read(directory) ->
    full_state` (loaded strictly). Fine-tuning stores a classifier, or only the LoRA adapters."""

    def write(self, state: dict[str, torch.Tensor], directory: Path) -> None: ...
    def read(self, directory: Path) -> dict[str, torch.Tensor]: ...


@dataclass
class CausalLMFiles:
    """The default: a `MiniLlama.from_pretrained` directory (config.json + model.safetensors)."""

    config: ModelConfig

    def write(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        io.write_causal_lm_dir(self.config, state, directory)

    def read(self, directory: Path) -> dict[str, torch.Tensor]:
        return MiniLlama.from_pretrained(directory).state_dict()


class TrainingStopped(MiniLlamaError):
    """Training could not go on (a non-finite loss, say); the last good checkpoint is intact."""


@dataclass
class TrainingResult:
    out_dir: Path
    step: int
    tokens: int
    train_loss: float | None
    val_loss: float | None  # the last evaluation's, made at step `val_step`
    best_val_loss: float | None
    checkpoint: Path | None
    stopped_by: str  # "budget" | "interrupted"
    seconds: float
    val_step: int | None = None


def pretraining_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                     label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token loss on a window: batch = (inputs, targets), each (B, T), targets already shifted."""
    inputs, targets = batch
    return model(inputs, targets=targets, label_smoothing=label_smoothing).loss  # fused head + loss


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA when supported (else fp16 with a scaler); on CPU bf16 where the CPU
    runs it natively (AMX / AVX512-BF16: faster at the same loss, see benchmarks/bench_train.py),
    else float32."""
    if requested != "auto":
        return getattr(torch, requested)
    if runs_bf16_natively(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


class Trainer:
    """Runs `config` on `model` with batches from `train_batches`; `evaluate(model) -> val loss`.

    The run directory is this process's alone while it trains: `lock` is the caller's hold on it
    (`checkpoint.claim_run_directory`), else the Trainer claims it and lets go when `fit` ends.
    """

    def __init__(self, config: TrainConfig, model: MiniLlama, train_batches: BatchIterator,
                 evaluate: Callable[[nn.Module], float] | None, dist: Distributed,
                 batch_loss: Callable[..., torch.Tensor] = pretraining_loss,
                 tokens_per_batch: int | None = None, tokenizer_dir: Path | None = None,
                 extra_state: dict[str, Any] | None = None, model_files: ModelFiles | None = None,
                 lock: DirectoryLock | None = None):
        config = dataclasses.replace(config, budget=config.budget.resolved())
        self.config, self.dist, self.batches = config, dist, train_batches
        self.evaluate_fn, self.batch_loss = evaluate, batch_loss
        self.out_dir = Path(config.run.out_dir)
        self.checkpoints = self.out_dir / "checkpoints"
        self.lock, self._owns_lock = lock, lock is None and dist.is_main
        if self._owns_lock:
            self.lock = ckpt.claim_run_directory(self.out_dir)
        self.tokenizer_dir = tokenizer_dir
        self.extra_state = extra_state or {}
        self.device = dist.device
        self.dtype = resolve_precision(config.run.precision, self.device)
        self.tokens_per_step = (tokens_per_batch or config.data.batch_size * config.data.seq_len) \
            * config.optim.grad_accum * dist.world_size
        self.model = model  # unwrapped: its state dict is what checkpoints hold
        self.model_files = model_files or CausalLMFiles(model.config)
        self.step, self.tokens, self.elapsed, self.skipped = 0, 0, 0.0, 0
        self.total_steps: int | None = None
        self._memory_logged, self._params_in_step = False, 0
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.last_val_step: int | None = None
        self.run_id = uuid.uuid4().hex  # names this run's checkpoints (kept across resumes)
        self._verified: set[Path] = set()  # checkpoints known to verify, for pruning
        try:
            self._resume()
        except BaseException:
            self._let_go()
            raise
        self.saved_step = self.step  # a resumed step is already saved
        if config.run.qat:  # the same Parameters behind a rounding forward: state dict unchanged
            from minillama.quant.fake import apply_fake_quant

            apply_fake_quant(model, config.run.qat, config.run.qat_group_size)
        if config.run.keep_sparsity:  # a pruned model's zeros stay zero (the mask read from the weights)
            from minillama.quant.prune import mask_gradients

            mask_gradients(model)
        self.wrapped = dist.wrap(model, config.run.parallel, compile=config.run.compile)
        self.optimizers = build_optimizers(model, config.optim, self.device.type,
                                           zero_redundancy=dist.parallel == "zero1")
        self.memory: dict[str, Any] | None = None  # what this rank holds, measured after its first step
        if self._resumed is not None:
            dist.load_optimizer_state(self.wrapped, self.optimizers, self._resumed.tensors["optimizer"])
            self._restore_rng(self._resumed.tensors)
            self._resumed = None  # the whole optimizer state as read: keeping it would undo a stage's sharding
        elif dist.rank > 0:
            # Every rank seeded alike to build the same model (FSDP broadcasts nothing); from here on
            # each rank's dropout must differ, or all ranks drop the same units of their rows. Rank 0
            # keeps the stream one process has, so one process is unchanged.
            torch.manual_seed(rank_seed(config.run.seed, dist.rank))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def _let_go(self) -> None:
        if self._owns_lock:
            self.lock.release()

    # ---- resume ----------------------------------------------------------------------------
    def _resume(self) -> None:
        """Continue the run in out_dir (resume auto), start afresh in an unused one (never), or
        start from a given checkpoint. Never mixes two runs in one directory."""
        self._resumed = None
        source = ckpt.resume_source(self.out_dir, self.config.run.resume)
        if source is None:
            return
        loaded = ckpt.load_latest_good(self.checkpoints) if source == "auto" else ckpt.load_checkpoint(source)
        if loaded is None:
            return
        state = loaded.state
        self._check_same_model(loaded.path, state)
        saved_optimizer = state.get("config", {}).get("optim", {}).get("optimizer", "adamw")
        if saved_optimizer != self.config.optim.optimizer:
            raise CheckpointError(f"{loaded.path} was trained with optim.optimizer {saved_optimizer}, whose state does "
                                  f"not fit {self.config.optim.optimizer}: resume with {saved_optimizer}, or start a "
                                  "new run elsewhere", remedy=ckpt.NEW_OUT_DIR)
        try:
            self.model.load_state_dict(self.model_files.read(loaded.path))
        except RuntimeError as exc:  # a checkpoint from before model shapes were saved with it
            first = str(exc).strip().splitlines()[-1].strip()
            raise CheckpointError(f"the weights in {loaded.path} do not fit this model ({first}); resume with "
                                  "the model settings of that run, or start a new run elsewhere",
                                  remedy=ckpt.NEW_OUT_DIR) from None
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.skipped, self.total_steps = state.get("skipped", 0), state.get("total_steps")
        self.best_val_loss, self.last_val_loss = state.get("best_val_loss"), state.get("val_loss")
        self.last_val_step = state.get("val_step")
        self.run_id = state.get("run_id") or self.run_id
        self.batches.load_state_dict(state["data"])
        self._resumed = loaded
        self._check_no_foreign_checkpoints()
        if self.dist.is_main:
            log.info("resuming from %s (step %d, %s tokens)", loaded.path, self.step, f"{self.tokens:,}")

    def _check_same_model(self, path: Path, state: dict[str, Any]) -> None:
        """The model must have the checkpoint's shape: name the settings that differ."""
        saved, current = state.get("model_config"), self.model.config.to_dict()
        if saved is None:
            return
        differ = sorted(k for k in saved.keys() | current.keys()
                        if k not in RUNTIME_MODEL_SETTINGS and saved.get(k) != current.get(k))
        if differ:
            was = ", ".join(f"{k}={saved.get(k)}" for k in differ)
            now = ", ".join(f"{k}={current.get(k)}" for k in differ)
            raise CheckpointError(f"{path} holds a model with {was}, this run asks for {now}: resume with the same "
                                  "model settings, or start a new run elsewhere", remedy=ckpt.NEW_OUT_DIR)

    def _check_no_foreign_checkpoints(self) -> None:
        """A step-N directory of something else, beyond the resumed step, would be in the way of a
        later save: refuse now, not after hours of training."""
        for path in ckpt.list_checkpoints(self.checkpoints):
            if ckpt.step_of(path) > self.step and not ckpt.of_run(path, self.run_id):
                raise CheckpointError(f"{path} is not a checkpoint of this run, and this run would save there; "
                                      "move it away")

    def _restore_rng(self, tensors: dict[str, Any]) -> None:
        """This rank's random state as saved (`_rng_state`): exact under the same world size. Under
        another, rank 0 takes rank 0's, and the other ranks start a stream of (seed, rank, step)."""
        saved = tensors.get("rank_rng")  # every rank's, saved under torchrun
        if saved is not None and len(saved) == self.dist.world_size:
            tensors = saved[self.dist.rank]
        elif self.dist.rank > 0:
            torch.manual_seed(rank_seed(self.config.run.seed, self.dist.rank, self.step))
            return
        torch.set_rng_state(tensors["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in tensors:
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)

    def _rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    # ---- the budget ------------------------------------------------------------------------
    def _schedule_steps(self) -> int | None:
        """Steps of the LR schedule: given, or from the step / token budget; None while a time
        budget has not been calibrated yet."""
        budget = self.config.budget
        if budget.schedule_steps:
            return budget.schedule_steps
        candidates = [budget.max_steps] if budget.max_steps else []
        if budget.max_tokens:
            candidates.append(math.ceil(budget.max_tokens / self.tokens_per_step))
        if self.total_steps:
            candidates.append(self.total_steps)
        return min(candidates) if candidates else None

    def _calibrate(self, seconds_per_step: float) -> None:
        """Turn the time budget into a step count. `elapsed` counts training steps only, so
        evaluations and checkpoints take no share of the budget."""
        remaining = self.config.budget.max_minutes * 60 - self.elapsed
        self.total_steps = self.step + max(1, int(remaining / seconds_per_step))
        if self.dist.is_main:
            log.info("time budget: about %d steps at %.3f s/step", self.total_steps, seconds_per_step)

    def _budget_reached(self) -> bool:
        budget = self.config.budget
        if budget.max_steps and self.step >= budget.max_steps:
            return True
        if budget.max_tokens and self.tokens >= budget.max_tokens:
            return True
        if budget.max_minutes and self.elapsed >= budget.max_minutes * 60:
            return True
        return bool(self.total_steps) and self.step >= self.total_steps and not budget.max_steps

    # ---- one optimizer step ----------------------------------------------------------------
    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def train_step(self, lr: float) -> tuple[float, float]:
        """Forward/backward over grad_accum micro-batches, clip, step. Returns (loss, grad norm)."""
        accum, smoothing = self.config.optim.grad_accum, self.config.optim.label_smoothing
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            batch = self.dist.to_device(next(self.batches))
            with self.dist.no_sync(self.wrapped, last=micro == accum - 1), self._autocast():
                loss = self.batch_loss(self.wrapped, batch, smoothing) / accum
            if self.memory is None and micro == 0:  # parameters gathered between forward and backward
                self._params_in_step = self.dist.parameter_bytes(self.model)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach()
        if self.scaler:
            for optimizer in self.optimizers:
                self.scaler.unscale_(optimizer)
        clip = self.config.optim.grad_clip or float("inf")
        grad_norm = self.dist.clip_grad_norm(self.model, clip)
        loss_value = self.dist.mean(total)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self._zero_grad()
            self._nonfinite(loss_value, grad_norm)
            return loss_value, grad_norm
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
            if self.scaler:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
        if self.scaler:
            self.scaler.update()
        if self.memory is None:  # gradients and optimizer state exist now (both are made lazily)
            self.memory = self.dist.memory(self.model, self.optimizers, self._params_in_step)
        self._zero_grad()
        return loss_value, grad_norm

    def _zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _nonfinite(self, loss: float, grad_norm: float) -> None:
        what = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {self.step + 1}"
        run = self.config.run
        if run.on_nonfinite == "skip" and self.skipped < run.max_skips:
            self.skipped += 1
            log.warning("%s: batch skipped (%d of at most %d)", what, self.skipped, run.max_skips)
            return
        raise TrainingStopped(f"{what} (loss {loss}, grad norm {grad_norm}); the last good checkpoint in "
                              f"{self.checkpoints} is intact: lower optim.lr, or use --run.on_nonfinite skip")

    # ---- evaluation and checkpoints ------------------------------------------------------------
    def evaluate(self) -> float | None:
        if self.evaluate_fn is None:
            return None
        self.wrapped.eval()
        with torch.no_grad(), self._autocast():
            loss = self.evaluate_fn(self.wrapped)
        self.wrapped.train()
        self.last_val_loss = self.dist.mean(torch.tensor(loss, device=self.device))
        self.last_val_step = self.step
        if self.best_val_loss is None or self.last_val_loss < self.best_val_loss:
            self.best_val_loss = self.last_val_loss
        return self.last_val_loss

    def save(self) -> Path | None:
        """A checkpoint of the current step (collective under FSDP; rank 0 writes)."""
        self.saved_step = self.step
        model_state = self.dist.full_model_state(self.wrapped, self.model)
        optim_state = self.dist.full_optimizer_state(self.wrapped, self.optimizers)
        rng = self._rng_state()
        every_rank = self.dist.gather(rng)  # each rank draws its own dropout (collective)
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        tensors = {"optimizer": optim_state, **rng}
        if self.dist.world_size > 1:
            tensors["rank_rng"] = every_rank
        state = {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed, "skipped": self.skipped,
                 "total_steps": self.total_steps, "val_loss": self.last_val_loss, "val_step": self.last_val_step,
                 "best_val_loss": self.best_val_loss, "data": self.batches.state_dict(),
                 "world_size": self.dist.world_size, "run_id": self.run_id, "config": self.config.to_dict(),
                 "model_config": self.model.config.to_dict(), **self.extra_state}
        path = ckpt.save_checkpoint(self.checkpoints, self.step, self.model_files.write, model_state, tensors,
                                    state, self.tokenizer_dir, self.config.run.keep_last, self.last_val_loss,
                                    self._verified)
        self.dist.barrier()
        return path

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainingResult:
        """Train to the budget or a signal, then save; the run directory is let go however it ends."""
        try:
            return self._fit()
        finally:
            self._let_go()

    def _fit(self) -> TrainingResult:
        run = self.config.run
        metrics = MetricsLog(self.out_dir, self.step, run.tensorboard, run.wandb, self.config.to_dict()) \
            if self.dist.is_main else None
        peak = peak_flops(self.device, self.dtype)
        flops_per_step = self.model.flops_per_token(self.config.data.seq_len) * self.tokens_per_step
        progress = self._progress_bar()
        interrupted = _SignalFlag()
        self.wrapped.train()
        # metrics report the mean train loss over each log window: one small batch's loss is noisy
        train_loss, window_start, window_steps, window_loss = None, time.perf_counter(), 0, 0.0
        calibrate_from, calibrate_to = (self.step + n for n in CALIBRATION_STEPS)
        calibration_elapsed = 0.0
        with interrupted:
            while not self._budget_reached() and not interrupted.raised:
                started = time.perf_counter()
                total = self._schedule_steps()
                lr = learning_rate(self.step, total or 10**9, self.config.optim)
                train_loss, grad_norm = self.train_step(lr)
                self.step += 1
                self.tokens += self.tokens_per_step
                self.elapsed += time.perf_counter() - started
                window_steps += 1
                window_loss += train_loss
                if self.config.budget.max_minutes and not self.config.budget.max_steps:
                    if self.step == calibrate_from:  # the first steps are slow (allocation, warm-up)
                        calibration_elapsed = self.elapsed
                    elif self.step == calibrate_to or (self.step > calibrate_to
                                                       and self.step % run.eval_interval == 0):
                        # re-estimated at each evaluation: the machine's speed may change
                        self._calibrate((self.elapsed - calibration_elapsed) / (self.step - calibrate_from))
                        progress.total = self._schedule_steps()
                if self.memory is not None and not self._memory_logged:
                    self._log_memory(metrics)
                if self.step % run.log_interval == 0 or self.step == 1:
                    seconds = time.perf_counter() - window_start
                    tokens_per_s = window_steps * self.tokens_per_step / seconds
                    mfu = tokens_per_s * flops_per_step / self.tokens_per_step / peak
                    mean_loss = window_loss / window_steps
                    window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
                    record = {"step": self.step, "tokens": self.tokens, "loss": mean_loss, "lr": lr,
                              "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "mfu": mfu,
                              "elapsed": self.elapsed}
                    if metrics:
                        metrics.write(record)
                    progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_s:,.0f}",
                                         mfu=f"{mfu:.0%}", refresh=False)
                progress.update(1)
                self._periodic(metrics)
        finished = self._budget_reached()
        if self.saved_step != self.step:  # interrupted between checkpoints
            self.save()
        last_path = ckpt.read_pointer(self.checkpoints, "latest")
        progress.close()
        if metrics:
            metrics.close()
        stopped_by = "budget" if finished else "interrupted"
        if stopped_by == "interrupted" and self.dist.is_main:
            log.info("interrupted at step %d; checkpoint saved in %s; run the same command to resume",
                     self.step, last_path)
        return TrainingResult(self.out_dir, self.step, self.tokens, train_loss, self.last_val_loss,
                              self.best_val_loss, last_path, stopped_by, self.elapsed, self.last_val_step)

    def _periodic(self, metrics: MetricsLog | None) -> None:
        """Evaluate and checkpoint on their intervals, and both at the last step."""
        run = self.config.run
        last_step = self._budget_reached()
        if self.step % run.eval_interval == 0 or last_step:
            self._log_eval(metrics)
        if self.step % run.checkpoint_interval == 0 or last_step:
            self.save()

    def _log_memory(self, metrics: MetricsLog | None) -> None:
        """Bytes of parameters, gradients and optimizer state on this rank (rank 0's; the others
        hold the same up to rounding of the shards) against DDP's whole copies."""
        self._memory_logged = True
        if not self.dist.is_main:
            return
        m = self.memory
        parts = ", ".join(f"{what} {_mib(m[f'{what}_bytes'])} (DDP {_mib(m[f'ddp_{what}_bytes'])})"
                          for what in ("params", "grads", "optimizer"))
        parts += f"; params gathered during a step {_mib(m['params_in_step_bytes'])}"
        log.info("memory per rank (%s on %d processes): %s", m["parallel"], m["world_size"], parts)
        if metrics:
            metrics.write({"step": self.step, "memory": m})

    def _log_eval(self, metrics: MetricsLog | None) -> None:
        val_loss = self.evaluate()
        if val_loss is None or metrics is None:
            return
        metrics.write({"step": self.step, "tokens": self.tokens, "val_loss": val_loss,
                       "val_perplexity": math.exp(min(val_loss, 50)), "elapsed": self.elapsed})
        if self.config.run.plot:
            metrics.plot()

    def _progress_bar(self):
        return progress_bar(total=self._schedule_steps(), initial=self.step, unit="step", desc="train",
                            enabled=self.config.run.progress and self.dist.is_main)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank `rank`'s random stream (dropout) under torchrun, from `run.seed`, for ranks
    above 0 (rank 0 keeps one process's stream); `step` > 0 when a resume under another world size
    has no saved state for the rank. Hashed, so no rank's stream is another run's seed."""
    digest = hashlib.sha256(f"minillama rank stream {seed} {rank} {step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


class _SignalFlag:
    """SIGINT / SIGTERM set a flag so the loop can save a checkpoint and stop cleanly; a second
    SIGINT interrupts at once."""

    def __init__(self):
        self.raised = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = True
        log.warning("%s received: saving a checkpoint after this step (Ctrl-C again to abort)",
                    signal.Signals(signum).name)

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def evaluate_batches(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device) -> tuple[float, int]:
    """Mean next-token loss over (inputs, targets) batches; returns (mean nats/token, tokens)."""
    total, count = 0.0, 0
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        n = int((targets != IGNORE_INDEX).sum())
        total += float(model(inputs, targets=targets).loss) * n
        count += n
    if count == 0:
        raise MiniLlamaError("the validation set is too small for one window; use a shorter data.seq_len")
    return total / count, count
