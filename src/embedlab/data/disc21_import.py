"""``embedlab import disc21``: the published DISC21 download, as it unpacks, into the project's DISC layout.

The download's folder and file names differ between its distributions, and
none is the project's ``training/ reference/ query/ ground_truth.csv``
(:mod:`embedlab.data.disc`). The importer finds each part under the names
the distributions use (:data:`PARTS`), checks it, and writes the project's
layout: by default each part as an image store (:mod:`embedlab.data.shards`:
a million images become a hundred shards, which DVC tracks in seconds), or
as hard links (no space) or copies of the files. The download stays as it was.

What is checked:
- ids: T000000, R000000 and Q00000 names, each once (``T000001.jpg`` beside
  ``T000001.png`` is refused);
- every image decodes (:func:`embedlab.images.decode_problem`): JPEGs at
  1/8 scale, which still reads the whole file, so truncation shows. This
  runs on every core. A bad image fails the import naming it, or with
  ``on_bad_image: skip`` is left out and counted, with its ground-truth pairs;
- the ground truth: its header, and its query and reference ids among the
  images. An empty reference id marks a distractor query with no match.

Nothing is written until every check has passed. The layout is built in a
temporary folder beside ``out`` and renamed into place, and an existing,
non-empty ``out`` is refused.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from embedlab.data.disc import GT_COLUMNS, DiscLayout, read_ground_truth
from embedlab.data.shards import StoreError, store_files
from embedlab.data.importing import (DownloadError, decoding_failures, first_found, link_or_copy, refuse_filled,
                                    staged_output)
from embedlab.images import IMAGE_SUFFIXES, check_on_bad_image

# Each part of the layout, the names it has in the distributions (first found wins), its id pattern.
PARTS = {
    "training": (("train", "training", "training_images", "images/train", "images/training"), r"T\d{6}"),
    "reference": (("references", "reference", "reference_images", "images/references", "images/reference"),
                  r"R\d{6}"),
    "query": (("dev_queries", "queries", "query", "query_images", "images/queries", "images/dev_queries"),
              r"Q\d{5}"),
}
FINAL_QUERIES = ("final_queries", "images/final_queries")
GROUND_TRUTH = ("public_ground_truth.csv", "dev_ground_truth.csv", "ground_truth.csv", "gt.csv",
                "list_files/public_ground_truth.csv")
FINAL_GROUND_TRUTH = ("final_ground_truth.csv", "list_files/final_ground_truth.csv")


class Disc21ImportError(DownloadError):
    """The download is incomplete or inconsistent; the message names the file or folder."""


def _first(src: Path, names: tuple[str, ...], what: str, is_dir: bool = True) -> Path:
    return first_found(src, names, what, is_dir, Disc21ImportError)


@dataclass
class Part:
    """A part's folder and its image file names, sorted. Names are kept as ``str``: 2M ``Path`` objects
    cost about 0.5 KB each, and the importer's memory would grow with the download."""

    folder: Path
    names: list[str]

    def paths(self) -> Iterator[str]:
        return (os.path.join(self.folder, name) for name in self.names)

    def stems(self) -> Iterator[str]:
        return (os.path.splitext(name)[0] for name in self.names)

    def without(self, bad: set[str]) -> "Part":
        return Part(self.folder, [n for n, path in zip(self.names, self.paths()) if path not in bad])


def _images(folder: Path, pattern: str) -> Part:
    names = sorted(entry.name for entry in os.scandir(folder) if not entry.name.startswith(".")
                   and entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file())
    if not names:
        raise Disc21ImportError(f"{folder}: no images")
    id_pattern, previous = re.compile(pattern), None
    for name in names:  # sorted by name, so two files of one id are neighbours (ids have a fixed length)
        stem = os.path.splitext(name)[0]
        if not id_pattern.fullmatch(stem):
            raise Disc21ImportError(f"{folder / name}: not a DISC21 id (expected names like {pattern})")
        if previous is not None and os.path.splitext(previous)[0] == stem:
            raise Disc21ImportError(f"{folder}: image id {stem} appears twice ({previous}, {name})")
        previous = name
    return Part(folder, names)


def import_disc21(src: str | Path, out: str | Path, queries: str = "dev", on_bad_image: str = "fail",
                  images: str = "store", workers: int | None = None) -> dict:
    """Check the download at ``src`` and write the project's DISC layout at ``out``; returns a summary.

    ``images``: ``store`` (each part an image store), ``hardlink`` or ``copy`` (loose files).
    """
    src, out = Path(src), Path(out)
    check_on_bad_image(on_bad_image)
    if images not in IMAGE_WRITERS:
        raise ValueError(f"images must be one of {', '.join(IMAGE_WRITERS)}, got {images!r}")
    if not src.is_dir():
        raise Disc21ImportError(f"{src}: not a folder")
    refuse_filled(out, Disc21ImportError)  # before the checks, which take minutes at full size
    folders = {part: _first(src, names, f"{part} images") for part, (names, _) in PARTS.items()}
    gt_names = GROUND_TRUTH
    if queries == "final":
        folders["query"], gt_names = _first(src, FINAL_QUERIES, "final query images"), FINAL_GROUND_TRUTH
    ground_truth = _first(src, gt_names, "ground-truth CSV", is_dir=False)
    found = {part: _images(folder, PARTS[part][1]) for part, folder in folders.items()}

    bad = decoding_failures(itertools.chain.from_iterable(part.paths() for part in found.values()), on_bad_image,
                            Disc21ImportError, workers)
    kept = {name: part.without(set(bad)) if bad else part for name, part in found.items()}
    pairs = read_ground_truth(ground_truth, query_ids=set(found["query"].stems()),
                              reference_ids=set(found["reference"].stems()))
    # A skipped image is not part of the imported set: its pairs go with it (and are counted).
    gone = {os.path.splitext(os.path.basename(path))[0] for path in bad}
    kept_pairs = [(q, r) for q, r in pairs if q not in gone and r not in gone]

    with staged_output(out, Disc21ImportError) as staging:
        layout = DiscLayout(staging)
        for part, target in (("training", layout.training_dir), ("reference", layout.reference_dir),
                             ("query", layout.query_dir)):
            IMAGE_WRITERS[images](kept[part], target)
        rows = [",".join(GT_COLUMNS)] + [f"{q},{r}" for q, r in kept_pairs]
        layout.ground_truth_csv.write_text("\n".join(rows) + "\n")
    return {"out": str(out), **{name: len(part.names) for name, part in kept.items()},
            "ground_truth_pairs": len(kept_pairs), "skipped": len(bad),
            "pairs_of_skipped_images": len(pairs) - len(kept_pairs),
            "sources": {part: str(folder) for part, folder in folders.items()} | {"ground_truth": str(ground_truth)}}


def _write_store(part: Part, target: Path) -> None:
    try:
        store_files(target, part.folder, part.names)
    except StoreError as err:  # images of two suffixes
        raise Disc21ImportError(f"{err} (import with --images hardlink)") from None


def _link_or_copy(part: Part, target: Path, link: bool) -> None:
    target.mkdir()
    for name in part.names:
        link_or_copy(part.folder / name, target / name, link)


IMAGE_WRITERS = {
    "store": _write_store,
    "hardlink": lambda part, target: _link_or_copy(part, target, link=True),
    "copy": lambda part, target: _link_or_copy(part, target, link=False),
}
