"""Which torch device a stage runs on."""

from __future__ import annotations

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
