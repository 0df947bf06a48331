"""A sharded image store: tar shards of about 10k images and one index, read by index in any order.

::

    <root>/store.json            {"format": "embedlab-shards/1", "count": N, "shards": [...]}
    <root>/index.npz             keys (bytes), shard (int32), offset (int64), size (int64): one row per image
    <root>/shard-000000.tar      plain POSIX tar, members "<key><suffix>" in index order
    <root>/shard-000000.keys.npy the shard's own part of the index (the writer resumes from these)

Millions of images become hundreds of files, so DVC hashes and links
hundreds of files per set, not millions. A shard is an ordinary tar
(``tar tf``/``tar xf`` read it; webdataset reads it as a stream). The index
gives each image's byte range, so an image is one ``pread`` whatever the
access order (P×K sampling, DDP samplers). Before returning an image, the
reader checks the tar header in front of it against the index.

A folder holding ``store.json`` stands for its images: the pipeline lists
it as ``<root>/<key><suffix>`` paths (the names ``tar xf`` would give) and
reads such a path from its shard (:func:`stored_bytes`), so every stage
reads loose folders and stores alike.

Writing is resumable: a shard is written under a temporary name and renamed
when complete, with its index part beside it. A rerun skips the complete
shards and rewrites the partial one. The shards depend only on the order
of the items, so the same items give the same bytes whatever produced them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from embedlab.atomic import atomic_path, write_json_atomic, write_npz_atomic

FORMAT = "embedlab-shards/1"
SHARD_SIZE = 10_000
_BLOCK = 512  # tar's header and padding unit


class StoreError(ValueError):
    """A store that is missing, incomplete or does not match its index; the message names the file."""


KEY_DEPTH = 3  # names in a key: "<person>/<i>" of the face layout is 2


def check_key(key: str, suffix: str, where: str | os.PathLike) -> None:
    """A key must make a plain tar member name: short (ustar: 100 bytes), ASCII, at most :data:`KEY_DEPTH`
    '/'-separated names (a folder path inside the store, as ``tar xf`` would make it), none empty or hidden."""
    parts = key.split("/")
    if (not key or not key.isascii() or len(key + suffix) > 100 or len(parts) > KEY_DEPTH
            or any(not part or part.startswith(".") for part in parts)):
        raise StoreError(f"{where}: image key {key!r} must be a short ASCII name, or up to {KEY_DEPTH} of them "
                         "joined by '/', none empty or starting with '.'")


def _shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def _tar_member(key: str, data: bytes) -> tarfile.TarInfo:
    # Fixed metadata: the bytes of a shard depend on its items only (not on time, user or machine).
    info = tarfile.TarInfo(key)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    return info


class ShardWriter:
    """Writes ``(key, bytes)`` items, in the order given, into a store at ``root``.

    ``resume()`` tells how many items the complete shards of an earlier run
    already hold; the caller skips those and passes the rest to ``write``.
    """

    def __init__(self, root: str | Path, suffix: str = ".jpg", shard_size: int = SHARD_SIZE) -> None:
        self.root, self.suffix, self.shard_size = Path(root), suffix, shard_size

    def _complete_shards(self) -> list[int]:
        numbers = []
        while (self.root / _shard_name(len(numbers))).is_file() and self._keys_file(len(numbers)).is_file():
            numbers.append(len(numbers))
        return numbers

    def _keys_file(self, number: int) -> Path:
        return self.root / f"shard-{number:06d}.keys.npy"

    def resume(self) -> int:
        """Items already written in complete shards (0 for a new store); partial shards are discarded."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stray in self.root.glob(".shard-*"):  # a shard being written when the run was killed
            stray.unlink()
        return sum(len(np.load(self._keys_file(n))) for n in self._complete_shards())

    def last_key(self) -> str | None:
        """The key of the last item in the complete shards (None when there is none)."""
        shards = self._complete_shards()
        keys = np.load(self._keys_file(shards[-1])) if shards else []
        return keys[-1].decode() if len(keys) else None

    def write(self, items: Iterable[tuple[str, bytes]]) -> dict:
        """Append ``items`` after what :meth:`resume` found, then write the index; returns store.json."""
        number = len(self._complete_shards())
        batch: list[tuple[str, bytes]] = []
        for item in items:
            batch.append(item)
            if len(batch) == self.shard_size:
                self._write_shard(number, batch)
                number, batch = number + 1, []
        if batch:
            self._write_shard(number, batch)
        return self._write_index()

    def _write_shard(self, number: int, items: list[tuple[str, bytes]]) -> None:
        keys = []
        with atomic_path(self.root / _shard_name(number)) as tmp:
            with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for key, data in items:
                    check_key(key, self.suffix, self.root)
                    tar.addfile(_tar_member(key + self.suffix, data), io.BytesIO(data))
                    keys.append(key)
        # Written after the shard's rename: its presence marks the shard complete. Offsets and sizes come
        # from the tar headers when the index is written.
        # Atomic too: a keys file cut short by a kill would mark its shard complete.
        with atomic_path(self._keys_file(number)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.array([k.encode() for k in keys], dtype=bytes), allow_pickle=False)

    def _write_index(self) -> dict:
        shards = self._complete_shards()
        keys, offset, size = [], [], []  # one array per shard: 2M images as Python ints would be 200 MB
        for number in shards:
            with tarfile.open(self.root / _shard_name(number)) as tar:
                members = tar.getmembers()
            expected = np.load(self._keys_file(number))
            if [m.name.removesuffix(self.suffix).encode() for m in members] != expected.tolist():
                raise StoreError(f"{self.root / _shard_name(number)}: its members do not match "
                                 f"{self._keys_file(number).name}")
            keys.append(expected)
            offset.append(np.array([m.offset_data for m in members], np.int64))
            size.append(np.array([m.size for m in members], np.int64))
        counts = [len(k) for k in keys]
        width = max((k.dtype.itemsize for k in keys), default=1)
        key_array = np.concatenate([k.astype(f"S{width}") for k in keys]) if keys else np.zeros(0, "S1")
        if len(np.unique(key_array)) != len(key_array):
            raise StoreError(f"{self.root}: the same image key appears twice")
        write_npz_atomic(self.root / "index.npz", keys=key_array,
                         shard=np.repeat(np.arange(len(shards), dtype=np.int32), counts),
                         offset=np.concatenate(offset) if keys else np.zeros(0, np.int64),
                         size=np.concatenate(size) if keys else np.zeros(0, np.int64))
        manifest = {"format": FORMAT, "count": len(key_array), "suffix": self.suffix,
                    "shards": [_shard_name(n) for n in shards]}
        write_json_atomic(self.root / "store.json", manifest)
        return manifest


