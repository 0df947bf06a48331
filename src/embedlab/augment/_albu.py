"""The albumentations functional API, imported on first use.

The catalogue draws every parameter from its own rng and calls these pure
functions, so results depend on the seed only (albumentations' transform
classes keep their own random state). The import takes seconds (pydantic
models for every transform), so it is deferred until an op needs it: reading
the query table or building the CLI stays fast.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType


@functools.cache
def fpixel() -> ModuleType:
    """``albumentations.augmentations.pixel.functional``."""
    # The update check reaches the network on import; training machines may have none.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from albumentations.augmentations.pixel import functional

    return functional


@functools.cache
def fblur() -> ModuleType:
    """``albumentations.augmentations.blur.functional``."""
    fpixel()  # same environment setup
    from albumentations.augmentations.blur import functional

    return functional
