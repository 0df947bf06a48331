"""Multi-scale test features: each image embedded at several input sizes, the descriptors averaged.

The GeM original's test (docs/originals/gem.md): the mean of the features at
200, 256, 320 and 400 px, L2-normalised. Each size is embedded into a file of
its own beside the output (``<out>.s<size>.h5``: resumable, like any
embedding), then the mean goes into ``out`` and the per-size files go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from embedlab.config import RuntimeConfig
from embedlab.descriptors import DescriptorFileError, DescriptorReader, write_descriptors
from embedlab.evaluation.embed import Embeddings, embed_to_file
from embedlab.postprocess.whitening import l2_normalize


def scale_file(out: Path, size: int) -> Path:
    return out.with_name(f"{out.stem}.s{size}{out.suffix}")


def embed_multiscale(model: torch.nn.Module, paths: Sequence[Path], out: str | Path, sizes: Sequence[int],
                     on_bad_image: str = "fail", runtime: RuntimeConfig | None = None,
                     progress: bool | str = True) -> Embeddings:
    """``out`` (h5): the L2-normalised mean of ``model``'s descriptors of ``paths`` at each input size.
    ``progress``: a bar per size (a str: its title, followed by the size)."""
    out = Path(out)
    results = [embed_to_file(model, paths, scale_file(out, size), size, on_bad_image, runtime,
                             f"{progress} at {size} px" if isinstance(progress, str) else progress)
               for size in sizes]
    readers = [DescriptorReader(scale_file(out, size)) for size in sizes]
    for size, reader in zip(sizes[1:], readers[1:]):
        if reader.names != readers[0].names:  # an image unreadable at one size only: not the same set
            raise DescriptorFileError(scale_file(out, size), f"names differ from {scale_file(out, sizes[0])}")
    total = sum(reader.read().astype(np.float64) for reader in readers)
    write_descriptors(out, readers[0].names, l2_normalize(total))
    for size in sizes:  # kept until the mean is written: a killed run resumes each size where it stopped
        scale_file(out, size).unlink()
    return results[0]
