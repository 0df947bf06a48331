"""`embedlab import pairs`: the decoder's photo table (CSV or Parquet, path + person) checked into a compact list."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlab.data.faces import read_face_meta
from embedlab.data.photo_list import PhotoList, PhotoListError, import_photo_table
from embedlab.images import encoded_size

from conftest import PROJECT, run


def _rows(tiny_faces: Path) -> list[tuple[str, str]]:
    """The real photos of the demo faces, paths relative to the face root, as a photo table lists them."""
    meta = read_face_meta(tiny_faces / "train")
    return [(f"train/images/{key}", key.split("/")[0]) for key, fake in meta.items() if not fake]


def _csv(path: Path, rows, header: str = "path,person") -> Path:
    path.write_text("\n".join([header, *(f"{p},{q}" for p, q in rows)]) + "\n")
    return path


def test_a_csv_or_parquet_table_becomes_a_photo_list_with_persons_by_name(tmp_path, tiny_faces):
    rows = _rows(tiny_faces)[::-1]  # any row order: the list keeps it, person indices follow sorted names
    table = _csv(tmp_path / "photos.csv", rows)
    result = run(["embedlab", "import", "pairs", str(table), "--root", str(tiny_faces), "--out",
                  str(tmp_path / "list"), "--params", str(PROJECT / "params.yaml")], tmp_path)
    assert json.loads(result.stdout)["photos"] == len(rows)
    photos = PhotoList.load(tmp_path / "list")
    assert [str(p) for p in photos.paths] == [p for p, _ in rows]
    assert [photos.persons[i].decode() for i in photos.person] == [q for _, q in rows]
    assert list(photos.persons) == sorted(photos.persons)
    assert photos.photo(0) == tiny_faces / rows[0][0] and encoded_size(photos.photo(0)) > 0  # a photo of the store

    pq.write_table(pa.table({"person": [q for _, q in rows], "path": [p for p, _ in rows], "extra": [1] * len(rows)}),
                   tmp_path / "photos.parquet")
    import_photo_table(tmp_path / "photos.parquet", tiny_faces, tmp_path / "from_parquet")
    # The same rows either way: the same bytes.
    assert (tmp_path / "from_parquet" / "photos.npz").read_bytes() == (tmp_path / "list" / "photos.npz").read_bytes()


def test_missing_photos_are_named_or_left_out_and_bad_tables_are_refused(tmp_path, tiny_faces):
    rows = _rows(tiny_faces)
    gone = ("train/images/nobody/0.jpg", "nobody")
    table = _csv(tmp_path / "photos.csv", rows[:4] + [gone] + rows[4:])
    with pytest.raises(PhotoListError, match=r"photos\.csv: 1 photos not found .*row 5: train/images/nobody/0\.jpg"):
        import_photo_table(table, tiny_faces, tmp_path / "list")
    assert not (tmp_path / "list").exists()
    summary = import_photo_table(table, tiny_faces, tmp_path / "list", on_bad_image="skip")
    assert summary["left_out"] == 1 and summary["photos"] == len(rows)
    assert b"nobody" not in PhotoList.load(tmp_path / "list").persons

    with pytest.raises(PhotoListError, match=r"appear more than once, e\.g\. 'train/images/"):
        import_photo_table(_csv(tmp_path / "twice.csv", rows + rows[:1]), tiny_faces, tmp_path / "x")
    with pytest.raises(PhotoListError, match=r"needs columns path, person; missing person \(found path, who\)"):
        import_photo_table(_csv(tmp_path / "cols.csv", rows, "path,who"), tiny_faces, tmp_path / "x")
    with pytest.raises(PhotoListError, match=r"empty\.csv: row 3 has an empty person"):
        import_photo_table(_csv(tmp_path / "empty.csv", rows[:2] + [(rows[2][0], "")]), tiny_faces, tmp_path / "x")
    (tmp_path / "photos.txt").write_text("path,person\n")
    with pytest.raises(PhotoListError, match=r"photos\.txt: a photo table is \.csv or \.parquet"):
        import_photo_table(tmp_path / "photos.txt", tiny_faces, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (tmp_path / "list" / "photos.npz").write_bytes(b"not a zip")
    with pytest.raises(PhotoListError, match=r"photos\.npz: unreadable photo list"):
        PhotoList.load(tmp_path / "list")
