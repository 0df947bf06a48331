"""Which torch device a stage runs on."""

from __future__ import annotations

import os

import torch


def torch_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def lightning_precision(setting: str) -> str:
    """Lightning's precision for a stage's ``precision`` setting; ``auto`` picks by hardware."""
    if setting != "auto":
        return setting
    if not torch.cuda.is_available():
        return "32-true"
    # bf16 where the GPU has it natively (Ampere+); fp16 with a scaler before that (V100, T4).
    return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an inference ``precision`` on ``device``; None: plain fp32.

    ``auto``: bf16 on a GPU that has it natively, fp16 on older GPUs (V100, T4:
    inference needs no loss scaler), fp32 on the CPU (CPU autocast is slower
    than fp32 on most CPUs without AMX). ``bf16`` / ``fp16`` force autocast on
    any device, CPU included.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(setting: int | str, device: torch.device) -> int:
    """DataLoader worker processes for a ``num_workers`` setting; ``auto`` sizes from the machine.

    With a GPU the workers do all the CPU work: one per core, at most 8 (more
    rarely helps and costs memory). On the CPU the model needs the cores too:
    half of them decode, the rest run the model.
    """
    if setting == "auto":
        cpus = available_cpus()
        return min(8, cpus) if device.type == "cuda" else min(8, cpus // 2)
    workers = int(setting)
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0 or 'auto', got {setting!r}")
    return workers


def pin_memory_for(setting: bool | str, device: torch.device) -> bool:
    """``pin_memory`` ``auto``: on when batches go to a CUDA device (faster, asynchronous copies)."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"pin_memory must be true, false or 'auto', got {setting!r}")
