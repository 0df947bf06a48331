"""The albumentations functional API, imported once with the update check off.

The catalogue draws every parameter from its own rng and calls these pure
functions, so results depend on the seed only (albumentations' transform
classes keep their own random state).
"""

from __future__ import annotations

import os

# The update check reaches the network on import; training machines may have none.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from albumentations.augmentations.blur import functional as fblur  # noqa: E402
from albumentations.augmentations.pixel import functional as fpixel  # noqa: E402

__all__ = ["fblur", "fpixel"]
