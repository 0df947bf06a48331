"""The decoder's photo list: millions of (photo, person) rows in a few arrays (``embedlab import pairs``).

The original decoder trained on 10.6M (template, photo) pairs. Their photos
come as a table, CSV or Parquet, with a ``path`` column (relative to a root
folder, or absolute) and a ``person`` column (who it shows: the templates
stage splits train and test by person). The importer reads it column by
column with pyarrow, checks it, and writes::

    <out>/photos.npz    path bytes + offsets (a PathTable), person (int32), persons (names)
    <out>/photos.json   the root, the source table, counts, what was left out

A row is refused (or, with ``on_bad_image: skip``, left out and counted)
when its photo does not exist; an empty path or person, a duplicate path
or a missing column is an error naming the table. Photos are not decoded
here: at 10M that is hours, and the templates stage decodes each photo
anyway, under the same ``on_bad_image``.

Memory: the paths stay UTF-8 bytes with offsets from the table to the file
(about 60 bytes per photo), never 10M Python strings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from embedlab.atomic import write_json_atomic, write_npz_atomic
from embedlab.data.path_table import PathTable
from embedlab.images import check_on_bad_image, encoded_size

COLUMNS = ("path", "person")
FILE, INFO = "photos.npz", "photos.json"


class PhotoListError(ValueError):
    """A photo table or list that cannot be used; the message names the file."""


@dataclass
class PhotoList:
    root: Path  # relative paths are read under it
    paths: PathTable
    person: np.ndarray  # int32: row -> index into persons
    persons: np.ndarray  # bytes names, sorted

    def __len__(self) -> int:
        return len(self.paths)

    def photo(self, index: int) -> Path:
        return self.root / self.paths[index]

    def save(self, folder: str | os.PathLike, info: dict) -> None:
        folder = Path(folder)
        data, offsets = self.paths.buffers()
        write_npz_atomic(folder / FILE, path_bytes=data, path_offsets=offsets, person=self.person,
                         persons=self.persons)
        write_json_atomic(folder / INFO, {"root": str(self.root), "photos": len(self),
                                          "persons": len(self.persons), **info})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "PhotoList":
        folder = Path(folder)
        for name in (FILE, INFO):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: not found; write it with `embedlab import pairs`")
        info = json.loads((folder / INFO).read_text())
        try:
            with np.load(folder / FILE) as arrays:
                paths = PathTable.from_buffers(arrays["path_bytes"], arrays["path_offsets"])
                person, persons = arrays["person"], arrays["persons"]
        except (OSError, ValueError, KeyError) as err:
            raise PhotoListError(f"{folder / FILE}: unreadable photo list ({err})") from err
        if len(person) != len(paths) or (len(person) and not 0 <= person.min() <= person.max() < len(persons)):
            raise PhotoListError(f"{folder / FILE}: {len(paths)} paths, {len(person)} person indices "
                                 f"into {len(persons)} persons do not match")
        return cls(Path(info["root"]), paths, person, persons)


def _read_table(table: Path):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    if not table.is_file():
        raise PhotoListError(f"{table}: photo table not found")
    try:
        if table.suffix.lower() in (".parquet", ".pq"):
            read = pyarrow.parquet.read_table(table, columns=[c for c in COLUMNS
                                                               if c in pyarrow.parquet.read_schema(table).names])
        elif table.suffix.lower() == ".csv":
            read = pyarrow.csv.read_csv(table, convert_options=pyarrow.csv.ConvertOptions(
                column_types={c: pa.string() for c in COLUMNS}, strings_can_be_null=True))
        else:
            raise PhotoListError(f"{table}: a photo table is .csv or .parquet, not {table.suffix or 'no suffix'}")
    except (pa.ArrowInvalid, OSError) as err:
        raise PhotoListError(f"{table}: unreadable ({err})") from err
    missing = [c for c in COLUMNS if c not in read.column_names]
    if missing:
        raise PhotoListError(f"{table}: needs columns {', '.join(COLUMNS)}; missing {', '.join(missing)} "
                             f"(found {', '.join(read.column_names) or 'none'})")
    return read


def _strings(table: Path, read, column: str):
    """A column as one large_string array; an empty or missing value is an error naming its row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = read.column(column).cast(pa.large_string()).combine_chunks()
    empty = pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_length(values), 0)).fill_null(True)
    if pc.any(empty).as_py():
        first = int(pc.index(empty, True).as_py())
        raise PhotoListError(f"{table}: row {first + 1} has an empty {column} "
                             f"({pc.sum(empty).as_py()} rows in all)")
    return values


