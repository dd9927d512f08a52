"""Device and dtype for the machine at hand: a GPU when there is one, else the CPU in float32."""

from __future__ import annotations

import os

import torch


def pick_device() -> torch.device:
    wanted = os.environ.get("WDYS_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it (the usual VLM serving dtype), float32 on the CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
