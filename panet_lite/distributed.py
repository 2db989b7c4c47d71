"""More than one process, with PyTorch's own engine: `torchrun` starts them, DDP averages gradients.

`torchrun --nproc_per_node=G -m panet_lite train ...` runs G copies of the command. Each joins
the process group (`start`), takes its share of every batch of episodes from the one episode
stream, and DistributedDataParallel averages the gradients; rank 0 alone writes checkpoints and
logs. `test` under torchrun splits its episodes across the ranks and sums the metric's counts,
so it prints exactly the single-process numbers. Without torchrun nothing here does anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .runtime import resolve_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0  # this process, 0..world-1
    world: int = 1  # processes in all

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints: rank 0."""
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Ranks:
    """This process's rank and the world size: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def start(device: str = "auto") -> Ranks:
    """Join torchrun's process group (once; nothing happens without torchrun) and pick this rank's device.

    CUDA: one GPU per process (LOCAL_RANK), the nccl backend. CPU: the gloo backend. A missing
    backend or too few GPUs is a one-line error that names the fix.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise RuntimeError("torchrun started several processes, but this PyTorch build has no torch.distributed; "
                           "install the standard PyTorch wheel, or run one process (python -m panet_lite ...)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if resolve_device(device).type == "cuda":
        gpus = torch.cuda.device_count()
        if local >= gpus:
            raise RuntimeError(f"torchrun started process {local} of this machine, but it has {gpus} GPU(s): use "
                               f"--nproc_per_node {gpus} or fewer")
        torch.cuda.set_device(local)
        backend = "nccl" if dist.is_nccl_available() else "gloo"
    else:
        if not dist.is_gloo_available():
            raise RuntimeError("torchrun with --device cpu needs PyTorch's gloo backend, which this PyTorch build "
                               "lacks: install the standard PyTorch wheel, or run one process (python -m "
                               "panet_lite ...)")
        backend = "gloo"
    dist.init_process_group(backend)
    return current()


def device(name: str = "auto") -> torch.device:
    """The device of this rank: under torchrun on GPUs, the GPU `start` chose; otherwise `resolve_device`."""
    chosen = resolve_device(name)
    if chosen.type == "cuda" and chosen.index is None and current().world > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return chosen


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over every rank, in place (the tensor itself outside a process group)."""
    if current().world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if current().world > 1:
        dist.barrier()


def stop() -> None:
    """Leave the process group (at the end of a command started by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
