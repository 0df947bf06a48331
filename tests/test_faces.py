"""embedlab.data.faces (the face layout and its transform) and embedlab.data.face_demo (the demo face set)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embedlab.data.face_demo import FaceDemoConfig, build_demo_faces
from embedlab.data.faces import (FaceDataError, FaceImages, PairImages, build_face_dataset, read_face_meta,
                                 read_face_pairs, read_face_rows, read_test_pairs, write_face_dataset)

# person -> {file: is_fake}
#   p0: 3 real, 2 fakes; p1: 2 real, 1 fake; p2: 2 real; p3: 1 real, 2 fakes
HAND_MADE = {
    "p0": {"0.jpg": 0, "1.jpg": 0, "2.jpg": 1, "3.jpg": 0, "10.jpg": 1},
    "p1": {"0.jpg": 0, "1.jpg": 1, "2.jpg": 0},
    "p2": {"0.jpg": 0, "1.jpg": 0},
    "p3": {"0.jpg": 1, "1.jpg": 0, "2.jpg": 1},
}
TINY = FaceDemoConfig(seed=5, n_persons=6, images_per_person=2, fakes_per_person=2, fake_share=1.0,
                      n_test_persons=2, n_test_pairs=9, image_size=32, jpeg_quality=85)


def _write_faces(root: Path, persons: dict[str, dict[str, int]]) -> Path:
    """A faces root with tiny JPEGs and a meta.json; returns ``root/train``."""
    train = root / "train"
    for k, (person, files) in enumerate(persons.items()):
        for j, name in enumerate(files):
            (train / "images" / person).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (30 * k, 20 * j, 100)).save(train / "images" / person / name)
    meta = {f"{person}/{name}": v for person, files in persons.items() for name, v in files.items()}
    (train / "meta.json").write_text(json.dumps(meta))
    return train


@pytest.fixture
def hand_made(tmp_path: Path) -> Path:
    return _write_faces(tmp_path / "faces", HAND_MADE)


def _labels(rows) -> dict[str, int]:
    return {r.path.removeprefix("train/images/"): r.label for r in rows}


def test_read_meta_sorts_naturally(hand_made: Path) -> None:
    meta = read_face_meta(hand_made)
    assert list(meta)[:5] == ["p0/0.jpg", "p0/1.jpg", "p0/2.jpg", "p0/3.jpg", "p0/10.jpg"]
    assert sum(meta.values()) == 5 and len(meta) == 13


def test_per_person_labels_and_dropped(hand_made: Path) -> None:
    ds = build_face_dataset(hand_made, "per_person", valid_fraction=0.0, seed=0)
    # classes: p0 real 0, p0 fake 1, p1 real 2, [p1 fake: 1 image, dropped], p2 real 3, [p3 real: dropped], p3 fake 4
    assert _labels(ds.train) == {
        "p0/0.jpg": 0, "p0/1.jpg": 0, "p0/3.jpg": 0, "p0/2.jpg": 1, "p0/10.jpg": 1,
        "p1/0.jpg": 2, "p1/2.jpg": 2, "p2/0.jpg": 3, "p2/1.jpg": 3, "p3/0.jpg": 4, "p3/2.jpg": 4,
    }
    assert {r.path: r.is_fake for r in ds.train}["train/images/p3/0.jpg"] == 1
    assert ds.valid == [] and ds.pairs == []
    info = ds.info
    assert info["n_labels"] == info["n_train_labels"] == 5 and info["fake_classes"] == "per_person"
    assert info["dropped"]["classes"] == {"real": 1, "fake": 1}
    assert {(d["person"], d["kind"]) for d in info["dropped"]["list"]} == {("p1", "fake"), ("p3", "real")}


def test_per_image_labels_and_dropped(hand_made: Path) -> None:
    ds = build_face_dataset(hand_made, "per_image", valid_fraction=0.0, seed=0)
    # every fake is a class of one image: all 5 dropped, and p3's single real image too
    assert _labels(ds.train) == {"p0/0.jpg": 0, "p0/1.jpg": 0, "p0/3.jpg": 0, "p1/0.jpg": 1, "p1/2.jpg": 1,
                                 "p2/0.jpg": 2, "p2/1.jpg": 2}
    assert ds.info["n_labels"] == 3
    assert ds.info["dropped"]["classes"] == {"real": 1, "fake": 5}
    assert ds.info["dropped"]["images"] == {"real": 1, "fake": 5}


def test_person_split_pairs_and_files(hand_made: Path, tmp_path: Path) -> None:
    persons = {f"{k:08d}": {f"{i}.jpg": int(i >= 3) for i in range(5)} for k in range(10)}  # 3 real + 2 fakes each
    train = _write_faces(tmp_path / "big", persons)
    ds = build_face_dataset(train, "per_person", valid_fraction=0.3, seed=7)
    assert ds == build_face_dataset(train, "per_person", valid_fraction=0.3, seed=7)  # deterministic
    assert {r.person for r in ds.valid} != {r.person for r in build_face_dataset(train, "per_person", 0.3, 8).valid}
    train_persons, valid_persons = {r.person for r in ds.train}, {r.person for r in ds.valid}
    assert len(valid_persons) == 3 and len(train_persons) == 7 and not train_persons & valid_persons
    # train labels come first and are contiguous
    assert sorted({r.label for r in ds.train}) == list(range(14))
    assert sorted({r.label for r in ds.valid}) == list(range(14, 20))
    fake_of = {r.path: r.is_fake for r in ds.train + ds.valid}
    person_of = {r.path: r.person for r in ds.train + ds.valid}
    kinds = {k: [p for p in ds.pairs if p.kind == k] for k in ("genuine", "fake_same_person", "other_person")}
    assert len(kinds["genuine"]) == 3 * 3 and len(kinds["fake_same_person"]) == 3 * 6
    assert len(kinds["other_person"]) == len(kinds["genuine"])
    for p in ds.pairs:
        assert person_of[p.path_a] in valid_persons and person_of[p.path_b] in valid_persons
        same_person = person_of[p.path_a] == person_of[p.path_b]
        fakes = fake_of[p.path_a] + fake_of[p.path_b]
        assert (p.same, same_person, fakes) == {"genuine": (1, True, 0), "fake_same_person": (0, True, 1),
                                                "other_person": (0, False, 0)}[p.kind]
    capped = build_face_dataset(train, "per_person", valid_fraction=0.3, seed=7, max_pairs_per_person=2)
    assert capped.info["pairs"] == {"genuine": 6, "fake_same_person": 6, "other_person": 6}

    files = write_face_dataset(ds, tmp_path / "out")
    assert read_face_rows(files["train.csv"]) == ds.train and read_face_rows(files["valid.csv"]) == ds.valid
    assert read_face_pairs(files["valid_pairs.csv"]) == ds.pairs
    assert (tmp_path / "out" / "train.csv").read_text().splitlines()[0] == "path,label,person,is_fake"
    assert (tmp_path / "out" / "valid_pairs.csv").read_text().splitlines()[0] == "path_a,path_b,same,kind"
    info = json.loads(files["labels_info.json"].read_text())
    assert info["n_labels"] == 20 and info["fake_classes"] == "per_person" and "dropped" in info
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left
    for row in ds.train:  # paths relative to the faces root
        assert (ds.root / row.path).is_file()


@pytest.mark.parametrize("case, expect", [
    ("malformed", r"meta\.json: malformed JSON \(line 1"),
    ("not_object", r"meta\.json: expected a non-empty JSON object"),
    ("bad_value", r"meta\.json: values must be 0 \(real\) or 1.*'p0/0\.jpg': 2"),
    ("bool_value", r"meta\.json: values must be 0 \(real\) or 1.*'p0/0\.jpg': True"),
    ("bad_key", r"meta\.json: keys must look like.*'p0/sub/0\.jpg'"),
    ("missing_file", r"meta\.json does not match the images: 1 key\(s\) without a file.*p2/5\.jpg"),
    ("extra_file", r"meta\.json does not match the images: 1 image file\(s\).*without a key: p1/9\.jpg"),
    ("no_real", r"meta\.json: 1 person\(s\) have deepfakes but no real image: p4"),
])
def test_bad_meta_names_the_file(hand_made: Path, case: str, expect: str) -> None:
    meta_path = hand_made / "meta.json"
    meta = json.loads(meta_path.read_text())
    if case == "malformed":
        meta_path.write_text('{"p0/0.jpg": 0,')
    elif case == "not_object":
        meta_path.write_text("[1, 2]")
    elif case == "bad_value":
        meta_path.write_text(json.dumps(meta | {"p0/0.jpg": 2}))
    elif case == "bool_value":
        meta_path.write_text(json.dumps(meta | {"p0/0.jpg": True}))
    elif case == "bad_key":
        meta_path.write_text(json.dumps(meta | {"p0/sub/0.jpg": 0}))
    elif case == "missing_file":
        meta_path.write_text(json.dumps(meta | {"p2/5.jpg": 0}))
    elif case == "extra_file":
        Image.new("RGB", (8, 8)).save(hand_made / "images" / "p1" / "9.jpg")
    elif case == "no_real":
        (hand_made / "images" / "p4").mkdir()
        Image.new("RGB", (8, 8)).save(hand_made / "images" / "p4" / "0.jpg")
        meta_path.write_text(json.dumps(meta | {"p4/0.jpg": 1}))
    with pytest.raises(FaceDataError, match=expect) as info:
        build_face_dataset(hand_made, valid_fraction=0.0)
    assert str(hand_made) in str(info.value)


def test_missing_meta_and_bad_settings(hand_made: Path) -> None:
    (hand_made / "meta.json").rename(hand_made / "other.json")
    with pytest.raises(FileNotFoundError, match=r"train/meta\.json: not found"):
        read_face_meta(hand_made)
    (hand_made / "other.json").rename(hand_made / "meta.json")
    with pytest.raises(ValueError, match=r"fake_classes must be one of .*'per_identity'"):
        build_face_dataset(hand_made, "per_identity")
    with pytest.raises(ValueError, match=r"valid_fraction must be in \[0, 1\), got 1.5"):
        build_face_dataset(hand_made, valid_fraction=1.5)


def _pair_folders(test_dir: Path, n: int) -> None:
    for k in range(n):
        for slot in (0, 1):
            (test_dir / f"{k:08d}").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (k * 40, slot * 90, 10)).save(test_dir / f"{k:08d}" / f"{slot}.jpg")


def test_read_test_pairs(tmp_path: Path) -> None:
    test_dir = tmp_path / "test_public"
    _pair_folders(test_dir, 3)
    pairs = read_test_pairs(test_dir)
    assert [(p, a.name, b.name, s) for p, a, b, s in pairs] == [
        (f"{k:08d}", "0.jpg", "1.jpg", None) for k in range(3)]
    (test_dir / "labels.csv").write_text("pair_id,same\n00000000,1\n00000001,0\n00000002,0\n")
    assert [s for *_, s in read_test_pairs(test_dir)] == [1, 0, 0]

    (test_dir / "labels.csv").write_text("pair_id,same\n00000000,1\n00000001,0\n00000002,0\n00000009,1\n")
    with pytest.raises(FaceDataError, match=r"labels\.csv: 1 pair_id\(s\) have no folder .*00000009"):
        read_test_pairs(test_dir)
    (test_dir / "labels.csv").write_text("pair_id,same\n00000000,1\n00000001,yes\n00000002,0\n")
    with pytest.raises(FaceDataError, match=r"labels\.csv, line 3: same must be 0 or 1, got 'yes'"):
        read_test_pairs(test_dir)
    (test_dir / "labels.csv").unlink()
    (test_dir / "00000001" / "1.jpg").unlink()
    with pytest.raises(FaceDataError, match=r"00000001: pair folder without 1\.jpg"):
        read_test_pairs(test_dir)


def test_face_images_and_pair_images(hand_made: Path) -> None:
    ds = build_face_dataset(hand_made, valid_fraction=0.0)
    images = FaceImages(ds.train, img_size=16, root=ds.root)
    x, label = images[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and label == ds.train[0].label
    assert images.labels.tolist() == [r.label for r in ds.train]
    (ds.root / ds.train[1].path).write_bytes(b"not a jpeg")
    assert FaceImages(ds.train, 16, root=ds.root, on_bad_image="skip")[1] is None

    test_dir = hand_made.parent / "test_public"
    _pair_folders(test_dir, 2)
    pairs = PairImages(read_test_pairs(test_dir), img_size=16)
    assert len(pairs) == 4 and list(pairs.index_a) == [0, 2] and list(pairs.index_b) == [1, 3]
    assert pairs[3][0].shape == (3, 16, 16) and pairs[3][1] == 3
    emb = np.array([[1.0, 0], [1, 0], [0, 1], [1, 0]])
    assert np.allclose(pairs.similarities(emb), [1.0, 0.0])
    shared = PairImages([("a.jpg", "b.jpg"), ("b.jpg", "c.jpg")], 16, root=hand_made)  # each image once
    assert len(shared) == 3 and list(shared.index_b) == [1, 2]


# ---- the demo face set -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo_faces") / "faces"
    return root, build_demo_faces(root, TINY, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic(tiny_faces: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = tiny_faces
    again = build_demo_faces(tmp_path / "faces", TINY, progress=False)
    assert _files(root) == _files(tmp_path / "faces")
    assert {k: v for k, v in again.items() if k != "root"} == {k: v for k, v in summary.items() if k != "root"}
    other = build_demo_faces(tmp_path / "other", FaceDemoConfig(**{**TINY.__dict__, "seed": 6}), progress=False)
    assert other["train_images"] > 0
    assert _files(tmp_path / "other")["train/images/00000000/0.jpg"] != _files(root)["train/images/00000000/0.jpg"]


def test_demo_layout_meta_and_pairs(tiny_faces: tuple[Path, dict]) -> None:
    root, summary = tiny_faces
    meta = read_face_meta(root / "train")  # also checks meta.json against the files
    assert set(meta.values()) == {0, 1}
    persons = sorted({k.split("/")[0] for k in meta})
    assert persons == [f"{k:08d}" for k in range(TINY.n_persons)]
    assert sum(1 for v in meta.values() if v == 0) == TINY.n_persons * TINY.images_per_person
    assert summary["train_fake"] == sum(meta.values()) > 0
    with Image.open(root / "train" / "images" / next(iter(meta))) as im:
        assert im.size == (TINY.image_size, TINY.image_size) and im.format == "JPEG"

    pairs = read_test_pairs(root / "test_public")
    assert len(pairs) == TINY.n_test_pairs
    assert all(len(pid) == 8 and a.is_file() and b.is_file() for pid, a, b, _ in pairs)
    assert {s for *_, s in pairs} == {0, 1}
    with open(root / "demo_pairs.csv", newline="") as f:
        kinds = {r["pair_id"]: r for r in csv.DictReader(f)}
    assert {r["kind"] for r in kinds.values()} == {"genuine", "other_person", "fake_same_person"}
    for pid, _, _, same in pairs:
        assert same == int(kinds[pid]["kind"] == "genuine")
    with open(root / "demo_manifest.csv", newline="") as f:
        manifest = {r["path"]: r for r in csv.DictReader(f)}
    for pid, a, b, same in pairs:  # the fakes are among the impostors, and same-person pairs share the identity
        rows = [manifest[f"test_public/{pid}/{n}"] for n in ("0.jpg", "1.jpg")]
        n_fake = sum(int(r["is_fake"]) for r in rows)
        kind = kinds[pid]["kind"]
        assert n_fake == (kind == "fake_same_person")
        assert (rows[0]["identity"] == rows[1]["identity"]) == (kind != "other_person")
    # test images are never files of train
    train_bytes = {p.read_bytes() for p in (root / "train" / "images").rglob("*.jpg")}
    assert not any(a.read_bytes() in train_bytes or b.read_bytes() in train_bytes for _, a, b, _ in pairs)

    ds = build_face_dataset(root / "train", "per_person", valid_fraction=0.34, seed=0)
    assert ds.info["pairs"]["fake_same_person"] > 0 and ds.info["counts"]["train"]["fake"]["labels"] > 0


def test_demo_rebuild_and_foreign_folder(tiny_faces: tuple[Path, dict], tmp_path: Path) -> None:
    root = tmp_path / "faces"
    build_demo_faces(root, TINY, progress=False)
    smaller = FaceDemoConfig(**{**TINY.__dict__, "n_persons": 3, "n_test_pairs": 3})
    build_demo_faces(root, smaller, progress=False)
    read_face_meta(root / "train")  # stale images of the larger build are gone
    assert len(read_test_pairs(root / "test_public")) == 3
    real = _write_faces(tmp_path / "real", {"a": {"0.jpg": 0, "1.jpg": 0}}).parent
    with pytest.raises(FileExistsError, match=r"not from an embedlab demo build"):
        build_demo_faces(real, TINY, progress=False)
    with pytest.raises(ValueError, match=r"images_per_person must be >= 2"):
        build_demo_faces(tmp_path / "x", FaceDemoConfig(images_per_person=1), progress=False)
