"""Checkpoints of a head split over classes: saved whole, re-sliced on load, so a run resumes on any split.

A head too big for one device (GeM's classifier, drip's ArcFace kernel at
1.5M classes) is split by class: over GPUs of one process, or one block per
DDP rank. Its checkpoint holds the head as one process without a split
would hold it (``key``: the whole tensor in that layout), and the
optimizer's per-parameter state of the head (Adam's step and moments) whole
as well, under :data:`OPTIMIZER_KEY`. Loading cuts both into this run's
blocks. Without this, Lightning saves rank 0's optimizer state only and a
resume fails on the block sizes.

The head's parameters must come last in the last parameter group of the
optimizer (register the head last; give it its own group or none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from embedlab.models.sharded_classifier import shard_sizes

OPTIMIZER_KEY = "sharded_head_optimizer_states"  # per optimizer: the head's state, whole


@dataclass
class HeadLayout:
    """Where this process's head parameters sit in the whole head."""

    key: str  # state-dict key of the whole head (the unsplit layout)
    local_keys: list[str]  # state-dict keys of this process's head parameters, in parameter order
    blocks: list[tuple[int, int]]  # (first class, classes) of each of them
    axis: int  # the class axis of the whole tensor (0: rows, 1: columns)
    n_classes: int
    ranks: int  # 1: every block is in this process; else one block per rank, gathered by a collective


def _per_class(value: Any) -> bool:
    """An optimizer state entry with one slice per class (Adam's moments), not a scalar (its step)."""
    return torch.is_tensor(value) and value.dim() >= 1


def _whole(layout: HeadLayout, local: list[torch.Tensor]) -> torch.Tensor:
    """The whole head tensor of which this process holds ``local`` (one per block), on the CPU. With ranks > 1
    every rank must call it (an all-gather)."""
    if layout.ranks == 1:
        return torch.cat([t.detach().cpu() for t in local], dim=layout.axis)
    (block,) = local
    rows = block.detach().movedim(layout.axis, 0)  # gather along the first dimension
    sizes = shard_sizes(layout.n_classes, layout.ranks)
    padded = rows.new_zeros(max(sizes), *rows.shape[1:])  # all_gather needs equal sizes
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded.contiguous())  # every rank saves (Lightning writes rank 0's file)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)]).movedim(0, layout.axis).cpu()


def _block(layout: HeadLayout, whole: torch.Tensor, first: int, size: int) -> torch.Tensor:
    return whole.narrow(layout.axis, first, size).clone()


def save_whole(checkpoint: dict[str, Any], layout: HeadLayout, params: list[torch.Tensor]) -> None:
    """Replace the head's blocks in ``checkpoint`` (state dict and optimizer states) by whole tensors."""
    state = checkpoint["state_dict"]
    for key in layout.local_keys:
        state.pop(key, None)
    state[layout.key] = _whole(layout, params)
    n_local = len(layout.blocks)
    for optimizer_state in checkpoint.get("optimizer_states", []):
        group = optimizer_state["param_groups"][-1]
        held = [optimizer_state["state"].pop(i, None) for i in group["params"][-n_local:]]
        group["params"] = group["params"][:-n_local]
        whole = {}
        if all(held):  # nothing before the first optimizer step
            whole = {k: _whole(layout, [h[k] for h in held]) if _per_class(v) else v for k, v in held[0].items()}
        checkpoint.setdefault(OPTIMIZER_KEY, []).append(whole)


def load_sliced(checkpoint: dict[str, Any], layout: HeadLayout) -> None:
    """Cut the whole head tensors of ``checkpoint`` into this process's blocks, in place (before Lightning loads
    the state dict and the optimizer states from it)."""
    state = checkpoint["state_dict"]
    whole = state.pop(layout.key)
    for key, (first, size) in zip(layout.local_keys, layout.blocks):
        state[key] = _block(layout, whole, first, size)
    saved = checkpoint.pop(OPTIMIZER_KEY, None)
    if saved is None:  # written before heads were saved whole: its optimizer state is as it was written
        return
    for optimizer_state, held in zip(checkpoint.get("optimizer_states", []), saved):
        group = optimizer_state["param_groups"][-1]
        next_id = sum(len(g["params"]) for g in optimizer_state["param_groups"])
        for j, (first, size) in enumerate(layout.blocks):
            group["params"].append(next_id + j)
            if held:
                optimizer_state["state"][next_id + j] = {
                    k: _block(layout, v, first, size) if _per_class(v) else v for k, v in held.items()}
