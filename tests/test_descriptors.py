"""h5 descriptor files: round trip, seed layout, and every bad file named in its error."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from embedlab.descriptors import DescriptorFileError, read_descriptors, write_descriptors


def _vectors(n=4, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_round_trip_isc_layout(tmp_path):
    path = tmp_path / "q.h5"
    vecs = _vectors()
    write_descriptors(path, ["Q0", "Q1", "Q2", "Q3"], vecs.astype(np.float64))
    names, back = read_descriptors(path)
    assert names == ["Q0", "Q1", "Q2", "Q3"]
    assert back.dtype == np.float32 and back.flags.c_contiguous
    np.testing.assert_array_equal(back, vecs)
    with h5py.File(path) as f:  # the ISC layout exactly
        assert set(f.keys()) == {"vectors", "image_names"}
        assert f["image_names"].dtype.kind == "S"


def test_seed_layout(tmp_path):
    path = tmp_path / "sub.h5"
    with h5py.File(path, "w") as f:
        f["query"] = _vectors(2)
        f["reference"] = _vectors(3, seed=1)
        f["query_ids"] = np.array([b"Q0", b"Q1"])
        f["reference_ids"] = np.array(["R0", "R1", "R2"], dtype=h5py.string_dtype())
    names, vecs = read_descriptors(path, "reference")
    assert names == ["R0", "R1", "R2"] and vecs.shape == (3, 8)
    assert read_descriptors(path, "query")[0] == ["Q0", "Q1"]
    with pytest.raises(DescriptorFileError, match="subset='query' or 'reference'"):
        read_descriptors(path)


def _write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value


BAD_FILES = {
    "missing_vectors": (dict(image_names=np.array([b"a"])), "missing dataset 'vectors'"),
    "no_known_dataset": (dict(foo=np.zeros(3)), "missing datasets"),
    "vectors_1d": (dict(vectors=np.zeros(3, np.float32), image_names=np.array([b"a", b"b", b"c"])), "2-D"),
    "count_mismatch": (dict(vectors=np.zeros((3, 4), np.float32), image_names=np.array([b"a", b"b"])), "2 image names for 3"),
    "duplicates": (dict(vectors=np.zeros((2, 4), np.float32), image_names=np.array([b"a", b"a"])), "more than once"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_naming_the_file(tmp_path, case):
    datasets, problem = BAD_FILES[case]
    path = tmp_path / f"{case}.h5"
    _write_raw(path, **datasets)
    with pytest.raises(DescriptorFileError, match=problem) as err:
        read_descriptors(path)
    assert str(path) in str(err.value)


def test_non_finite_rows_are_counted(tmp_path):
    path = tmp_path / "nan.h5"
    vecs = _vectors(5)
    vecs[1, 0], vecs[3, 2] = np.nan, np.inf
    _write_raw(path, vectors=vecs, image_names=np.array([b"a", b"b", b"c", b"d", b"e"]))
    with pytest.raises(DescriptorFileError, match="2 of 5 vectors contain NaN") as err:
        read_descriptors(path)
    assert str(path) in str(err.value)


def test_missing_and_non_h5_files(tmp_path):
    with pytest.raises(DescriptorFileError, match="file not found") as err:
        read_descriptors(tmp_path / "nope.h5")
    assert "nope.h5" in str(err.value)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(DescriptorFileError, match="not an HDF5 file") as err:
        read_descriptors(text)
    assert str(text) in str(err.value)


def test_write_refuses_bad_data(tmp_path):
    path = tmp_path / "bad.h5"
    with pytest.raises(DescriptorFileError, match="1 image names for 2"):
        write_descriptors(path, ["a"], _vectors(2))
    with pytest.raises(DescriptorFileError, match="not ASCII"):
        write_descriptors(path, ["a", "é"], _vectors(2))
    assert not path.exists()


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ref.h5"
    write_descriptors(path, ["R0", "R1"], _vectors(2))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    # Fail in the middle of writing: after the h5 file was opened.
    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_descriptors(path, ["X0", "X1", "X2"], _vectors(3, seed=5))
    monkeypatch.undo()
    names, vecs = read_descriptors(path)
    assert names == ["R0", "R1"]
    np.testing.assert_array_equal(vecs, _vectors(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ref.h5"]  # no temp file left