def write_store(root: str | Path, items: Iterable[tuple[str, bytes]], suffix: str = ".jpg",
                shard_size: int = SHARD_SIZE) -> dict:
    """Write (or finish) a store from ``items``, skipping those an earlier, killed run already wrote."""
    writer = ShardWriter(root, suffix, shard_size)
    done = writer.resume()
    remaining = iter(items)
    for _ in range(done):
        next(remaining)
    return writer.write(remaining)


def store_files(root: str | os.PathLike, folder: Path, names: Sequence[str], shard_size: int = SHARD_SIZE) -> dict:
    """A store at ``root`` of the image files ``names`` of ``folder``, keyed by their stems, in that order.

    The files must share one suffix: a store names all its members with one.
    """
    suffixes = sorted({os.path.splitext(name)[1] for name in names})
    if len(suffixes) > 1:
        raise StoreError(f"{folder}: images with suffixes {', '.join(suffixes)}; a store names all its images "
                         "with one suffix")
    from embedlab.images import read_image_bytes  # images reads stores: imported here, not at the top

    # ``folder`` may itself be a store (a download packed before it was imported); else plain reads, no lookups
    read = read_image_bytes if store_at(folder) is not None else Path.read_bytes
    return write_store(root, ((os.path.splitext(name)[0], read(folder / name)) for name in names),
                       suffix=suffixes[0] if suffixes else ".jpg", shard_size=shard_size)


