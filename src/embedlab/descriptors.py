"""Descriptor files (h5): write the ISC 2021 layout, read it and the seed layout.

ISC layout (one image set per file): ``vectors`` float32 N x D and
``image_names`` ASCII bytes. Seed layout (one submission file): ``query``,
``reference``, ``query_ids``, ``reference_ids``; pick one with ``subset``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from embedlab.atomic import atomic_path

SEED_SUBSETS = ("query", "reference")
SLICE_BYTES = 64 << 20  # vectors read at a time: 65,536 rows of 256-d, 2,048 of 8192-d


def rows_per_slice(dim: int) -> int:
    return max(1, SLICE_BYTES // (4 * max(dim, 1)))


class DescriptorFileError(ValueError):
    """A descriptor file is missing, unreadable or inconsistent."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _decode_names(raw: np.ndarray) -> list[str]:
    # h5py returns bytes for fixed-length ASCII and str or bytes for vlen strings.
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw.tolist()]


def non_finite_rows(vectors: np.ndarray) -> int:
    """Rows of ``vectors`` holding NaN or infinite values."""
    return int(np.count_nonzero(~np.isfinite(vectors).all(axis=1))) if vectors.size else 0


def _validate(path: str | os.PathLike, names: list[str], vectors: np.ndarray) -> None:
    if vectors.ndim != 2:
        raise DescriptorFileError(path, f"vectors must be 2-D (N x D), got shape {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.number) or np.issubdtype(vectors.dtype, np.complexfloating):
        raise DescriptorFileError(path, f"vectors must be real numbers, got dtype {vectors.dtype}")
    if len(names) != vectors.shape[0]:
        raise DescriptorFileError(path, f"{len(names)} image names for {vectors.shape[0]} vectors")
    bad_rows = non_finite_rows(vectors)
    if bad_rows:
        raise DescriptorFileError(path, f"{bad_rows} of {vectors.shape[0]} vectors contain NaN or infinite values")
    if len(set(names)) != len(names):
        dups = sorted(n for n, c in Counter(names).items() if c > 1)
        raise DescriptorFileError(path, f"{len(dups)} image names appear more than once (first: {', '.join(dups[:5])})")
    blank = sum(1 for n in names if not n.strip())
    if blank:
        raise DescriptorFileError(path, f"{blank} image names are empty")


def encode_names(path: str | os.PathLike, names: Sequence[str]) -> np.ndarray:
    """Image names as the h5 files store them: ASCII bytes (a non-ASCII name is an error naming ``path``)."""
    try:
        encoded = np.array([n.encode("ascii") for n in names], dtype=bytes)
    except UnicodeEncodeError as err:
        bad = next(n for n in names if not n.isascii())
        raise DescriptorFileError(path, f"image name {bad!r} is not ASCII") from err
    return encoded if len(names) else np.zeros(0, dtype="S1")


def write_descriptors(path: str | os.PathLike, names: Sequence[str], vectors: np.ndarray) -> None:
    """Write ``names`` and ``vectors`` (N x D) in the ISC layout, atomically.

    Validated first (same rules as reading), so a bad file is never written.
    Names must be ASCII (the ISC format stores them as ASCII bytes).
    """
    import h5py

    names = [str(n) for n in names]
    vectors = np.ascontiguousarray(np.asarray(vectors), dtype=np.float32)
    _validate(path, names, vectors)
    encoded = encode_names(path, names)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("vectors", data=vectors)
            f.create_dataset("image_names", data=encoded)


def _dataset(path: Path, f, key: str):
    import h5py

    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise DescriptorFileError(
            path, f"missing dataset {key!r} (found: {', '.join(sorted(f.keys())) or 'nothing'})"
        )
    return f[key]


def _layout_keys(path: Path, f, subset: str | None) -> tuple[str, str]:
    """(vectors key, names key) of the file's layout, checked against ``subset``."""
    if "vectors" in f or "image_names" in f:
        if subset is not None:
            raise DescriptorFileError(
                path, f"ISC layout (one image set) but subset={subset!r} was given; pass subset=None"
            )
        return "vectors", "image_names"
    if any(k in f for k in (*SEED_SUBSETS, "query_ids", "reference_ids")):
        if subset not in SEED_SUBSETS:
            raise DescriptorFileError(
                path, f"seed layout holds two sets: choose subset='query' or 'reference' (got {subset!r})"
            )
        return subset, f"{subset}_ids"
    found = ", ".join(sorted(f.keys())) or "nothing"
    raise DescriptorFileError(
        path,
        "missing datasets: expected 'vectors' + 'image_names' (ISC layout) or "
        f"'query'/'reference' + '*_ids' (seed layout); found: {found}",
    )


class DescriptorReader:
    """A descriptor file's names and shape, its vectors read whole or in row slices.

    Opening reads and checks the names only; :meth:`slices` holds one slice of
    vectors in memory at a time, so a 1M-reference file can go into a search
    index without a second full copy beside it. Every vector is checked
    (finite numbers) as it is read; problems raise DescriptorFileError naming the file.
    """

    def __init__(self, path: str | os.PathLike, subset: str | None = None, with_names: bool = True) -> None:
        """``with_names=False``: do not read the names into memory (10M names are a GB of Python strings);
        only their count is checked, and :meth:`name_slices` reads them a slice at a time."""
        import h5py

        self.path = Path(path)
        self.zero_vectors = 0  # all-zero vectors among those the last whole pass of slices() read
        if not self.path.is_file():
            raise DescriptorFileError(self.path, "file not found")
        if not h5py.is_hdf5(self.path):
            raise DescriptorFileError(self.path, "not an HDF5 file")
        with self._open() as f:
            self._vectors_key, self._names_key = _layout_keys(self.path, f, subset)
            vectors = _dataset(self.path, f, self._vectors_key)
            names = _dataset(self.path, f, self._names_key)
            names_shape = names.shape
            raw_names = np.asarray(names[()]) if with_names else None
            self.shape = tuple(vectors.shape)
            dtype = vectors.dtype
        if len(names_shape) != 1:
            raise DescriptorFileError(self.path, f"image names must be 1-D, got shape {names_shape}")
        if len(self.shape) != 2:
            raise DescriptorFileError(self.path, f"vectors must be 2-D (N x D), got shape {self.shape}")
        if dtype.kind != "f":  # integers: a file of labels or indices, or a quantised set scored as if it were not
            raise DescriptorFileError(self.path, f"vectors must be floating point (float32 as embedlab and the ISC "
                                                 f"format write them), got dtype {dtype}")
        if raw_names is None:
            if names_shape[0] != self.shape[0]:
                raise DescriptorFileError(self.path, f"{names_shape[0]} image names for {self.shape[0]} vectors")
            return
        self.names = _decode_names(raw_names)
        # The shape and names are checked now (a zero-width stand-in for the vectors); the values as they are read.
        _validate(self.path, self.names, np.zeros((self.shape[0], 0), np.float32))

    def name_slices(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, the names of ``rows`` consecutive rows as stored: fixed-width bytes for the ISC layout),
        one slice in memory at a time."""
        with self._open() as f:
            names = f[self._names_key]
            for start in range(0, len(self), rows):
                yield start, np.asarray(names[start:start + rows])

    def _open(self):
        import h5py

        try:
            return h5py.File(self.path, "r")
        except OSError as err:  # corrupt or truncated HDF5
            raise DescriptorFileError(self.path, f"cannot read HDF5 file ({err})") from err

    @property
    def dim(self) -> int:
        return int(self.shape[1])

    def __len__(self) -> int:
        return int(self.shape[0])

    def slices(self, rows: int | None = None, check: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 C-contiguous vectors) for consecutive slices of ``rows`` rows (default: 64 MiB).

        ``check``: refuse a slice with NaN or infinite values (off: the caller counts them). After a whole
        pass, :attr:`zero_vectors` holds how many of the vectors were all zeros (counted on the way)."""
        rows = rows or rows_per_slice(self.dim)
        self.zero_vectors = 0
        with self._open() as f:
            data = f[self._vectors_key]
            for start in range(0, len(self), rows):
                try:
                    part = np.ascontiguousarray(data[start:start + rows], dtype=np.float32)
                except OSError as err:
                    raise DescriptorFileError(self.path, f"cannot read vectors {start}-{start + rows - 1} "
                                                         f"({err})") from err
                bad = non_finite_rows(part) if check else 0
                if bad:
                    raise DescriptorFileError(self.path, f"{bad} vectors among rows {start}-{start + len(part) - 1} "
                                                         "contain NaN or infinite values")
                self.zero_vectors += zero_rows(part)
                yield start, part

    def mapped(self) -> np.ndarray:
        """The vectors as a read-only memory map of the file when they are stored plainly (float32,
        contiguous, uncompressed: what embedlab writes), else :meth:`read`. A map costs no memory of its
        own (the OS pages rows in and out, and forked workers share them); its values are not checked here
        (the caller checks them slice by slice)."""
        with self._open() as f:
            data = f[self._vectors_key]
            offset = data.id.get_offset()
            plain = data.chunks is None and data.compression is None and data.dtype == np.float32
        if not plain or offset is None or not len(self):
            return self.read()
        return np.memmap(self.path, np.float32, "r", offset=offset, shape=self.shape)

    def read(self) -> np.ndarray:
        """All vectors, float32 C-contiguous (one array, filled slice by slice)."""
        out = np.empty((len(self), self.dim), np.float32)
        bad = 0
        for start, part in self.slices(check=False):
            out[start:start + len(part)] = part
            bad += non_finite_rows(part)
        if bad:
            raise DescriptorFileError(self.path, f"{bad} of {len(self)} vectors contain NaN or infinite values")
        return out


def zero_rows(vectors: np.ndarray) -> int:
    """Vectors that are all zeros: no direction, so every score with them is 0 (an image the model never saw,
    or a file filled with placeholders)."""
    return int(np.count_nonzero(~vectors.any(axis=1))) if vectors.size else 0


def read_descriptors(path: str | os.PathLike, subset: str | None = None) -> tuple[list[str], np.ndarray]:
    """Read ``(names, vectors)`` from an ISC-layout or seed-layout h5 file.

    ``subset`` must be None for the ISC layout and "query" or "reference" for
    the seed layout. Vectors come back float32, C-contiguous. Raises
    DescriptorFileError (naming the file) on any problem.
    """
    reader = DescriptorReader(path, subset)
    return reader.names, reader.read()
