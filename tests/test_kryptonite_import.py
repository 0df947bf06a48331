"""`embedlab import kryptonite`: the challenge's archives as unpacked, checked and linked into the face layout."""

from __future__ import annotations

import filecmp
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from embedlab.data.faces import FaceDataError, read_face_meta, read_test_pairs
from embedlab.data.kryptonite_import import KryptoniteImportError, import_kryptonite

from conftest import PROJECT, run


def _download(tiny_faces: Path, root: Path) -> Path:
    """The demo faces as the challenge's README has them unpacked: data/train/ and, one folder deeper (as its
    archive holds it), data/test_public/test_public/; the demo's image store unpacked as tar would."""
    shutil.copytree(tiny_faces / "train", root / "data" / "train", ignore=shutil.ignore_patterns("images"))
    images = tiny_faces / "train" / "images"
    for shard in sorted(images.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            tar.extractall(root / "data" / "train" / "images", filter="data")
    shutil.copytree(tiny_faces / "test_public", root / "data" / "test_public" / "test_public")
    return root


def _same_tree(a: Path, b: Path) -> None:
    compared = filecmp.dircmp(a, b)
    assert not compared.left_only and not compared.right_only and not compared.diff_files, (a, compared.diff_files)
    for sub in compared.common_dirs:
        _same_tree(a / sub, b / sub)


def test_the_download_imports_as_the_demo_builder_writes_it(tmp_path, tiny_faces):
    src = _download(tiny_faces, tmp_path / "download")
    result = run(["embedlab", "import", "kryptonite", str(src), "--out", str(tmp_path / "faces"),
                  "--params", str(PROJECT / "params.yaml")], tmp_path)
    summary = json.loads(result.stdout)
    assert summary["skipped"] == 0 and summary["test_pairs"] == len(read_test_pairs(tiny_faces / "test_public"))
    # The same store the demo builder packs (store: true), byte for byte, and the same meta.json and labels.
    for part in ("train/images", "test_public"):
        _same_tree(tmp_path / "faces" / part, tiny_faces / part)
    assert (tmp_path / "faces" / "train" / "images" / "store.json").is_file()
    assert read_face_meta(tmp_path / "faces" / "train") == read_face_meta(tiny_faces / "train")

    # --images hardlink: the download's files, linked (no second copy).
    run(["embedlab", "import", "kryptonite", str(src), "--out", str(tmp_path / "linked"), "--images", "hardlink",
         "--params", str(PROJECT / "params.yaml")], tmp_path)
    _same_tree(tmp_path / "linked" / "train" / "images", src / "data" / "train" / "images")
    one = next((tmp_path / "linked" / "train" / "images").rglob("*.jpg"))
    assert one.stat().st_ino == (src / "data" / "train" / one.relative_to(tmp_path / "linked" / "train")).stat().st_ino


def test_a_bad_download_is_refused_naming_the_file_and_nothing_is_written(tmp_path, tiny_faces):
    src = _download(tiny_faces, tmp_path / "download")
    out = tmp_path / "faces"
    photo = sorted((src / "data" / "train" / "images").rglob("*.jpg"))[5]
    photo.write_bytes(photo.read_bytes()[:300])
    with pytest.raises(KryptoniteImportError, match=rf"{photo.name}: unreadable image"):
        import_kryptonite(src, out, workers=2)
    assert not out.exists() and not list(tmp_path.glob(".faces.*"))

    summary = import_kryptonite(src, out, on_bad_image="skip", workers=2)
    key = photo.relative_to(src / "data" / "train" / "images").as_posix()
    assert summary["skipped"] == 1 and key not in read_face_meta(out / "train")  # its meta.json entry leaves too

    shutil.rmtree(out)
    (src / "data" / "train" / "images" / "unlisted.jpg").write_bytes(b"")
    with pytest.raises(FaceDataError, match=r"meta\.json does not match the images: 1 image file"):
        import_kryptonite(src, out)
    shutil.rmtree(src / "data" / "test_public")
    (src / "data" / "train" / "images" / "unlisted.jpg").unlink()
    with pytest.raises(KryptoniteImportError, match="no test_public pairs found"):
        import_kryptonite(src, out)
    assert not out.exists()
