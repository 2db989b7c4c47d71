"""Where the tensors run: the device a config names, and the bfloat16 autocast of the GPU runs."""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

DEVICE_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"  # the --device option of every config
DTYPES = ("float32", "float64")  # --dtype: the paper's precision, or double for comparisons without round-off
WORKERS_HELP = ("DataLoader worker processes, or auto: on a GPU one per CPU core (at most 8), with pinned memory and "
                "4 batches in flight each; on the CPU 0 (the cores compute, the main process loads). The episodes, "
                "weights and numbers are the same whatever the count")
MAX_AUTO_WORKERS = 8


def auto_or_int(text: str) -> int | str:
    """--workers, test's --batch-size: "auto" or a count."""
    return "auto" if text.lower() == "auto" else int(text)


AUTO_TEST_BATCH = 8  # test --batch-size auto on a GPU: episodes per forward pass


def test_batch_size(batch_size: int | str, device: torch.device, per_query: bool) -> int:
    """test's --batch-size: a count as given; auto is AUTO_TEST_BATCH episodes per forward pass on a GPU
    (one episode leaves most of it idle) and 1 on the CPU or where each query is scored at its own size."""
    if batch_size != "auto":
        return batch_size
    return AUTO_TEST_BATCH if device.type == "cuda" and not per_query else 1


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sharing_processes() -> int:
    """How many processes of this run share this machine's cores: torchrun's local processes, or the
    jobs `reproduce --gpus` runs side by side (it sets PANET_LITE_SHARED_BY in each)."""
    return max(1, int(os.environ.get("PANET_LITE_SHARED_BY") or os.environ.get("LOCAL_WORLD_SIZE") or 1))


def loader_options(workers: int | str, device: torch.device) -> dict[str, Any]:
    """DataLoader keyword arguments for `workers` ("auto" or a count) feeding `device`.

    auto: on CUDA this process's share of the cores (`sharing_processes`), at most MAX_AUTO_WORKERS,
    each with 4 batches in flight; on the CPU 0, since the same cores would
    both load and compute. Pinned memory on CUDA lets the copies to the GPU overlap.
    """
    if workers == "auto":
        share = max(1, cpu_cores() // sharing_processes())
        workers = min(MAX_AUTO_WORKERS, share) if device.type == "cuda" else 0
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options |= {"persistent_workers": True, "prefetch_factor": 4}
    return options


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = cuda if PyTorch sees a GPU, else cpu; "cuda" without a GPU is an error that says so."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def check_precision(amp: bool, dtype: str) -> None:
    """--amp (bfloat16 autocast) and --dtype float64 ask for opposite things: refuse them together."""
    if amp and dtype != "float32":
        raise ValueError(f"--amp computes in bfloat16 and --dtype {dtype} in double precision: drop one")


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Logits and losses in float32 at least: autocast's bfloat16 goes up to float32, float64 stays."""
    return x if x.dtype == torch.float64 else x.float()


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast when `amp` is on and the device is a GPU; fp32 (a no-op context) otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
