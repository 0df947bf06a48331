"""What ops need beyond the image and the rng: other images and fonts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from embedlab.resize import resize_image
from embedlab.augment.fonts import FontBank
from embedlab.augment.pool import OverlayPool, synthetic_background


@dataclass
class AugContext:
    """Shared, read-only resources for the catalogue ops."""

    pool: OverlayPool | None = None
    fonts: FontBank = field(default_factory=FontBank)

    def other_image(self, rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
        """A pool image (synthetic when there is none), resized to ``size`` if given."""
        if self.pool is not None and len(self.pool) > 0:
            img = self.pool.sample(rng)
            return img if size is None or img.size == size else resize_image(img, size)
        return synthetic_background(rng, size or (128, 128))
