"""Embed a folder of images into an ISC descriptor file (h5).

    embedlab embed --checkpoint models/drip/s1/checkpoints/last.ckpt \
        --images data/raw/disc/query --out query.h5

Works on any folder of images. Unreadable images fail the run, or with
``--on-bad-image skip`` are left out and counted in the summary.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from embedlab.data.transforms import resize_square, to_tensor
from embedlab.descriptors import write_descriptors
from embedlab.devices import torch_device
from embedlab.images import list_images, load_or_skip
from embedlab.models.checkpoints import load_descriptor_model

log = logging.getLogger(__name__)


class ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], img_size: int, on_bad_image: str) -> None:
        self.paths, self.img_size, self.on_bad_image = list(paths), img_size, on_bad_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = load_or_skip(self.paths[index], self.on_bad_image)
        return (None if img is None else to_tensor(resize_square(img, self.img_size))), index


def _collate(batch):
    kept = [(t, i) for t, i in batch if t is not None]
    skipped = [i for t, i in batch if t is None]
    images = torch.stack([t for t, _ in kept]) if kept else None
    return images, [i for _, i in kept], skipped


@dataclasses.dataclass
class Embeddings:
    names: list[str]
    vectors: np.ndarray
    skipped: list[Path]
    kept: list[int] = dataclasses.field(default_factory=list)  # index into the paths of each vector


@torch.no_grad()
def embed_paths(
    model: torch.nn.Module,
    paths: Sequence[Path],
    img_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    on_bad_image: str = "fail",
    device: str = "auto",
    progress: bool = True,
) -> Embeddings:
    """Descriptors of ``paths`` (names are file stems, e.g. Q00000)."""
    dev = torch_device(device)
    was_training = model.training
    model.eval().to(dev)
    loader = DataLoader(
        ImageFiles(paths, img_size or model.spec.img_size, on_bad_image),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
    )
    names: list[str] = []
    kept_all: list[int] = []
    chunks: list[np.ndarray] = []
    skipped: list[Path] = []
    for images, kept, bad in tqdm(loader, desc="embed", unit="batch", disable=not progress, leave=False):
        skipped.extend(Path(paths[i]) for i in bad)
        if images is None:
            continue
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            vectors = model(images.to(dev, non_blocking=True))
        chunks.append(vectors.float().cpu().numpy())
        names.extend(Path(paths[i]).stem for i in kept)
        kept_all.extend(kept)
    model.train(was_training)
    dim = model.descriptor_dim
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return Embeddings(names, np.ascontiguousarray(vectors, dtype=np.float32), skipped, kept_all)


def embed_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    img_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    on_bad_image: str = "fail",
    device: str = "auto",
    channels_last: bool = True,
) -> dict:
    """Embed every image of ``images`` with ``checkpoint`` and write ``out`` (h5)."""
    model = load_descriptor_model(checkpoint).use_channels_last(channels_last)
    result = embed_paths(model, list_images(images), img_size, batch_size, num_workers, on_bad_image, device)
    write_descriptors(out, result.names, result.vectors)
    for path in result.skipped:
        log.warning("skipped unreadable image %s", path)
    return {
        "out": str(out),
        "images": len(result.names),
        "skipped": len(result.skipped),
        "dim": int(result.vectors.shape[1]),
    }
