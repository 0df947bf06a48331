"""The DISC21 (ISC 2021) dataset layout and its ground-truth CSV.

::

    <root>/training/T000000.jpg ...
    <root>/reference/R000000.jpg ...
    <root>/query/Q00000.jpg ...
    <root>/ground_truth.csv      # query_id,reference_id
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

GT_COLUMNS = ("query_id", "reference_id")


@dataclass
class DiscLayout:
    """Paths of a DISC21 folder; ``validate()`` checks they exist."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def training_dir(self) -> Path:
        return self.root / "training"

    @property
    def reference_dir(self) -> Path:
        return self.root / "reference"

    @property
    def query_dir(self) -> Path:
        return self.root / "query"

    @property
    def ground_truth_csv(self) -> Path:
        return self.root / "ground_truth.csv"

    def validate(self, require_training: bool = True) -> "DiscLayout":
        """Raise FileNotFoundError naming the first missing folder or file."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"DISC root folder not found: {self.root}")
        dirs = [self.reference_dir, self.query_dir]
        if require_training:
            dirs.insert(0, self.training_dir)
        for d in dirs:
            if not d.is_dir():
                raise FileNotFoundError(f"DISC layout: missing folder {d} (expected images like {d.name}/<id>.jpg)")
        if not self.ground_truth_csv.is_file():
            raise FileNotFoundError(
                f"DISC layout: missing file {self.ground_truth_csv} (CSV with header query_id,reference_id)"
            )
        return self


class GroundTruthError(ValueError):
    """The ground-truth CSV is missing, malformed or names unknown images."""


def _check_known(
    path: Path, pairs: list[tuple[str, str]], column: int, known: Iterable[str] | None, what: str
) -> None:
    if known is None:
        return
    known_set = known if isinstance(known, (set, frozenset)) else set(known)
    unknown = sorted({p[column] for p in pairs if p[column]} - known_set)
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise GroundTruthError(f"{path}: {len(unknown)} {what} ids are not among the {what} images: {shown}")


def read_ground_truth(
    csv_path: str | os.PathLike,
    query_ids: Iterable[str] | None = None,
    reference_ids: Iterable[str] | None = None,
) -> list[tuple[str, str]]:
    """Read ``query_id,reference_id`` pairs, de-duplicated, in file order.

    A row with an empty ``reference_id`` means "this query has no match" (the
    convention of the published ISC ground-truth files) and yields no pair; an
    empty ``query_id`` is an error. When ``query_ids`` / ``reference_ids`` are
    given, every id in the file must be among them.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise GroundTruthError(f"{path}: ground-truth file not found")
    # utf-8-sig: tolerate a BOM from spreadsheet exports.
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [(i, [c.strip() for c in row]) for i, row in enumerate(rows, start=1) if any(c.strip() for c in row)]
    if not rows:
        raise GroundTruthError(f"{path}: empty file, expected header {','.join(GT_COLUMNS)}")
    header = tuple(rows[0][1])
    if header != GT_COLUMNS:
        raise GroundTruthError(f"{path}: expected columns {','.join(GT_COLUMNS)}, found {','.join(header)}")

    pairs: list[tuple[str, str]] = []
    for line, row in rows[1:]:
        if len(row) != 2:
            raise GroundTruthError(f"{path}, line {line}: expected 2 fields, found {len(row)}: {','.join(row)}")
        q, r = row
        if not q:
            raise GroundTruthError(f"{path}, line {line}: empty query_id")
        pairs.append((q, r))

    _check_known(path, pairs, 0, query_ids, "query")
    _check_known(path, pairs, 1, reference_ids, "reference")
    return list(dict.fromkeys(p for p in pairs if p[1]))
