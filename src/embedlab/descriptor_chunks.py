"""Descriptor files written chunk by chunk: memory that does not grow with the image set, and a killed run resumes.

While an embedding runs, each chunk of consecutive input images goes to its
own file in ``<out>.parts/`` as soon as its batches are done. Each file is
written atomically, so a kill never leaves half a chunk. Beside the chunks, a
manifest names what is being embedded: the image list, the model's weights
and the settings that change the vectors. A rerun with the same manifest
continues after the last complete chunk; with any other manifest it starts
afresh. When the last chunk is in, the chunks are copied one at a time into
the h5 (ISC layout, written atomically) and the folder is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embedlab.atomic import atomic_path, write_json_atomic
from embedlab.descriptors import DescriptorFileError, non_finite_rows

log = logging.getLogger(__name__)

_CHUNK = re.compile(r"chunk_(\d{12})_(\d{12})\.npz")
_FORMAT = 1  # bump when the chunk files change: older parts are then started afresh


@dataclass
class Chunk:
    """The descriptors of input images ``start`` to ``stop`` (exclusive), those left out as input indices."""

    start: int
    stop: int
    names: list[str]
    vectors: np.ndarray
    skipped: list[int]
    kept: list[int] = field(default_factory=list)  # input index of each vector (not stored)


def images_digest(paths: Sequence[Path | str]) -> str:
    """Digest of an ordered image list (a resumed embedding must read the same files in the same order)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def weights_digest(model) -> str:
    """Digest of a torch module's parameters and buffers (the model a resumed embedding must run)."""
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_names(out: Path, paths: Sequence[Path | str]) -> None:
    """Refuse, before any image is embedded, names the h5 cannot hold: duplicate or non-ASCII file stems."""
    stems = [Path(p).stem for p in paths]
    dups = sorted(n for n, c in Counter(stems).items() if c > 1)
    if dups:
        raise DescriptorFileError(out, f"{len(dups)} image names (file stems) appear more than once among the inputs "
                                       f"(first: {', '.join(dups[:5])}): each descriptor is stored under its stem")
    bad = next((n for n in stems if not n.isascii()), None)
    if bad is not None:
        raise DescriptorFileError(out, f"image name {bad!r} is not ASCII (the ISC format stores names as ASCII)")


class ChunkedDescriptors:
    """The ``<out>.parts/`` folder of one embedding into ``out``."""

    def __init__(self, out: str | Path, identity: dict[str, Any]) -> None:
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.identity = {"format": _FORMAT, **identity}

    @property
    def manifest(self) -> Path:
        return self.parts / "manifest.json"

    def resume(self, start: int = 0, end: int | None = None) -> int:
        """The input index to start at: after the complete chunks of the same embedding that follow one another
        from ``start`` up to ``end`` (a process's range when several share the embedding), else ``start``;
        parts of another embedding are cleared."""
        if self.parts.is_dir():
            try:
                found = json.loads(self.manifest.read_text())
            except (OSError, ValueError):
                found = None
            if found != self.identity:
                log.info("%s: parts of another embedding (other images, weights or settings): starting afresh",
                         self.parts)
                shutil.rmtree(self.parts)
        if not self.parts.is_dir():
            self.parts.mkdir(parents=True)
            write_json_atomic(self.manifest, self.identity)
            return start
        chain = self._complete(start, end)
        done = chain[-1][1] if chain else start
        if done > start:
            log.info("%s: resuming after %d images already embedded", self.out, done - start)
        return done

    def _complete(self, start: int = 0, end: int | None = None) -> list[tuple[int, int, Path]]:
        """(start, stop, file) of the chunks that follow one another from input ``start`` (up to ``end``);
        stray ones are ignored."""
        found = {}
        for path in self.parts.glob("chunk_*.npz"):
            match = _CHUNK.fullmatch(path.name)
            if match:
                found[int(match.group(1))] = (int(match.group(1)), int(match.group(2)), path)
        chunks, at = [], start
        while at in found and (end is None or at < end):
            chunks.append(found[at])
            at = found[at][1]
        return chunks

    def write(self, chunk: Chunk) -> None:
        vectors = np.ascontiguousarray(chunk.vectors, dtype=np.float32)
        bad = non_finite_rows(vectors)
        if bad:
            raise DescriptorFileError(self.out, f"{bad} vectors of images {chunk.start}-{chunk.stop - 1} contain NaN "
                                                "or infinite values (the model's output): nothing written")
        names = np.array([n.encode("ascii") for n in chunk.names], dtype=bytes) if chunk.names else np.zeros(0, "S1")
        with atomic_path(self.parts / f"chunk_{chunk.start:012d}_{chunk.stop:012d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, names=names, vectors=vectors, skipped=np.asarray(chunk.skipped, np.int64))

    def finish(self, total: int, dim: int) -> tuple[int, list[int]]:
        """Copy the chunks into ``out`` (atomically), remove the parts; returns (vectors written, skipped indices)."""
        import h5py

        chunks = self._complete()
        if (chunks[-1][1] if chunks else 0) != total:
            raise DescriptorFileError(self.parts, f"chunks cover {chunks[-1][1] if chunks else 0} of {total} images")
        rows, width = 0, 1
        for _, _, path in chunks:  # sizes first: the h5 datasets are made once, at their final size
            with np.load(path) as c:
                rows += len(c["names"])
                width = max(width, c["names"].dtype.itemsize)
        skipped: list[int] = []
        with atomic_path(self.out) as tmp, h5py.File(tmp, "w") as f:
            vectors = f.create_dataset("vectors", shape=(rows, dim), dtype=np.float32)
            names = f.create_dataset("image_names", shape=(rows,), dtype=f"S{width}")
            at = 0
            for _, _, path in chunks:  # one chunk in memory at a time
                with np.load(path) as c:
                    n = len(c["names"])
                    vectors[at:at + n] = c["vectors"].reshape(n, dim)
                    names[at:at + n] = c["names"].astype(f"S{width}")
                    skipped.extend(int(i) for i in c["skipped"])
                    at += n
        shutil.rmtree(self.parts)
        return rows, skipped
