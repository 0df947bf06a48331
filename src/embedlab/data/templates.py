"""The decoder's training pairs: face photos and their templates.

::

    <out>/train.h5, test.h5     templates (float32, L2-normalised) in the descriptor layout,
                                named by photo path (relative to the face root)
    <out>/train.csv, test.csv   path,person  (the same order)
    <out>/manifest.json         the template model, its digest, sizes, counts

Reading checks what the decoder relies on: rows match the CSV, no NaN,
unit norm, the expected size; each failure names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from embedlab.atomic import write_csv_atomic
from embedlab.data.path_table import PathTable, path_table
from embedlab.data.photo_list import PhotoListError, person_indices, read_path_person_table
from embedlab.data.transforms import resize_square
from embedlab.descriptors import DescriptorReader, rows_per_slice, write_descriptors
from embedlab.images import load_or_skip

NORM_TOLERANCE = 1e-3


class TemplateFileError(ValueError):
    """Templates the decoder cannot use; the message names the file and the problem."""


@dataclass
class TemplateSet:
    """Templates and who they show, as arrays: 10M pairs cost their templates' map and about 70 bytes a row."""

    paths: PathTable  # relative to the face root
    person: np.ndarray  # int32: row -> index into persons
    persons: np.ndarray  # person names (bytes), sorted
    templates: np.ndarray  # (N, D) float32, unit rows (read back: a read-only memory map of the h5)

    @classmethod
    def from_rows(cls, paths: Sequence[str], persons: Sequence[str], templates: np.ndarray) -> "TemplateSet":
        """A set from one path and one person name per template (small sets: tests, demos)."""
        return cls(PathTable(paths), *person_indices(persons), templates)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.templates.shape[1])

    def person_name(self, index: int) -> str:
        return self.persons[self.person[index]].decode()

    def __getstate__(self) -> dict:
        # A memory map travels as where it lies (spawned workers map the file again), not as its 20 GB of rows.
        state = dict(self.__dict__)
        if isinstance(self.templates, np.memmap):
            state["templates"] = ("memmap", self.templates.filename, self.templates.offset, self.templates.shape)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["templates"], tuple):
            _, filename, offset, shape = state["templates"]
            state["templates"] = np.memmap(filename, np.float32, "r", offset=offset, shape=shape)
        self.__dict__.update(state)


def write_template_set(out_dir: Path, split: str, ts: TemplateSet) -> None:
    """``<split>.h5`` and ``<split>.csv``, each written atomically."""
    names = [str(p) for p in ts.paths]
    write_descriptors(out_dir / f"{split}.h5", names, ts.templates.astype(np.float32))
    write_csv_atomic(out_dir / f"{split}.csv", ("path", "person"),
                     ((name, ts.person_name(i)) for i, name in enumerate(names)))


def _as_table(names: np.ndarray) -> PathTable:
    """Names as h5py reads them (fixed-width NUL-padded bytes, or strings) as a PathTable, without a loop
    over fixed-width names."""
    if names.dtype.kind != "S" or not len(names):
        return PathTable(os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in names.tolist())
    raw = names.view(np.uint8).reshape(len(names), names.dtype.itemsize)
    used = raw != 0  # a name holds no NUL: the padding is what is left of its width
    offsets = np.zeros(len(names) + 1, np.int64)
    np.cumsum(used.sum(axis=1), out=offsets[1:])
    return PathTable.from_buffers(raw[used], offsets)


def _check_same_paths(reader: DescriptorReader, paths: PathTable, table: Path) -> None:
    """The h5's names are the table's paths, row for row (compared a slice at a time)."""
    if len(reader) != len(paths):
        raise TemplateFileError(f"{table}: its {len(paths)} paths do not match the {len(reader)} templates "
                                f"of {reader.path.name}")
    for start, names in reader.name_slices(1 << 20):
        stored, listed = _as_table(names), paths[start:start + len(names)]
        if stored != listed:
            i = next(i for i in range(len(stored)) if stored[i] != listed[i])
            raise TemplateFileError(f"{table}: its paths do not match the templates of {reader.path.name}: row "
                                    f"{start + i + 1} is {str(listed[i])!r}, template {start + i} is {str(stored[i])!r}")


def read_template_set(out_dir: str | Path, split: str, dim: int | None = None) -> TemplateSet:
    out_dir = Path(out_dir)
    h5, table = out_dir / f"{split}.h5", out_dir / f"{split}.csv"
    for path in (h5, table):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `embedlab templates` first")
    reader = DescriptorReader(h5, with_names=False)  # checks the shape; the names are compared below, in slices
    vectors = reader.mapped()  # 10M × 512-d is 20 GB: mapped, not read
    try:
        paths, person, persons = read_path_person_table(table)
    except PhotoListError as err:
        raise TemplateFileError(str(err)) from err
    _check_same_paths(reader, paths, table)
    check_templates(vectors, h5, dim)
    return TemplateSet(paths, person, persons, vectors)


def check_templates(vectors: np.ndarray, source: str | Path, dim: int | None = None) -> None:
    """Templates must be finite, L2-normalised rows of the expected size."""
    if vectors.ndim != 2:
        raise TemplateFileError(f"{source}: templates must be (N, D), got shape {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise TemplateFileError(f"{source}: templates have {vectors.shape[1]} dimensions, the decoder expects {dim}")
    finite = np.ones(len(vectors), bool)
    norms = np.ones(len(vectors), np.float32)
    rows = rows_per_slice(vectors.shape[1])
    for start in range(0, len(vectors), rows):  # in slices: a whole-array check of 10M rows needs GBs
        block = np.asarray(vectors[start:start + rows], np.float32)
        finite[start:start + len(block)] = np.isfinite(block).all(axis=1)
        norms[start:start + len(block)] = np.linalg.norm(np.where(np.isfinite(block), block, 0), axis=1)
    if not finite.all():
        raise TemplateFileError(f"{source}: {int((~finite).sum())} templates hold NaN or infinite values "
                                f"(first row {int(np.argmin(finite))})")
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise TemplateFileError(f"{source}: {int(off.sum())} templates are not L2-normalised "
                                f"(row {i} has norm {norms[i]:.4f}); templates must have unit length")


def to_unit_tensor(img, size: int) -> torch.Tensor:
    """PIL image -> float RGB tensor in [0, 1], (3, size, size)."""
    array = np.asarray(resize_square(img, size).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class PhotoFiles(Dataset):
    """(photo in [0, 1] at ``size``, index) for embedding photos with a face model; ``paths`` under ``root``."""

    def __init__(self, root: Path, paths: Sequence[Path] | PathTable, size: int, on_bad_image: str = "fail") -> None:
        self.root, self.paths, self.size, self.on_bad_image = Path(root), path_table(paths), size, on_bad_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = load_or_skip(self.root / self.paths[index], self.on_bad_image)
        return None if img is None else (to_unit_tensor(img, self.size), index)


class TemplatePairs(Dataset):
    """(template, photo normalised by mean 0.5 / std 0.5 at ``size``): one decoder training pair."""

    def __init__(self, ts: TemplateSet, root: str | Path, size: int, on_bad_image: str = "fail") -> None:
        self.ts, self.size, self.on_bad_image = ts, size, on_bad_image
        self.root = Path(root)

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, index: int):
        img = load_or_skip(self.root / self.ts.paths[index], self.on_bad_image)
        if img is None:
            return None
        photo = (to_unit_tensor(img, self.size) - 0.5) / 0.5
        return torch.from_numpy(np.array(self.ts.templates[index])), photo  # a copy of one row of the map
