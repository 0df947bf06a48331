"""The version of a data folder or file: the hash DVC records for it, else a digest that is cheap to compute.

DVC records an md5 for each path a ``.dvc`` file or ``dvc.lock`` names as an output
(``data/raw``, ``data/augmented/big``). A folder or file inside one
(``data/raw/disc/query``) gets the md5 DVC gives it as a stage dependency, computed
from the parent's listing in the DVC cache: the number dvc.lock shows for it.

A record is stale when the data changed without DVC (``embedlab augment`` run by
hand): a folder's index files (an image store's ``store.json`` and ``index.npz``, a
generated set's ``manifest.json``) and files up to 64 MiB are checked against the
record first, and a mismatch falls back to the digest.

The digest without a usable record: a file's bytes, or a folder's file names and
sizes plus its index files' bytes. Never every image's bytes: a store of 2M images
is a few hundred files and one index.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Iterator

import yaml

from embedlab.digests import file_digest, update_with_file

INDEX_FILES = ("store.json", "index.npz", "manifest.json")  # what a folder says about its images
CHECKED_BYTES = 64 << 20  # a file up to this size is checked against DVC's record; a bigger one is trusted


def data_version(path: str | os.PathLike) -> str:
    """DVC's hash of ``path`` where DVC records a current one, else :func:`content_digest`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: data not found")
    return dvc_hash(path) or content_digest(path)


def content_digest(path: Path) -> str:
    """A file's bytes; a folder's relative file names and sizes, and the bytes of its index files."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for file in sorted(_files(path)):
        h.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\n".encode())
        if file.name in INDEX_FILES:
            h.update(file_digest(file).encode())
    return h.hexdigest()[:16]


def dvc_hash(path: Path) -> str | None:
    """The md5 DVC records for ``path`` or gives it inside a recorded folder; None: none, or stale."""
    path = Path(os.path.abspath(path))  # not resolved: DVC may link a file to its cache
    root = _dvc_root(path)
    if root is None:
        return None
    rel = path.relative_to(root)
    records = _records(root, rel)
    tracked = next((p for p in (rel, *rel.parents) if records.get(p.as_posix())), None)
    if tracked is None:
        return None
    md5, inside = records[tracked.as_posix()], rel.relative_to(tracked).parts
    if not md5.endswith(".dir"):
        return md5 if not inside and _file_matches(path, md5) else None
    listing = _listing(root, md5)
    if listing is None:  # the cache lacks the folder's listing (not pulled): its own record is all there is
        return None if inside else md5
    prefix = "/".join(inside)
    if path.is_file():
        return listing.get(prefix) if _file_matches(path, listing.get(prefix)) else None
    entries = {k[len(prefix) + 1:] if prefix else k: v for k, v in listing.items()
               if not prefix or k.startswith(prefix + "/")}
    if not entries or any(not _file_matches(path / name, entries.get(name))
                          for name in INDEX_FILES if (path / name).is_file()):
        return None
    return md5 if not inside else _dir_md5(entries)


def _files(folder: Path) -> Iterator[Path]:
    for entry in os.scandir(folder):
        if entry.is_dir():
            yield from _files(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def _dvc_root(path: Path) -> Path | None:
    """The DVC project holding ``path`` (the nearest folder with ``.dvc/``): a `dvc exp run --temp` copy's own."""
    return next((p for p in path.parents if (p / ".dvc").is_dir()), None)


def _records(root: Path, rel: Path) -> dict[str, str]:
    """{path relative to ``root``: md5} of the outputs dvc.lock and the .dvc files that could hold ``rel`` name."""
    records: dict[str, str] = {}
    lock = root / "dvc.lock"
    if lock.is_file():
        for stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).values():
            records.update({out["path"]: out.get("md5") for out in stage.get("outs") or []})
    # `dvc add data/raw` writes data/raw.dvc; this project keeps its data.dvc at the root.
    dvc_files = {*root.glob("*.dvc"), *(root / p.parent / f"{p.name}.dvc" for p in (rel, *rel.parents) if p.name)}
    for dvc_file in dvc_files:
        if dvc_file.is_file():
            for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []:
                target = os.path.normpath(dvc_file.parent.relative_to(root) / out["path"])
                records[Path(target).as_posix()] = out.get("md5")
    return records


def _file_matches(path: Path, md5: str | None) -> bool:
    if md5 is None:
        return False
    if path.stat().st_size > CHECKED_BYTES:
        return True
    h = hashlib.md5()  # DVC's hash of a file
    update_with_file(h, path)
    return h.hexdigest() == md5


@functools.lru_cache(maxsize=4)  # one listing serves every set inside it (query, reference, training)
def _listing(root: Path, md5: str) -> dict[str, str] | None:
    """{relative path: md5} of a recorded folder, from its listing in the DVC cache (None: not there)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.errors import ObjectFormatError

    try:
        with Repo(str(root)) as repo:  # the cache may lie elsewhere (cache.dir; a temporary experiment's: the repo's)
            tree = Tree.load(repo.cache.local, HashInfo("md5", md5))
    except (OSError, ObjectFormatError, DvcException):
        return None
    return {"/".join(key): hash_info.value for key, _, hash_info in tree}


def _dir_md5(entries: dict[str, str]) -> str:
    """DVC's md5 of a folder from its files' md5s: the hash dvc.lock records for a folder a stage depends on."""
    from dvc_data.hashfile.tree import Tree

    tree = Tree.from_list([{"md5": md5, "relpath": name} for name, md5 in entries.items()])
    tree.digest()
    return tree.hash_info.value
