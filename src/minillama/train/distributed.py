"""One process or many under torchrun: DDP (replicate), or the ZeRO stages on PyTorch's own stack.

    ddp    every rank holds the parameters, gradients and optimizer state (DistributedDataParallel)
    zero1  DDP + `ZeroRedundancyOptimizer`: each rank holds and updates 1/N of the optimizer state
    zero2  FSDP2 `fully_shard(reshard_after_forward=False)`: optimizer state and gradients sharded;
           the parameters are gathered once per step and stay whole from forward through backward
    zero3  FSDP2 `fully_shard`: parameters too are sharded, each block gathered just while it runs
           (`fsdp` is another name for it)

The model knows nothing of parallelism; this wraps it from outside. Checkpoints always hold the
full (unsharded) model and optimizer state keyed by parameter name, so they load on any world size
and under any stage.

    torchrun --nproc_per_node 4 -m minillama train --run.parallel zero2 ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from minillama.errors import MiniLlamaError
from minillama.hardware import available_cpus, cpp_compiler_available, resolve_device
from minillama.train.config import PARALLEL_ALIASES

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
T = TypeVar("T")


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    parallel: str = "ddp"  # what `wrap` did: ddp, zero1, zero2 or zero3 (ddp in one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto", threads: int | None = None) -> Distributed:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; start the process group when > 1."""
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
        resolved = resolve_device(device, local_rank)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 on Ampere+: same quality, faster
            torch.backends.cudnn.allow_tf32 = True
        if resolved.type == "cpu":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(threads or max(1, available_cpus() // local_world))
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
        return cls(rank, world_size, local_rank, resolved)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    # ---- wrapping -----------------------------------------------------------------------------
    def wrap(self, model: nn.Module, parallel: str = "ddp", compile: bool = False) -> nn.Module:
        """DDP or FSDP2 around `model` under torchrun (by ZeRO stage: see the module's docstring),
        optionally compiled; `model` itself stays the module whose parameters the optimizer holds.
        zero1's sharding lives in the optimizer (`build_optimizers(zero_redundancy=True)`)."""
        parallel = PARALLEL_ALIASES.get(parallel, parallel)
        model.to(self.device)
        wrapped: nn.Module = model
        self.parallel = parallel if self.world_size > 1 else "ddp"
        if self.parallel in ("zero2", "zero3"):
            from torch.distributed.fsdp import fully_shard

            # zero2 keeps each block's gathered parameters from its forward to its backward (one
            # all-gather a step); zero3 frees them after forward and gathers again in backward
            # (None: FSDP2's default, which keeps the root's own parameters, needed first in backward).
            reshard = None if self.parallel == "zero3" else False
            for layer in model.blocks():  # shard each block, then the rest (embedding, head)
                fully_shard(layer, reshard_after_forward=reshard)
            fully_shard(model, reshard_after_forward=reshard)
        elif self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        if compile and self.device.type == "cpu" and not cpp_compiler_available():
            raise MiniLlamaError("run.compile needs a C++ compiler on the CPU (torch.compile writes C++ kernels) and "
                                 "none was found: install g++ or set CXX", remedy=("run.compile", "false", "train "
                                                                                   "without compiling"))
        return torch.compile(wrapped) if compile else wrapped

    def no_sync(self, wrapped: nn.Module, last: bool):
        """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""
        inner = getattr(wrapped, "_orig_mod", wrapped)
        if last or not hasattr(inner, "no_sync"):
            return contextlib.nullcontext()
        return inner.no_sync()

    # ---- per-step collectives -----------------------------------------------------------------
    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(v) for v in batch)
        return batch

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over processes (one sync)."""
        if self.world_size > 1:
            value = value.detach().clone()
            dist.all_reduce(value, op=dist.ReduceOp.AVG if self.device.type == "cuda" else dist.ReduceOp.SUM)
            if self.device.type != "cuda":  # gloo has no AVG
                value /= self.world_size
        return float(value)

    def sum_over_ranks(self, values: Sequence[float]) -> list[float]:
        """Each of `values` summed over processes, in float64 (one sync; the values in one process)."""
        if self.world_size == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: a sharded DTensor norm
            norm = norm.full_tensor()
        return float(norm)

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` (a picklable object), in rank order, on rank 0; None on the others."""
        if self.world_size == 1:
            return [value]
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # ---- full state for checkpoints (collective under FSDP) -------------------------------
    def full_model_state(self, wrapped: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state by parameter name, on the CPU (a tied weight may appear once)."""
        if self.world_size > 1:
            return get_model_state_dict(model, options=FULL)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def full_optimizer_state(self, wrapped: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
        """The optimizers' state as one full (unsharded) dict keyed by parameter name (collective
        under zero1/2/3; under zero1 only rank 0 gets it, the others an empty dict)."""
        model = _unwrap(wrapped)
        if self.parallel == "zero1":
            return _zero_full_state(model, optimizers, self.is_main)
        return get_optimizer_state_dict(model, optimizers, options=FULL)

    def load_optimizer_state(self, wrapped: nn.Module, optimizers: list[torch.optim.Optimizer],
                             state: dict[str, Any]) -> None:
        """Load a full state from `full_optimizer_state` (saved under any stage and world size)."""
        model = _unwrap(wrapped)
        if self.parallel == "zero1":
            _zero_load_full_state(model, optimizers, state)
            return
        set_optimizer_state_dict(model, optimizers, state, options=StateDictOptions(full_state_dict=True))

    # ---- what this rank holds -------------------------------------------------------------------
    @staticmethod
    def parameter_bytes(model: nn.Module) -> int:
        """Bytes of the parameters this rank holds now: FSDP2 swaps a module's sharded DTensor
        parameters for whole ones while they are gathered, and back when it reshards."""
        return sum(_local_bytes(p) for p in model.parameters())

    def memory(self, model: nn.Module, optimizers: list[torch.optim.Optimizer],
               params_in_step: int = 0) -> dict[str, Any]:
        """Bytes of parameters, gradients and optimizer state this rank holds now, after an
        optimizer step (local shards: a DTensor's `to_local()`, zero1's own partition), next to
        what DDP would hold (the whole of each); `params_in_step`: parameter bytes held between a
        forward and its backward (`parameter_bytes` then). Collective under zero1 (the whole
        optimizer state is the sum of the partitions)."""
        params = list(model.parameters())
        held = {"params": self.parameter_bytes(model),
                "grads": sum(_local_bytes(p.grad) for p in params if p.grad is not None),
                "optimizer": sum(_local_bytes(t) for opt in optimizers for t in _state_tensors(_local_optimizer(opt)))}
        whole = {"params": sum(_full_bytes(p) for p in params),
                 "grads": sum(_full_bytes(p.grad) for p in params if p.grad is not None)}
        if self.parallel == "zero1":
            total = torch.tensor(float(held["optimizer"]), dtype=torch.float64, device=self.device)
            dist.all_reduce(total)
            whole["optimizer"] = int(total.item())
        else:
            whole["optimizer"] = sum(_full_bytes(t) for opt in optimizers for t in _state_tensors(opt))
        report = {"parallel": self.parallel, "world_size": self.world_size,
                  **{f"{k}_bytes": v for k, v in held.items()}, "params_in_step_bytes": params_in_step,
                  **{f"ddp_{k}_bytes": v for k, v in whole.items()}, "max_rss_bytes": _max_rss_bytes()}
        if self.device.type == "cuda":  # the allocator's peak: activations and buffers included
            report["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return report


def is_main_process() -> bool:
    """Rank 0 under torchrun, or one process: the one process that prints a command's results
    (the others' are partial: rank 0 alone writes the final model and its scores)."""
    return int(os.environ.get("RANK", "0")) == 0


def rank_rows(rows: Sequence[T], batch_size: int, rank: int = 0, world_size: int = 1,
              max_batches: int | None = None) -> Iterator[tuple[list[T], bool]]:
    """Evaluation under torchrun: `rows` in order, cut into global batches of `batch_size` x
    `world_size` (the first `max_batches` of them), as one process with the global batch cuts them;
    yields (this rank's rows of each, whether they count). Every rank yields once per global batch,
    since under FSDP each forward gathers weights collectively and a rank that ran one forward fewer
    would leave the others waiting forever: a rank with no rows of a short last batch gets that
    batch's first row to run a forward on, and False (count nothing). Sum what the ranks count
    (`Distributed.sum_over_ranks`) for one process's totals."""
    size = batch_size * world_size
    end = len(rows) if max_batches is None else min(len(rows), max_batches * size)
    for start in range(0, end, size):
        batch = list(rows[start:min(start + size, end)])
        mine = batch[rank * len(batch) // world_size:(rank + 1) * len(batch) // world_size]
        yield (mine, True) if mine else (batch[:1], False)


def _max_rss_bytes() -> int:
    """This process's peak resident memory (runtime, data and activations included); 0 where
    the platform has no getrusage (Windows)."""
    import sys

    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _unwrap(wrapped: nn.Module) -> nn.Module:
    model = getattr(wrapped, "_orig_mod", wrapped)  # torch.compile
    return getattr(model, "module", model)  # DDP


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def _full_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()  # a DTensor's numel is the global one


def _local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer: this rank's partition


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() if state for v in state.values() if torch.is_tensor(v)]


def _zero_full_state(model: nn.Module, optimizers: list[torch.optim.Optimizer], is_main: bool) -> dict[str, Any]:
    """ZeroRedundancyOptimizers' partitions gathered on rank 0, re-keyed by parameter name into the
    layout `get_optimizer_state_dict(full_state_dict=True)` writes for unsharded optimizers."""
    names = {id(p): name for name, p in model.named_parameters()}
    full: dict[str, Any] = {"state": {}, "param_groups": []}
    for optimizer in optimizers:
        optimizer.consolidate_state_dict(to=0)  # collective
        if not is_main:
            continue
        saved = optimizer.state_dict()  # indices follow the order of optimizer.param_groups
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        for index, state in saved["state"].items():
            full["state"][order[index]] = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}
        for group in saved["param_groups"]:
            full["param_groups"].append({**group, "params": [order[i] for i in group["params"]]})
    return full


def _zero_load_full_state(model: nn.Module, optimizers: list[torch.optim.Optimizer], full: dict[str, Any]) -> None:
    """A full state keyed by parameter name into ZeroRedundancyOptimizers: each keeps its partition."""
    names = {id(p): name for name, p in model.named_parameters()}
    saved_group = {name: group for group in full["param_groups"] for name in group["params"]}
    for optimizer in optimizers:
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        index = {name: i for i, name in enumerate(order)}
        groups = [{**saved_group[names[id(group["params"][0])]],
                   "params": [index[names[id(p)]] for p in group["params"]]} for group in optimizer.param_groups]
        state = {index[name]: dict(value) for name, value in full["state"].items() if name in index}
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        local = _local_optimizer(optimizer)
        for group in local.param_groups:  # ZeRO puts "step" on the CPU; fused kernels want it by the parameter
            if group.get("fused") or group.get("capturable"):
                for p in group["params"]:
                    if torch.is_tensor(local.state.get(p, {}).get("step")):
                        local.state[p]["step"] = local.state[p]["step"].to(p.device)
