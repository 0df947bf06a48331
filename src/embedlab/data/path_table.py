"""File paths for DataLoader datasets in two numpy arrays, so that worker memory does not grow with the data.

A list of a million ``Path`` objects costs its workers about 365 MB each:
every access touches an object's reference count, fork's copy-on-write
then copies the page holding it, and in time each worker holds its own
copy of the whole list. A :class:`PathTable` keeps the paths as one UTF-8
byte buffer and one offset array. The items are not Python objects, nothing
writes to those pages, and the workers share them with the parent.
``benchmarks/path_memory.py`` measures both side by side.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, overload

import numpy as np


class PathTable(Sequence[Path]):
    """An immutable sequence of paths; ``table[i]`` is a fresh ``Path``."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(np.fromiter((len(e) for e in encoded), np.int64, len(encoded)), out=self._offsets[1:])
        self._bytes = np.frombuffer(b"".join(encoded), np.uint8)

    @classmethod
    def from_buffers(cls, data: np.ndarray, offsets: np.ndarray) -> "PathTable":
        """A table over UTF-8 bytes ``data`` and ``len + 1`` int64 ``offsets`` (as :meth:`buffers` gives them)."""
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(data) or \
                (np.diff(offsets) < 0).any():
            raise ValueError(f"path table offsets must rise from 0 to {len(data)}")
        table = cls(())
        table._bytes, table._offsets = np.asarray(data, np.uint8), np.asarray(offsets, np.int64)
        return table

    def take(self, indices: np.ndarray) -> "PathTable":
        """The paths at ``indices`` (an int array), as a new table built with array operations only."""
        indices = np.asarray(indices, np.int64)
        if len(indices) and not (0 <= indices.min() and indices.max() < len(self)):
            raise IndexError(f"path indices out of range for {len(self)} paths")
        starts, lengths = self._offsets[indices], np.diff(self._offsets)[indices]
        offsets = np.zeros(len(indices) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # byte k of the result is byte (its path's start + its place in that path) of this table
        within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        return PathTable.from_buffers(self._bytes[np.repeat(starts, lengths) + within], offsets)

    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """(UTF-8 bytes, offsets): the whole table as two arrays, e.g. to save it."""
        return self._bytes, self._offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> Path: ...

    @overload
    def __getitem__(self, index: slice) -> "PathTable": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self.take(np.arange(start, stop, step))
            part = PathTable(())  # a contiguous run: views of the same buffers, no copy
            stop = max(start, stop)
            part._offsets = self._offsets[start:stop + 1] - self._offsets[start]
            part._bytes = self._bytes[self._offsets[start]:self._offsets[stop]]
            return part
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"path index {index} out of range for {n} paths")
        return Path(os.fsdecode(self._bytes[self._offsets[i]:self._offsets[i + 1]].tobytes()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PathTable):
            return np.array_equal(self._offsets, other._offsets) and np.array_equal(self._bytes, other._bytes)
        return isinstance(other, Sequence) and len(other) == len(self) and all(
            Path(a) == b for a, b in zip(other, self))

    __hash__ = None  # mutable-looking equality; tables are compared, not hashed

    def __repr__(self) -> str:
        return f"PathTable({len(self)} paths)"


def path_table(paths: Sequence[str | os.PathLike] | PathTable) -> PathTable:
    """``paths`` as a PathTable (a table is used as it is: no copy)."""
    return paths if isinstance(paths, PathTable) else PathTable(paths)
