"""The sharded image store: random access by index, resumable writing, and clear errors on damaged shards."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from embedlab.data.shards import ImageStore, StoreError, write_store

from conftest import run


def _photos(tiny_demo: Path) -> list[Path]:
    return sorted((tiny_demo / "disc" / "reference").glob("*.jpg")) + sorted((tiny_demo / "disc" / "query").glob("*.jpg"))


def _items(paths):
    return ((p.stem, p.read_bytes()) for p in paths)


class _Lengths:
    def __init__(self, store: ImageStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, len(self.store[i])


def test_images_come_back_byte_for_byte_by_index_in_any_order_and_through_workers(tmp_path, tiny_demo):
    photos = _photos(tiny_demo)
    manifest = write_store(tmp_path / "store", _items(photos), shard_size=16)
    assert manifest["count"] == len(photos) and len(manifest["shards"]) == -(-len(photos) // 16)
    store = ImageStore(tmp_path / "store")
    for i in np.random.default_rng(0).permutation(len(photos)):
        assert store.key(i) == photos[i].stem and store[i] == photos[i].read_bytes()
    # Forked DataLoader workers open their own shard files.
    sizes = {int(i): int(n) for batch in DataLoader(_Lengths(store), batch_size=7, num_workers=2)
             for i, n in zip(*batch)}
    assert sizes == {i: p.stat().st_size for i, p in enumerate(photos)}
    # A shard is a plain tar: standard tools list it.
    listed = subprocess.run(["tar", "tf", str(tmp_path / "store" / manifest["shards"][1])], capture_output=True,
                            text=True, check=True).stdout.split()
    assert listed == [p.stem + ".jpg" for p in photos[16:32]]


_KILLED_WRITER = r"""
import os, signal, sys
from pathlib import Path
from embedlab.data.shards import write_store
paths = [Path(p) for p in sys.argv[2:]]
def items():
    for n, p in enumerate(paths):
        if n == 40:  # in the middle of the third shard
            os.kill(os.getpid(), signal.SIGKILL)
        yield p.stem, p.read_bytes()
