"""Atomic file writes: a crash never leaves a truncated file behind.

Everything is written to a temporary name in the destination folder and then
renamed over the final name (``os.replace`` is atomic on POSIX filesystems).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary file keeps ``path``'s suffix (or ``suffix``) so that writers
    that infer the format from the extension (Pillow, h5py, torch) still work.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Hidden name (leading dot) so folder listings of images skip it.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=suffix if suffix is not None else final.suffix, dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _settle(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC and exc.filename is None:  # a failed write() names no file: name it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# The process's umask, read once (reading it means setting it, which is not thread-safe later on).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _settle(tmp: Path) -> None:
    """Give a finished temporary file the mode a plain ``open`` would (mkstemp makes it 0600: a team sharing
    a store could not read it) and flush it to disk, so that the name, once renamed, never shows a file
    whose data a power cut lost. (The folder itself is not fsynced: the rename may be lost, never half a file.)"""
    if tmp.is_file():
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


# atomic_path's temporary names: "." + the final name + "." + mkstemp's 8 random characters + a suffix.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and staging folders that writes killed mid-way left under ``folder`` (so
    they are never taken for output or uploaded); returns them. Only names :func:`atomic_path` and
    :func:`files_replaced_together` give."""
    found = list(Path(folder).rglob(".*"))
    stale = [p for p in found if p.is_file() and _TEMPORARY.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    for staging in (p for p in found if p.is_dir() and p.name.startswith(".staging-")):  # files_replaced_together's
        shutil.rmtree(staging, ignore_errors=True)
        stale.append(staging)
    return stale


@contextlib.contextmanager
def files_replaced_together(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder inside ``folder``; on success, every file written into it replaces its namesake
    in ``folder``. On an exception (a full disk half-way) nothing in ``folder`` changes: never a new file of a
    set beside an old one of the same set (predictions beside another run's metrics)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file with ``header`` then ``rows`` ("\n" line ends, so the bytes are the same on every OS)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def write_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` written atomically and with fixed member times, so the same arrays give the same bytes
    (np.savez stamps the clock into the zip: DVC would see a new file each time)."""
    with atomic_path(path, suffix=".npz") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w",
                              force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def share_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``target`` as a hard link of ``source`` (no space; a link appears whole), or an atomic copy across
    filesystems. An existing ``target`` is left as it is."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:  # another filesystem
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
