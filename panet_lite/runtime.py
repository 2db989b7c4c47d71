"""Where the tensors run: the device a config names, and the bfloat16 autocast of the GPU runs."""
from __future__ import annotations

import contextlib

import torch

DEVICE_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"  # the --device option of every config


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = cuda if PyTorch sees a GPU, else cpu; "cuda" without a GPU is an error that says so."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast when `amp` is on and the device is a GPU; fp32 (a no-op context) otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
