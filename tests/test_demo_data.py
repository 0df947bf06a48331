"""embedlab.data.demo: the embedded demo data set (real packaged photos)."""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from embedlab.config import DemoDataConfig
from embedlab.data.demo import build_demo_data
from embedlab.images import list_images, load_rgb

SMALL = DemoDataConfig(seed=3, n_training=30, n_reference=20, n_matched_queries=10, n_distractor_queries=6,
                       n_imagenet=8, n_frm_faces=4, image_size=64, jpeg_quality=85)


@pytest.fixture(scope="module")
def default_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The default-sized demo (what ``make demo`` builds)."""
    root = tmp_path_factory.mktemp("demo_default")
    return root, build_demo_data(root, DemoDataConfig(), progress=False)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo_small")
    build_demo_data(root, SMALL, progress=False)
    return root


def _ground_truth(root: Path) -> list[tuple[str, str]]:
    with open(root / "disc" / "ground_truth.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query_id", "reference_id"]
    return [(q, r) for q, r in rows[1:]]


def _manifest(root: Path) -> dict[str, dict[str, str]]:
    with open(root / "disc" / "manifest.csv", newline="") as f:
        return {row["image_id"]: row for row in csv.DictReader(f)}


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_layout_and_counts(default_build: tuple[Path, dict]) -> None:
    root, summary = default_build
    cfg = DemoDataConfig()
    disc = root / "disc"
    expect = {disc / "training": (cfg.n_training, r"T\d{6}\.jpg"),
              disc / "reference": (cfg.n_reference, r"R\d{6}\.jpg"),
              disc / "query": (cfg.n_matched_queries + cfg.n_distractor_queries, r"Q\d{5}\.jpg"),
              root / "imagenet": (cfg.n_imagenet, r".+\.jpg")}
    for folder, (count, pattern) in expect.items():
        names = [p.name for p in list_images(folder)]
        assert len(names) == count, folder
        assert all(re.fullmatch(pattern, n) for n in names), folder
    assert not (root / "frm_faces").exists()  # n_frm_faces = 0: no folder
    assert summary["counts"]["training"] == cfg.n_training and summary["counts"]["query"] == 120
    assert (disc / "README.txt").read_text().startswith("embedlab demo data")
    assert not [p for p in root.rglob(".*")]  # no temp files left behind


def test_ground_truth_names_existing_distinct_references(default_build: tuple[Path, dict]) -> None:
    root, _ = default_build
    disc = root / "disc"
    gt = _ground_truth(root)
    queries = {p.stem for p in list_images(disc / "query")}
    references = {p.stem for p in list_images(disc / "reference")}
    assert len(gt) == DemoDataConfig().n_matched_queries
    assert {q for q, _ in gt} <= queries and {r for _, r in gt} <= references
    assert len({r for _, r in gt}) == len(gt)  # each matched query copies a different reference
    ordered = sorted(queries)
    matched = sorted(q for q, _ in gt)
    assert matched != ordered[: len(matched)]  # ids interleave matched queries and distractors


def test_images_are_real_rgb_at_the_configured_size(small_build: Path) -> None:
    for folder in ("disc/training", "disc/reference", "disc/query", "imagenet", "frm_faces"):
        for path in list_images(small_build / folder):
            img = load_rgb(path)
            assert max(img.size) == SMALL.image_size, path
            assert np.asarray(img).std() > 3, path  # not a blank crop


def test_faces_folder(small_build: Path) -> None:
    assert len(list_images(small_build / "frm_faces")) == SMALL.n_frm_faces


def _signatures(paths: list[Path], flips: bool) -> tuple[np.ndarray, list[str]]:
    """High-pass 32x32 thumbnails, unit-normalised: near 1.0 only for (near-)identical pictures."""
    rows, names = [], []
    for p in paths:
        img = load_rgb(p).convert("L").resize((32, 32), Image.Resampling.BILINEAR)
        for im in (img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) if flips else (img,):
            a = np.asarray(im, float) - np.asarray(im.filter(ImageFilter.GaussianBlur(2)), float)
            a = (a - a.mean()).ravel()
            rows.append(a / (np.linalg.norm(a) + 1e-9))
            names.append(p.stem)
    return np.array(rows), names


def test_training_and_reference_are_not_near_duplicates(default_build: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = default_build
    disc = root / "disc"
    train, _ = _signatures(list_images(disc / "training"), flips=True)
    refs_paths = list_images(disc / "reference")
    refs, _ = _signatures(refs_paths, flips=False)
    # The detector works: a re-encoded, flipped copy of a reference scores high.
    copy = tmp_path / "copy.jpg"
    load_rgb(refs_paths[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copy, quality=75)
    assert (_signatures([copy], flips=True)[0] @ refs[0]).max() > 0.9
    assert (train @ refs.T).max() < 0.9
    others = refs @ refs.T - 2 * np.eye(len(refs))
    assert others.max() < 0.9


def test_splits_share_no_pixels(default_build: tuple[Path, dict]) -> None:
    root, _ = default_build
    rows = [r for r in _manifest(root).values() if r["photo"]]
    boxes = {}
    for r in rows:
        split = "distractor" if r["folder"] == "query" else r["folder"]
        boxes.setdefault(split, []).append((r["photo"], *(int(r[k]) for k in ("x0", "y0", "x1", "y1"))))
    assert set(boxes) == {"training", "reference", "imagenet", "distractor"}

    def intersect(a: tuple, b: tuple) -> int:
        if a[0] != b[0]:  # other photo
            return 0
        return max(0, min(a[3], b[3]) - max(a[1], b[1])) * max(0, min(a[4], b[4]) - max(a[2], b[2]))

    splits = sorted(boxes)
    for i, s in enumerate(splits):
        for t in splits[i + 1 :]:
            assert not any(intersect(a, b) for a in boxes[s] for b in boxes[t]), (s, t)
    refs = boxes["reference"]
    for i, a in enumerate(refs):  # no reference shows more than a quarter of another
        for b in refs[i + 1 :]:
            smaller = min((a[3] - a[1]) * (a[4] - a[2]), (b[3] - b[1]) * (b[4] - b[2]))
            assert intersect(a, b) <= 0.25 * smaller


def test_same_seed_gives_identical_bytes(small_build: Path, tmp_path: Path) -> None:
    build_demo_data(tmp_path, SMALL, progress=False)
    assert _all_files(tmp_path) == _all_files(small_build)


def test_other_seed_gives_other_data(small_build: Path, tmp_path: Path) -> None:
    build_demo_data(tmp_path, dataclasses.replace(SMALL, seed=SMALL.seed + 1), progress=False)
    ours, theirs = _all_files(small_build), _all_files(tmp_path)
    assert ours.keys() == theirs.keys()
    same = [k for k in ours if k.endswith(".jpg") and ours[k] == theirs[k]]
    assert not same
    assert _ground_truth(small_build) != _ground_truth(tmp_path)


def test_rebuild_smaller_removes_stale_images(tmp_path: Path) -> None:
    build_demo_data(tmp_path, SMALL, progress=False)
    smaller = dataclasses.replace(SMALL, n_training=12, n_frm_faces=0)
    build_demo_data(tmp_path, smaller, progress=False)
    assert len(list_images(tmp_path / "disc" / "training")) == 12
    assert list_images(tmp_path / "frm_faces", allow_empty=True) == []


def test_refuses_to_mix_with_foreign_images(tmp_path: Path) -> None:
    (tmp_path / "imagenet").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imagenet" / "n01440764_10026.JPEG")
    with pytest.raises(FileExistsError, match="imagenet"):
        build_demo_data(tmp_path, SMALL, progress=False)
    assert (tmp_path / "imagenet" / "n01440764_10026.JPEG").exists()
    assert not (tmp_path / "disc").exists()


def test_invalid_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_matched_queries"):
        build_demo_data(tmp_path, dataclasses.replace(SMALL, n_matched_queries=21), progress=False)
    with pytest.raises(ValueError, match="n_frm_faces"):
        build_demo_data(tmp_path, dataclasses.replace(SMALL, n_frm_faces=101), progress=False)


def test_a_store_build_holds_the_same_images_and_builds_again_to_the_same_bytes(small_build: Path,
                                                                                 tmp_path: Path) -> None:
    from embedlab.images import read_image_bytes

    stored = dataclasses.replace(SMALL, store=True)
    build_demo_data(tmp_path, stored, progress=False)
    for folder in ("disc/training", "disc/reference", "disc/query", "imagenet", "frm_faces"):
        assert (tmp_path / folder / "store.json").is_file(), folder
        names = [p.name for p in list_images(small_build / folder)]
        assert [p.name for p in list_images(tmp_path / folder)] == names
        assert all(read_image_bytes(tmp_path / folder / n) == (small_build / folder / n).read_bytes() for n in names)
    first = _all_files(tmp_path)
    build_demo_data(tmp_path, stored, progress=False)  # over its own stores: what `make data` does every time
    assert _all_files(tmp_path) == first
    build_demo_data(tmp_path, dataclasses.replace(stored, n_training=12), progress=False)
    assert len(list_images(tmp_path / "disc" / "training")) == 12
