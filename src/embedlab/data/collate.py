"""Batch collation shared by every loader whose items may be skipped unreadable images."""

from __future__ import annotations

import torch


def collate_skipping_bad(batch):
    """Default collation after dropping items whose image was skipped as unreadable (``None``)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return torch.utils.data.default_collate(kept)
