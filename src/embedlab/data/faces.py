"""The face data set (Kryptonite ML Challenge layout) and its transform into training classes.

::

    <faces>/train/meta.json                {"<person>/<i>.jpg": 0 real | 1 deepfake}
    <faces>/train/images/<person>/<i>.jpg
    <faces>/test_public/<pair_id>/0.jpg, 1.jpg
    <faces>/test_public/labels.csv         pair_id,same (optional)

The transform (the original's ``transform_train_df.py``):

- deepfakes become classes of their own: ``fake_classes="per_person"`` gives
  every person one fake class (the original code: label 2·person + is_fake),
  ``"per_image"`` makes every deepfake its own class (the original README);
- classes with fewer than 2 images are dropped and reported (with one fake
  per class, ``per_image`` drops every fake class);
- persons are split into train and valid (deterministic by ``seed``); labels
  are re-indexed 0..n-1, the train classes first (0..n_train_labels-1), then
  the valid classes;
- validation pairs come from every image of the valid persons (dropped
  classes included): ``genuine`` (two real images of a person),
  ``fake_same_person`` (a real image and a deepfake of the same person, the
  point of the challenge) and ``other_person`` (real images of two persons,
  sampled, about as many as genuine pairs).

Paths in the written CSVs are relative to the faces root (``train/images/...``),
so a data folder can move.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from embedlab.atomic import write_csv_atomic, write_json_atomic
from embedlab.data.labelled import LabelledImages
from embedlab.data.path_table import PathTable
from embedlab.data.transforms import to_uint8
from embedlab.images import check_on_bad_image, list_images, load_or_skip

log = logging.getLogger(__name__)

FAKE_CLASSES = ("per_person", "per_image")
PAIR_KINDS = ("genuine", "fake_same_person", "other_person")
ROW_COLUMNS = ("path", "label", "person", "is_fake")
PAIR_COLUMNS = ("path_a", "path_b", "same", "kind")
_SHOW = 5  # how many offending names an error lists


class FaceDataError(ValueError):
    """Face data that does not follow the layout; the message names the file and what is wrong."""


@dataclass(frozen=True)
class FaceRow:
    """One labelled image; ``path`` relative to the faces root."""

    path: str
    label: int
    person: str
    is_fake: int


@dataclass(frozen=True)
class FacePair:
    """One validation pair; ``same`` is 1 for genuine pairs only."""

    path_a: str
    path_b: str
    same: int
    kind: str


@dataclass
class FaceDataset:
    """The transformed training set: rows of train and valid persons, validation pairs, a summary."""

    root: Path  # the faces root; every path is relative to it
    train: list[FaceRow]
    valid: list[FaceRow]
    pairs: list[FacePair]
    info: dict = field(default_factory=dict)


def natural_key(name: str) -> list:
    """Sort key putting 2.jpg before 10.jpg."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _few(items: Sequence, n: int = _SHOW) -> str:
    shown = ", ".join(str(x) for x in list(items)[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def read_face_meta(train_dir: str | os.PathLike) -> dict[str, int]:
    """``train/meta.json`` checked against ``train/images``: {"<person>/<file>": 0 real | 1 fake}, sorted.

    Raises :class:`FaceDataError` (naming meta.json) for malformed JSON, keys
    that are not ``<person>/<file>``, values other than 0/1, keys without a
    file, image files without a key, and persons without a real image.
    """
    train_dir = Path(train_dir)
    meta_path, images_dir = train_dir / "meta.json", train_dir / "images"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; the face layout needs train/meta.json "
                                '({"<person>/<i>.jpg": 0 real | 1 deepfake}) beside train/images/')
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: folder not found; the face layout keeps the images of "
                                f"{meta_path} in train/images/<person>/<i>.jpg")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FaceDataError(f"{meta_path}: malformed JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise FaceDataError(f"{meta_path}: not UTF-8 text ({exc})") from None
    if not isinstance(meta, dict) or not meta:
        raise FaceDataError(f"{meta_path}: expected a non-empty JSON object "
                            f'{{"<person>/<i>.jpg": 0 | 1}}, got {type(meta).__name__} {str(meta)[:60]}')
    bad_keys = [k for k in meta if not re.fullmatch(r"[^/\\.][^/\\]*/[^/\\.][^/\\]*", k)]
    if bad_keys:
        raise FaceDataError(f"{meta_path}: keys must look like '<person>/<file>.jpg' (one folder, no hidden "
                            f"names); bad keys: {_few([repr(k) for k in bad_keys])}")
    bad_values = [f"{k!r}: {v!r}" for k, v in meta.items() if type(v) is not int or v not in (0, 1)]
    if bad_values:
        raise FaceDataError(f"{meta_path}: values must be 0 (real) or 1 (deepfake); got {_few(bad_values)}")
    files = {p.relative_to(images_dir).as_posix() for p in list_images(images_dir, recursive=True, allow_empty=True)}
    missing = sorted(set(meta) - files, key=natural_key)
    extra = sorted(files - set(meta), key=natural_key)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) without a file in {images_dir}: {_few(missing)}")
        if extra:
            parts.append(f"{len(extra)} image file(s) in {images_dir} without a key: {_few(extra)}")
        raise FaceDataError(f"{meta_path} does not match the images: " + "; ".join(parts))
    real = {k.split("/")[0] for k, v in meta.items() if v == 0}
    no_real = sorted({k.split("/")[0] for k in meta} - real, key=natural_key)
    if no_real:
        raise FaceDataError(f"{meta_path}: {len(no_real)} person(s) have deepfakes but no real image: "
                            f"{_few(no_real)}")
    return {k: meta[k] for k in sorted(meta, key=lambda k: [natural_key(p) for p in k.split("/")])}


