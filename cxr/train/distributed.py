"""Data-parallel training across processes with torchrun: detection, process group, and the few collectives we need.

One process (the default):
    cxr-train --data folder:/data/nih_cardiomegaly --out runs/r1

Two processes on one CPU machine (gloo) or one GPU each on one machine (nccl):
    torchrun --standalone --nproc_per_node 2 -m cxr.cli.train --data folder:/data/nih --out runs/r1
    torchrun --standalone --nproc_per_node 2 $(which cxr-train) --data folder:/data/nih --out runs/r1

Two machines with 8 GPUs each (run on both, --node_rank 0 on the master):
    torchrun --nproc_per_node 8 --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 \
        -m cxr.cli.train --data folder:/data/nih --out runs/r1

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; their presence switches DDP on. --batch-size is per process, so the
effective batch is batch_size x world_size. Every rank computes the same validation metrics from predictions gathered
from all ranks, rank 0 makes the early-stopping decision and broadcasts it, and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cxr.train.errors import TrainError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, its device, and whether it is the one that writes files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_is_distributed() -> bool:
    """True under torchrun (RANK and WORLD_SIZE in the environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """--device auto|cpu|cuda|cuda:N. A GPU that cannot run is a TrainError, never a silent CPU run."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {choice} was requested but CUDA is not available "
                         "(torch.cuda.is_available() is False)")
    if choice.startswith("cuda:"):
        index, count = int(choice.split(":", 1)[1]), torch.cuda.device_count()
        if index >= count:
            raise TrainError(f"--device {choice}: there is no GPU {index}; this machine has {count} "
                             f"(cuda:0..cuda:{count - 1})")
        if env_is_distributed():
            raise TrainError(f"--device {choice} under torchrun: each process takes the GPU of its LOCAL_RANK; "
                             "use --device cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)")
        return torch.device("cuda", index)
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_choice: str) -> DistContext:
    """Start the process group under torchrun (nccl on GPU, gloo on CPU); a plain context otherwise."""
    if not env_is_distributed():
        return DistContext(device=resolve_device(device_choice))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_choice, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        log.info("process group up: rank %d of %d, backend %s, device %s", rank, world, backend, device)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Sum a few floats over ranks (float64 on the context's device)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def gather_arrays(ctx: DistContext, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate per-rank numpy arrays on every rank, in rank order (shards may differ in length)."""
    if not ctx.enabled:
        return arrays
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def broadcast_from_main(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's value of `obj` on every rank (one decision for all)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) in `module` on every rank, in place."""
    if ctx.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def shard(ctx: DistContext, n: int) -> list[int]:
    """Evaluation shard of this rank: indices rank, rank+W, ... (no padding, so nothing is counted twice)."""
    return list(range(ctx.rank, n, ctx.world_size))
