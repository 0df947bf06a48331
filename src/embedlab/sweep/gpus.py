"""Which GPUs each sweep worker sees: its own, not every trial on cuda:0.

The launcher splits the GPUs visible to it (``CUDA_VISIBLE_DEVICES`` when
set, else all of them) among its ``--workers`` processes, round robin: with
8 GPUs and 4 workers each gets 2, with 2 GPUs and 4 workers two share each.
A worker's ``CUDA_VISIBLE_DEVICES`` names its GPUs, so its trials'
``runtime.device: auto`` (or ``cuda``) lands on them.
"""

from __future__ import annotations

import os


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_gpus(index: int, workers: int, gpus: list[str]) -> list[str]:
    """The GPUs of worker ``index`` of ``workers``: a block of len(gpus) // workers of them, or one shared
    GPU each when there are fewer GPUs than workers; none without GPUs."""
    if not gpus:
        return []
    if len(gpus) < workers:
        return [gpus[index % len(gpus)]]
    share = len(gpus) // workers
    return gpus[index * share:(index + 1) * share]