def _path_table(strings) -> PathTable:
    """A PathTable over a pyarrow large_string array's own buffers: its UTF-8 bytes and int64 offsets, no copy."""
    offsets = np.frombuffer(strings.buffers()[1], np.int64)[strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], np.uint8)
    return PathTable.from_buffers(data[offsets[0]:offsets[-1]], offsets - offsets[0])


def person_indices(names: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(int32 index of each row's person, the person names sorted, as bytes) of one name per row."""
    persons, person = np.unique(np.array([name.encode() for name in names], dtype=bytes), return_inverse=True)
    return person.reshape(-1).astype(np.int32), persons


def _encoded_persons(strings) -> tuple[np.ndarray, np.ndarray]:
    """(int32 index of each row's person, the person names sorted): the same indices whatever the row order."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(strings)
    names = np.array(encoded.dictionary.to_pylist(), dtype=bytes) if len(encoded.dictionary) else np.zeros(0, "S1")
    order = np.argsort(names, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[encoded.indices.to_numpy(zero_copy_only=False)].astype(np.int32), names[order]


def read_path_person_table(table: str | os.PathLike) -> tuple[PathTable, np.ndarray, np.ndarray]:
    """(paths, int32 person index per row, sorted person names) of a CSV or Parquet table with columns
    path and person, read column by column; an empty value or a repeated path is an error naming the table."""
    import pyarrow
    import pyarrow.compute as pc

    table = Path(table)
    read = _read_table(table)
    paths = _strings(table, read, "path")
    counts = pc.value_counts(paths)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        raise PhotoListError(f"{table}: {len(repeated)} paths appear more than once, e.g. "
                             f"{repeated[0]['values'].as_py()!r}")
    columns = (_path_table(paths), *_encoded_persons(_strings(table, read, "person")))
    del read, counts, repeated  # the paths' buffers stay: the PathTable is a view of them
    pyarrow.default_memory_pool().release_unused()  # at 1M rows the pool kept 250 MB of the read for reuse
    return columns


def read_photo_table(table: str | os.PathLike, root: str | os.PathLike,
                     on_bad_image: str = "fail") -> tuple[PhotoList, dict]:
    """The photo list of a CSV or Parquet table (columns path, person) under ``root``; and what was left out."""
    table, root = Path(table), Path(root)
    check_on_bad_image(on_bad_image)
    if not root.is_dir():
        raise PhotoListError(f"{root}: photo root folder not found")
    paths, person, persons = read_path_person_table(table)
    rows = len(paths)
    exists = np.fromiter((encoded_size(root / p) >= 0 for p in paths), bool, len(paths))  # files or stored
    left_out = []
    if not exists.all():
        missing = np.flatnonzero(~exists)
        shown = ", ".join(f"row {i + 1}: {paths[int(i)]}" for i in missing[:3])
        if on_bad_image == "fail":
            raise PhotoListError(f"{table}: {len(missing)} photos not found under {root} ({shown}); "
                                 "on_bad_image: skip leaves them out")
        left_out = [str(paths[int(i)]) for i in missing]
        kept = np.flatnonzero(exists)
        paths, person = paths.take(kept), person[kept]
        present = np.unique(person)  # persons left without a photo go too
        person, persons = np.searchsorted(present, person).astype(np.int32), persons[present]
    return PhotoList(root, paths, person, persons), {"source": str(table), "rows": rows, "left_out": len(left_out),
                                                     "left_out_paths": left_out[:100]}


def import_photo_table(table: str | os.PathLike, root: str | os.PathLike, out: str | os.PathLike,
                       on_bad_image: str = "fail") -> dict:
    """``embedlab import pairs``: check the table and write ``<out>/photos.npz`` and ``photos.json``."""
    photos, info = read_photo_table(table, root, on_bad_image)
    photos.save(out, info)
    return {"out": str(out), "photos": len(photos), "persons": len(photos.persons),
            **{k: v for k, v in info.items() if k != "left_out_paths"}}
