"""Device and dtype for the machine at hand: a GPU when there is one, else the CPU in float32."""

from __future__ import annotations

import functools
import logging
import os

import torch

from core import settings
from core.errors import BadParameter


def pick_device() -> torch.device:
    """$WDYS_DEVICE, else `cuda` when there is one, else the CPU, which it says (once per process):
    a GPU worker without a working CUDA setup would otherwise run its models on the CPU unnoticed."""
    wanted = settings.DEVICE.text()
    if wanted:
        try:
            return torch.device(wanted)
        except RuntimeError as exc:  # torch's message lists every device type it knows
            raise BadParameter(
                f"{settings.DEVICE.name} must be a torch device (cpu, cuda, cuda:1, ...), not {wanted!r}"
            ) from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    _warn_cpu_fallback()
    return torch.device("cpu")


@functools.cache
def _warn_cpu_fallback() -> None:
    """To the Prefect run's log when inside one (the worker's task log), else to this module's."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger("wdys.device")
    logger.warning(
        "no CUDA device is available on %s: models run on the CPU (set WDYS_DEVICE=cpu to say so)",
        os.uname().nodename,
    )


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it (the usual VLM serving dtype), float32 on the CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
