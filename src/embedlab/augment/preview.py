"""A preview of a recipe: a few source classes, each row its anchor and the first augmentations.

    embedlab augment --recipe bw --preview bw.png

The images are the generator's own (the same seeds, the same JPEG
encoding): the preview shows what the set holds, not a re-drawing.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from embedlab.atomic import atomic_path
from embedlab.augment.context import AugContext
from embedlab.augment.generator import ClassWorker, GenerateSettings
from embedlab.augment.pool import OverlayPool
from embedlab.augment.recipes import Recipe, RecipeAugmenter
from embedlab.data.classes import ClassImage

ROWS, COLUMNS = 4, 6  # classes shown, images per class (the anchor first)


def write_recipe_preview(recipe: Recipe, classes: Sequence[ClassImage], settings: GenerateSettings,
                         pool: OverlayPool, out: str | Path, rows: int = ROWS, columns: int = COLUMNS) -> Path:
    """``out`` (PNG): ``rows`` classes evenly spaced in the set's order, each with its anchor and the next
    ``columns - 1`` images of the set."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    chosen = [classes[i] for i in np.unique(np.linspace(0, len(classes) - 1, min(rows, len(classes))).astype(int))]
    worker = ClassWorker(recipe, dataclasses.replace(settings, per_class=min(columns, settings.per_class)),
                    RecipeAugmenter(recipe, AugContext(pool=pool)))
    results = [worker.run((image, 0)) for image in chosen]
    columns = max(len(r.images) for r in results)
    fig = Figure(figsize=(1.5 * columns, 1.6 * len(chosen) + 0.4), dpi=100)
    axes = fig.subplots(len(chosen), columns, squeeze=False)
    for row, result in zip(axes, results):
        for i, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(result.images):
                ax.axis("off")
                continue
            key, data = result.images[i]
            ax.imshow(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            ax.set_title("anchor" if i == 0 else key.rsplit("/", 1)[-1], fontsize=7)
        row[0].set_ylabel(result.name, fontsize=7)
    fig.suptitle(f"recipe {recipe.name}: each row a class, its anchor and augmentations", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
