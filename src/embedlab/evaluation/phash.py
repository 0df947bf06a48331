"""A classic baseline for copy detection: the 64-bit perceptual hash (``imagehash.phash``).

pHash shrinks an image to 32 × 32 grey levels, takes its 2-D DCT and keeps
one bit per low-frequency coefficient (8 × 8): above or below their median.
It survives resizing, recompression and mild colour changes, and nothing
geometric. Scored by the same search and μAP as the learned models, it tells
whether a model earns its cost: a learned descriptor that does not beat it
has learned nothing a 1990s technique does not know.

As a descriptor, hash bit b becomes ±1/8 (a unit vector of 64 dimensions): the
inner product of two such vectors is 1 − 2·hamming/64, so the exact inner-product
search ranks references by Hamming distance, as a hash index would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import imagehash
import numpy as np

from embedlab.descriptors import write_descriptors
from embedlab.images import load_or_skip

HASH_SIZE = 8  # 8 × 8 = 64 bits, imagehash's default
DIM = HASH_SIZE * HASH_SIZE


def phash_vector(image) -> np.ndarray:
    """A PIL image's 64-bit pHash as a unit ±1/8 float32 vector."""
    bits = imagehash.phash(image, hash_size=HASH_SIZE).hash.reshape(-1)
    return np.where(bits, 1.0, -1.0).astype(np.float32) / np.sqrt(DIM)


def phash_to_file(paths: Sequence[str | os.PathLike], out: Path, on_bad_image: str = "fail",
                  bad_log: Path | None = None) -> int:
    """Hash every image of ``paths`` into descriptor file ``out`` (names: the file stems); returns the
    number of unreadable images skipped (``on_bad_image: skip``)."""
    names, vectors = [], []
    for path in paths:
        image = load_or_skip(path, on_bad_image, bad_log)
        if image is None:
            continue
        names.append(Path(path).stem)
        vectors.append(phash_vector(image))
    write_descriptors(out, names, np.stack(vectors) if vectors else np.zeros((0, DIM), np.float32))
    return len(paths) - len(names)
