"""One process or many under torchrun: DDP (replicate) or FSDP2 (`fully_shard`).

The model knows nothing of parallelism; this wraps it from outside. Checkpoints always hold the
full (unsharded) model and optimizer state keyed by parameter name, so they load on any world size.

    torchrun --nproc_per_node 4 -m minillama train --run.parallel fsdp ...
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from minillama.hardware import available_cpus, resolve_device

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

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
        """DDP or FSDP2 around `model` under torchrun, optionally compiled; `model` itself stays
        the module whose parameters the optimizer holds."""
        model.to(self.device)
        wrapped: nn.Module = model
        if self.world_size > 1 and parallel == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in model.blocks():  # shard each block, then the rest (embedding, head)
                fully_shard(layer)
            fully_shard(model)
        elif self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
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

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: a sharded DTensor norm
            norm = norm.full_tensor()
        return float(norm)

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
        """The optimizers' state as one full (unsharded) dict keyed by parameter name."""
        model = getattr(wrapped, "_orig_mod", wrapped)
        model = getattr(model, "module", model)  # DDP
        return get_optimizer_state_dict(model, optimizers, options=FULL)

    def load_optimizer_state(self, wrapped: nn.Module, optimizers: list[torch.optim.Optimizer],
                             state: dict[str, Any]) -> None:
        model = getattr(wrapped, "_orig_mod", wrapped)
        model = getattr(model, "module", model)
        set_optimizer_state_dict(model, optimizers, state, options=StateDictOptions(full_state_dict=True))
