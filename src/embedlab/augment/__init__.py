"""Image augmentation: the op catalogue, the overlay pool and the drip
stage's intensity-scaled query augmenter."""

from __future__ import annotations

from embedlab.augment.catalogue import REGISTRY, get_transform, transform_names
from embedlab.augment.context import AugContext
from embedlab.augment.fonts import FontBank
from embedlab.augment.pool import OverlayPool, synthetic_background
from embedlab.augment.query import (
    QUERY_TABLE,
    QueryAug,
    QueryAugmenter,
    check_intensity,
    format_query_table,
    query_augmentation_table,
)
from embedlab.augment.registry import draw, register

__all__ = [
    "QUERY_TABLE",
    "REGISTRY",
    "AugContext",
    "FontBank",
    "OverlayPool",
    "QueryAug",
    "QueryAugmenter",
    "check_intensity",
    "draw",
    "format_query_table",
    "get_transform",
    "query_augmentation_table",
    "register",
    "synthetic_background",
    "transform_names",
]