def _member_names(folder: Path) -> list[str]:
    """The images of ``folder`` and of its folders (``<person>/<i>.jpg``), as relative names sorted as
    :func:`embedlab.images.list_images` sorts them; anything else is an error naming it."""
    from embedlab.images import is_image_file  # images reads stores: imported here, not at the top

    names, others = [], []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(top) / name
            if not name.startswith("."):
                (names if is_image_file(path) else others).append(path.relative_to(folder).as_posix())
    if others:
        raise StoreError(f"{folder}: holds {len(others)} files that are not images ({', '.join(sorted(others)[:3])}); "
                         "a store holds images only")
    for name in names:
        check_key(os.path.splitext(name)[0], os.path.splitext(name)[1], folder)  # before any shard is written
    return sorted(names)


def pack_folder(folder: str | os.PathLike, shard_size: int = SHARD_SIZE) -> dict:
    """Turn a folder of images into a store of the same images, in place (the same paths still read them).

    The store is written beside the folder and swapped in by two renames;
    the loose files are removed only after that. A kill before the swap
    leaves the folder as it was (a rerun starts again); a kill between the
    renames leaves the loose files in ``.<name>.loose`` and the store in
    ``.<name>.packing`` (a rerun finishes the swap).
    """
    folder = Path(folder)
    packing, loose = folder.with_name(f".{folder.name}.packing"), folder.with_name(f".{folder.name}.loose")
    if not folder.exists() and loose.is_dir() and (packing / "store.json").is_file():
        packing.rename(folder)  # finish a swap a kill interrupted
    if (folder / "store.json").is_file():
        if loose.exists():
            shutil.rmtree(loose)
        return json.loads((folder / "store.json").read_text())
    if not folder.is_dir():
        raise StoreError(f"{folder}: not a folder of images")
    names = _member_names(folder)
    if packing.exists():
        shutil.rmtree(packing)
    manifest = store_files(packing, folder, names, shard_size)
    folder.rename(loose)
    packing.rename(folder)
    shutil.rmtree(loose)
    return manifest