def split_persons(persons: list[str], valid_fraction: float, seed: int) -> set[str]:
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    n_valid = round(valid_fraction * len(persons))
    if valid_fraction > 0:
        n_valid = max(1, n_valid)
    if n_valid >= len(persons):
        raise ValueError(f"valid_fraction {valid_fraction} leaves no train person ({len(persons)} persons)")
    order = np.random.default_rng([seed, 0]).permutation(len(persons))
    return {persons[i] for i in order[:n_valid]}


def _valid_pairs(images: dict[str, list[tuple[str, int]]], persons: list[str], rng: np.random.Generator,
                 max_per_person: int) -> list[FacePair]:
    """Pairs of the valid persons (``images``: person -> [(path, is_fake)])."""

    def capped(candidates: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if len(candidates) <= max_per_person:
            return candidates
        return [candidates[i] for i in sorted(rng.choice(len(candidates), max_per_person, replace=False))]

    genuine, fakes = [], []
    for person in persons:
        real = [p for p, f in images[person] if not f]
        fake = [p for p, f in images[person] if f]
        genuine += capped(list(itertools.combinations(real, 2)))
        fakes += capped([(r, f) for r in real for f in fake])
    # other_person: about as many as genuine pairs, distinct, from random pairs of persons
    others: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    real_of = {p: [q for q, f in images[p] if not f] for p in persons}
    n_possible = sum(len(real_of[a]) * len(real_of[b]) for a, b in itertools.combinations(persons, 2))
    target = min(max(len(genuine), len(persons)), n_possible)
    while len(others) < target:
        a, b = rng.choice(len(persons), size=2, replace=False)
        pa, pb = real_of[persons[a]], real_of[persons[b]]
        pair = (pa[int(rng.integers(len(pa)))], pb[int(rng.integers(len(pb)))])
        if pair not in seen and pair[::-1] not in seen:
            seen.add(pair)
            others.append(pair)
    return ([FacePair(a, b, 1, "genuine") for a, b in genuine]
            + [FacePair(a, b, 0, "fake_same_person") for a, b in fakes]
            + [FacePair(a, b, 0, "other_person") for a, b in others])


def build_face_dataset(train_dir: str | os.PathLike, fake_classes: str = "per_person", valid_fraction: float = 0.1,
                       seed: int = 0, max_pairs_per_person: int = 10) -> FaceDataset:
    """Classes, person split and validation pairs of ``train_dir`` (``<faces>/train``); see the module doc.

    ``max_pairs_per_person`` caps the genuine and the fake_same_person pairs of
    each valid person (a random subset when there are more combinations).
    """
    if fake_classes not in FAKE_CLASSES:
        raise ValueError(f"fake_classes must be one of {FAKE_CLASSES}, got {fake_classes!r}")
    if max_pairs_per_person < 1:
        raise ValueError(f"max_pairs_per_person must be >= 1, got {max_pairs_per_person}")
    train_dir = Path(train_dir)
    meta = read_face_meta(train_dir)
    prefix = Path(train_dir.name, "images").as_posix()
    images: dict[str, list[tuple[str, int]]] = {}
    for key, is_fake in meta.items():
        person = key.split("/")[0]
        images.setdefault(person, []).append((f"{prefix}/{key}", is_fake))
    persons = sorted(images, key=natural_key)
    valid_persons = split_persons(persons, valid_fraction, seed)

    # classes in (person, real first, then fakes) order, like the original's 2·person + is_fake
    classes: list[tuple[str, str, list[str]]] = []  # (person, "real" | "fake", paths)
    for person in persons:
        classes.append((person, "real", [p for p, f in images[person] if not f]))
        fakes = [p for p, f in images[person] if f]
        if fake_classes == "per_person" and fakes:
            classes.append((person, "fake", fakes))
        elif fake_classes == "per_image":
            classes += [(person, "fake", [p]) for p in fakes]
    kept = [c for c in classes if len(c[2]) >= 2]
    dropped = [c for c in classes if len(c[2]) < 2]

    # train classes first, so that a training head needs only labels 0..n_train_labels-1
    order = sorted(range(len(kept)), key=lambda c: (kept[c][0] in valid_persons, c))
    rows: dict[bool, list[FaceRow]] = {False: [], True: []}
    for label, c in enumerate(order):
        person, kind, paths = kept[c]
        rows[person in valid_persons] += [FaceRow(p, label, person, int(kind == "fake")) for p in paths]
    for split_rows in rows.values():
        split_rows.sort(key=lambda r: (r.label, natural_key(r.path)))

    valid_list = [p for p in persons if p in valid_persons]
    pairs = _valid_pairs(images, valid_list, np.random.default_rng([seed, 1]), max_pairs_per_person)

    def count(split: list[FaceRow], fake: int) -> dict:
        return {"images": sum(1 for r in split if r.is_fake == fake),
                "labels": len({r.label for r in split if r.is_fake == fake})}

    n_train_labels = sum(1 for person, _, _ in kept if person not in valid_persons)
    info = {
        "fake_classes": fake_classes, "valid_fraction": valid_fraction, "seed": seed,
        "max_pairs_per_person": max_pairs_per_person,
        "n_labels": len(kept), "n_train_labels": n_train_labels, "n_valid_labels": len(kept) - n_train_labels,
        "label_order": "train labels 0..n_train_labels-1, then the valid labels",
        "persons": {"train": len(persons) - len(valid_persons), "valid": len(valid_persons)},
        "counts": {split: {"real": count(rows[v], 0), "fake": count(rows[v], 1)}
                   for split, v in (("train", False), ("valid", True))},
        "pairs": {kind: sum(1 for p in pairs if p.kind == kind) for kind in PAIR_KINDS},
        "dropped": {
            "classes": {kind: sum(1 for c in dropped if c[1] == kind) for kind in ("real", "fake")},
            "images": {kind: sum(len(c[2]) for c in dropped if c[1] == kind) for kind in ("real", "fake")},
            "reason": "fewer than 2 images",
            "list": [{"person": person, "kind": kind, "paths": paths} for person, kind, paths in dropped],
        },
    }
    if dropped:
        log.info("face classes: dropped %d real and %d fake class(es) with fewer than 2 images",
                 info["dropped"]["classes"]["real"], info["dropped"]["classes"]["fake"])
    if fake_classes == "per_image" and any(meta.values()) and not any(r.is_fake for r in rows[False] + rows[True]):
        log.warning("fake_classes=per_image: every deepfake is a class of one image, so all fake classes were "
                    "dropped; deepfakes only appear in the validation pairs (use per_person to train on them)")
    return FaceDataset(train_dir.parent, rows[False], rows[True], pairs, info)


def write_face_dataset(ds: FaceDataset, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write train.csv, valid.csv, valid_pairs.csv and labels_info.json (atomically); return their paths."""
    out = Path(out_dir)
    paths = {name: out / name for name in ("train.csv", "valid.csv", "valid_pairs.csv", "labels_info.json")}
    for name, split in (("train.csv", ds.train), ("valid.csv", ds.valid)):
        write_csv_atomic(paths[name], ROW_COLUMNS, [(r.path, r.label, r.person, r.is_fake) for r in split])
    write_csv_atomic(paths["valid_pairs.csv"], PAIR_COLUMNS, [(p.path_a, p.path_b, p.same, p.kind) for p in ds.pairs])
    write_json_atomic(paths["labels_info.json"], ds.info)
    return paths


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (written by write_face_dataset / the face-data stage)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or list(reader.fieldnames[: len(columns)]) != list(columns):
            raise FaceDataError(f"{path}: expected the header {','.join(columns)}, got {reader.fieldnames}")
        return list(reader)


def read_face_rows(csv_path: str | os.PathLike) -> list[FaceRow]:
    """Rows of a train.csv / valid.csv written by :func:`write_face_dataset`."""
    path = Path(csv_path)
    try:
        return [FaceRow(r["path"], int(r["label"]), r["person"], int(r["is_fake"]))
                for r in _read_csv(path, ROW_COLUMNS)]
    except (TypeError, ValueError) as exc:
        if isinstance(exc, FaceDataError):
            raise
        raise FaceDataError(f"{path}: label and is_fake must be integers ({exc})") from None


def read_face_pairs(csv_path: str | os.PathLike) -> list[FacePair]:
    """Pairs of a valid_pairs.csv written by :func:`write_face_dataset`."""
    path = Path(csv_path)
    try:
        return [FacePair(r["path_a"], r["path_b"], int(r["same"]), r["kind"]) for r in _read_csv(path, PAIR_COLUMNS)]
    except (TypeError, ValueError) as exc:
        if isinstance(exc, FaceDataError):
            raise
        raise FaceDataError(f"{path}: same must be 0 or 1 ({exc})") from None


def read_test_pairs(test_dir: str | os.PathLike) -> list[tuple[str, Path, Path, int | None]]:
    """(pair_id, path of 0.jpg, path of 1.jpg, same or None) for every pair folder of ``test_public``.

    ``labels.csv`` (``pair_id,same``) is optional: without it ``same`` is None.
    With it, every folder needs a label and every label a folder.
    """
    test_dir = Path(test_dir)
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir}: test folder not found (expected <pair_id>/0.jpg, 1.jpg)")
    folders = sorted((p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    if not folders:
        raise FaceDataError(f"{test_dir}: no pair folders (expected <pair_id>/0.jpg, 1.jpg)")
    for folder in folders:
        lacking = [n for n in ("0.jpg", "1.jpg") if not (folder / n).is_file()]
        if lacking:
            raise FaceDataError(f"{folder}: pair folder without {' and '.join(lacking)} "
                                f"(every pair folder holds 0.jpg and 1.jpg)")
    labels: dict[str, int] | None = None
    labels_csv = test_dir / "labels.csv"
    if labels_csv.is_file():
        labels = {}
        for line, row in enumerate(_read_csv(labels_csv, ("pair_id", "same")), start=2):
            pid, same = (row["pair_id"] or "").strip(), (row["same"] or "").strip()
            if same not in ("0", "1"):
                raise FaceDataError(f"{labels_csv}, line {line}: same must be 0 or 1, got {same!r}")
            if pid in labels:
                raise FaceDataError(f"{labels_csv}, line {line}: pair_id {pid!r} appears twice")
            labels[pid] = int(same)
        names = {f.name for f in folders}
        orphans = sorted(set(labels) - names, key=natural_key)
        if orphans:
            raise FaceDataError(f"{labels_csv}: {len(orphans)} pair_id(s) have no folder in {test_dir}: "
                                f"{_few(orphans)}")
        unlabelled = sorted(names - set(labels), key=natural_key)
        if unlabelled:
            raise FaceDataError(f"{labels_csv}: {len(unlabelled)} pair folder(s) have no label: {_few(unlabelled)}")
    return [(f.name, f / "0.jpg", f / "1.jpg", None if labels is None else labels[f.name]) for f in folders]


# (tensor, label) for train.csv rows: FaceRow has the .path and .label it reads.
FaceImages = LabelledImages


class PairImages(Dataset):
    """The distinct images of a list of pairs, each once: (tensor, image index).

    Embed the dataset, then compare ``embeddings[index_a]`` with
    ``embeddings[index_b]`` (:meth:`similarities`). ``pairs``: (path_a, path_b)
    tuples, :class:`FacePair` rows or :func:`read_test_pairs` tuples.
    """

    def __init__(self, pairs: Sequence, img_size: int, root: str | Path | None = None, on_bad_image: str = "fail",
                 bad_log: Path | None = None) -> None:
        base = Path(root) if root is not None else None
        index: dict[Path, int] = {}
        ia, ib = [], []
        for pair in pairs:
            ends = (pair.path_a, pair.path_b) if isinstance(pair, FacePair) else (
                (pair[1], pair[2]) if len(pair) == 4 else (pair[0], pair[1]))
            for path, out in zip(ends, (ia, ib)):
                path = base / path if base is not None else Path(path)
                out.append(index.setdefault(path, len(index)))
        self.paths = PathTable(index)
        self.index_a, self.index_b = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
        self.img_size = img_size
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.bad_log = bad_log

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = load_or_skip(self.paths[index], self.on_bad_image, self.bad_log, at_least=self.img_size)
        return None if img is None else (to_uint8(img, self.img_size), index)

    def similarities(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity of every pair from the embeddings of :attr:`paths` (a NaN row gives NaN)."""
        e = np.asarray(embeddings, dtype=np.float64)
        if e.shape[0] != len(self.paths):
            raise ValueError(f"PairImages: {e.shape[0]} embeddings for {len(self.paths)} images")
        e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
        return np.einsum("ij,ij->i", e[self.index_a], e[self.index_b])