write_store(sys.argv[1], items(), shard_size=16)
"""


def test_a_killed_writer_run_again_completes_without_a_partial_shard_and_the_same_bytes(tmp_path, tiny_demo):
    photos = _photos(tiny_demo)[:60]
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "killed"), *map(str, photos)])
    assert killed.returncode == -9
    left = sorted(p.name for p in (tmp_path / "killed").iterdir())
    assert "store.json" not in left and "shard-000001.tar" in left and "shard-000002.tar" not in left

    write_store(tmp_path / "killed", _items(photos), shard_size=16)
    write_store(tmp_path / "whole", _items(photos), shard_size=16)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == sorted(
        p.name for p in (tmp_path / "whole").iterdir())  # the partial shard's temporary file is gone
    for shard in sorted((tmp_path / "whole").glob("shard-*.tar")):
        assert (tmp_path / "killed" / shard.name).read_bytes() == shard.read_bytes()
    store = ImageStore(tmp_path / "killed")
    assert [store[i] for i in range(len(store))] == [p.read_bytes() for p in photos]


def test_damaged_stores_are_refused_naming_the_file(tmp_path, tiny_demo):
    photos = _photos(tiny_demo)[:40]
    write_store(tmp_path / "s", _items(photos), shard_size=16)
    with pytest.raises(StoreError, match=r"store\.json: not found"):
        ImageStore(tmp_path)
    shard = tmp_path / "s" / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])  # truncated: the last images end past the end of the file
    store = ImageStore(tmp_path / "s")
    with pytest.raises(StoreError, match=r"shard-000001\.tar: truncated, image 31"):
        store[31]
    # Shards swapped: the index no longer matches what the shard holds.
    shard.write_bytes((tmp_path / "s" / "shard-000000.tar").read_bytes())
    with pytest.raises(StoreError, match=r"shard-000001\.tar: the index says image 16 is .* the shard holds"):
        ImageStore(tmp_path / "s")[16]
    with pytest.raises(StoreError, match="appears twice"):
        write_store(tmp_path / "dup", [("a", b"1"), ("a", b"2")])
    for bad in ("a/../b", "../b", "a//b", "Zoë", "a/b/c/d"):  # keys tar xf would not unpack as given
        with pytest.raises(StoreError, match="short ASCII name"):
            write_store(tmp_path / "bad", [(bad, b"1")])


def test_a_store_folder_lists_and_loads_like_the_folder_it_was_written_from(tmp_path, tiny_demo):
    from embedlab.images import BadImageError, list_images, load_rgb

    source = tiny_demo / "disc" / "reference"
    photos = list_images(source)
    # Written in reverse order: lookups by name do not rely on the writer's order.
    write_store(tmp_path / "reference", _items(photos[::-1]), shard_size=16)
    listed = list_images(tmp_path / "reference")
    assert [p.name for p in listed] == [p.name for p in photos]
    assert all(p.parent == tmp_path / "reference" for p in listed)
    for stored, original in zip(listed[::7], photos[::7]):
        assert np.array_equal(np.asarray(load_rgb(stored)), np.asarray(load_rgb(original)))
    with pytest.raises(BadImageError, match=r"R999999\.jpg: no image 'R999999\.jpg' in the store"):
        load_rgb(tmp_path / "reference" / "R999999.jpg")
    # A store written again in the same process is read again, not served from the open copy.
    write_store(tmp_path / "again", _items(photos[:3]))
    assert len(list_images(tmp_path / "again")) == 3
    (tmp_path / "again" / "store.json").unlink()
    write_store(tmp_path / "again", _items(photos[:3] + photos[5:6]))
    assert [p.name for p in list_images(tmp_path / "again")] == [p.name for p in photos[:3] + photos[5:6]]


def test_pack_turns_a_folder_into_a_store_in_place_and_a_killed_swap_finishes(tmp_path, tiny_demo):
    from embedlab.data.shards import pack_folder
    from embedlab.images import list_images, read_image_bytes

    folder = tmp_path / "imagenet"
    shutil.copytree(tiny_demo / "imagenet", folder)
    originals = {p.name: p.read_bytes() for p in list_images(folder)}
    run(["embedlab", "pack", str(folder)], tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["index.npz", "shard-000000.keys.npy", "shard-000000.tar",
                                                         "store.json"]
    assert {p.name: read_image_bytes(p) for p in list_images(folder)} == originals
    assert pack_folder(folder)["count"] == len(originals)  # packing a store again changes nothing

    # Killed between the two renames: the loose files wait beside the finished store; a rerun swaps.
    other = tmp_path / "other"
    shutil.copytree(tiny_demo / "imagenet", other)
    pack_folder(other)
    other.rename(tmp_path / ".other.packing")
    shutil.copytree(tiny_demo / "imagenet", tmp_path / ".other.loose")
    pack_folder(other)
    assert {p.name: read_image_bytes(p) for p in list_images(other)} == originals
    assert not (tmp_path / ".other.loose").exists() and not (tmp_path / ".other.packing").exists()

    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "notes.txt").write_text("not an image")
    with pytest.raises(StoreError, match=r"mixed: holds 1 files that are not images \(notes\.txt\)"):
        pack_folder(tmp_path / "mixed")


def test_a_folder_of_person_folders_packs_into_one_store_read_through_the_same_paths(tmp_path, tiny_demo):
    """The face layout (images/<person>/<i>.jpg): one store for all persons, keys with a folder."""
    from embedlab.data.shards import pack_folder
    from embedlab.images import list_images, load_rgb, read_image_bytes

    images = tmp_path / "faces" / "train" / "images"
    photos = _photos(tiny_demo)[:12]
    for i, photo in enumerate(photos):
        (images / f"{i % 3:08d}").mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, images / f"{i % 3:08d}" / f"{i // 3}.jpg")
    before = {p.relative_to(images).as_posix(): p.read_bytes() for p in list_images(images, recursive=True)}
    manifest = pack_folder(images)
    assert manifest["count"] == 12 and sorted(p.name for p in images.iterdir())[-1] == "store.json"
    after = list_images(images, recursive=True)
    assert [p.relative_to(images).as_posix() for p in after] == sorted(before)  # the same paths, in order
    assert all(read_image_bytes(p) == before[p.relative_to(images).as_posix()] for p in after)
    assert load_rgb(images / "00000001" / "2.jpg").size == load_rgb(photos[7]).size
    listed = subprocess.run(["tar", "tf", str(images / "shard-000000.tar")], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed[:2] == ["00000000/0.jpg", "00000000/1.jpg"]  # tar xf gives back the folders
    # A loose file beside the store's folder is still read as a file.
    (tmp_path / "faces" / "train" / "loose.jpg").write_bytes(photos[0].read_bytes())
    assert read_image_bytes(tmp_path / "faces" / "train" / "loose.jpg") == photos[0].read_bytes()


def test_the_same_items_give_the_same_store_bytes_whenever_they_are_written(tmp_path, monkeypatch):
    import time

    items = [(f"k{i:03d}", bytes([i]) * (i + 1)) for i in range(30)]
    write_store(tmp_path / "now", items, shard_size=7)
    monkeypatch.setattr(time, "time", lambda: 1_000_000_000.0)  # another day (DVC would see a new index)
    write_store(tmp_path / "then", items, shard_size=7)
    for name in ["index.npz", "store.json", *(f"shard-{n:06d}.tar" for n in range(5))]:
        assert (tmp_path / "now" / name).read_bytes() == (tmp_path / "then" / name).read_bytes(), name