class ImageStore:
    """Read-only access to a store: ``store[i]`` is the bytes of image ``i``; ``store.keys[i]`` its key.

    Memory: the index arrays (about 40 bytes per image), shared by forked
    DataLoader workers. Each process opens the shards it reads on first use.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest_path = self.root / "store.json"
        if not manifest_path.is_file():
            raise StoreError(f"{manifest_path}: not found (is {self.root} an image store?)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
            with np.load(self.root / "index.npz") as index:
                self.keys, self._shard = index["keys"], index["shard"]
                self._offset, self._size = index["offset"], index["size"]
        except (OSError, ValueError, KeyError) as err:
            raise StoreError(f"{self.root}: unreadable store.json or index.npz ({err})") from err
        if self.manifest.get("format") != FORMAT or self.manifest.get("count") != len(self.keys):
            raise StoreError(f"{manifest_path}: format {self.manifest.get('format')!r} with "
                             f"{self.manifest.get('count')} images, index.npz has {len(self.keys)}")
        self.suffix = self.manifest["suffix"]
        self._files: dict[int, int] = {}
        self._pid = os.getpid()
        self._sorted_keys: np.ndarray | None = None  # for lookups by key, made on the first one
        self._order: np.ndarray | None = None  # sorted position -> index (None: the keys are in order)

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, index: int) -> str:
        return self.keys[index].decode()

    def size(self, index: int) -> int:
        """The byte size of image ``index`` (from the index: no read)."""
        return int(self._size[index])

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: its own descriptors
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            path = self.root / self.manifest["shards"][shard]
            try:
                self._files[shard] = os.open(path, os.O_RDONLY)
            except OSError as err:
                raise StoreError(f"{path}: cannot open shard ({err.strerror})") from err
        return self._files[shard]

    def __getitem__(self, index: int) -> bytes:
        shard, offset, size = int(self._shard[index]), int(self._offset[index]), int(self._size[index])
        header_and_data = os.pread(self._fd(shard), _BLOCK + size, offset - _BLOCK)
        path = self.root / self.manifest["shards"][shard]
        if len(header_and_data) != _BLOCK + size:
            raise StoreError(f"{path}: truncated, image {index} ({self.key(index)}) ends past the end of the file")
        name = header_and_data[:100].rstrip(b"\0").decode("ascii", "replace")
        if name != self.key(index) + self.suffix:
            raise StoreError(f"{path}: the index says image {index} is {self.key(index)}{self.suffix} "
                             f"at byte {offset}, the shard holds {name!r} there")
        return header_and_data[_BLOCK:]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # descriptors do not cross processes

    def member_paths(self) -> list[Path]:
        """Every image as the path ``tar xf`` would give it, sorted by name (as a folder is listed)."""
        names = np.sort(np.char.add(self.keys, self.suffix.encode()))  # numpy sorts a million names in a second
        return [self.root / name.decode() for name in names]

    def index_of(self, key: str) -> int | None:
        """The index of the image named ``key``, None when the store has none (a binary search)."""
        if self._sorted_keys is None:
            if np.all(self.keys[:-1] <= self.keys[1:]):  # written in key order (importers do): no copy
                self._sorted_keys = self.keys
            else:
                self._order = np.argsort(self.keys, kind="stable")
                self._sorted_keys = self.keys[self._order]
        wanted = key.encode()
        position = int(np.searchsorted(self._sorted_keys, wanted))
        if position == len(self._sorted_keys) or self._sorted_keys[position] != wanted:
            return None
        return position if self._order is None else int(self._order[position])


_OPEN: dict[Path, tuple[tuple[int, int], ImageStore]] = {}  # per process: store root -> (store.json identity, store)


def store_at(folder: str | os.PathLike) -> ImageStore | None:
    """The store whose root is ``folder``, None when ``folder`` holds no store.json.

    One ``stat`` per call: a store rewritten since it was opened (another
    mtime or inode of its store.json) is opened again.
    """
    folder = Path(folder)
    try:
        stat = os.stat(folder / "store.json")
    except (FileNotFoundError, NotADirectoryError):
        return None
    identity = (stat.st_ino, stat.st_mtime_ns)
    cached = _OPEN.get(folder)
    if cached is None or cached[0] != identity:
        cached = _OPEN[folder] = (identity, ImageStore(folder))
    return cached[1]


def locate(path: str | os.PathLike) -> tuple[ImageStore, int | None] | None:
    """(the store ``path`` lies in, the index of ``path`` in it or None when it holds no such image); None when
    ``path`` is in no store.

    The store is ``path``'s folder, or for a key with folders (``<root>/<person>/<i>.jpg``) the first
    ancestor holding store.json. Only folders that do not exist are looked above: a loose file costs two stats.
    """
    path = Path(path)
    folder, key = path.parent, path.name
    for _ in range(KEY_DEPTH):
        store = store_at(folder)
        if store is not None:
            named = key.endswith(store.suffix)
            return store, store.index_of(key.removesuffix(store.suffix)) if named else None
        if folder.is_dir() or folder == folder.parent:  # a real folder: its files are loose, not stored above
            return None
        folder, key = folder.parent, f"{folder.name}/{key}"
    return None


def stored_bytes(path: str | os.PathLike) -> bytes | None:
    """The bytes of ``path`` when its folder is a store (``<root>/<key><suffix>``), None when it is not.

    Raises :class:`StoreError` when the store has no such image.
    """
    found = locate(path)
    if found is None:
        return None
    store, index = found
    if index is None:
        raise StoreError(f"{path}: no image {Path(path).name!r} in the store {store.root}")
    return store[index]
