"""What the importers of published data sets share: finding parts under their distributions' names, checking
that every image decodes (on every core), and writing the project's layout atomically from a staging folder."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from embedlab.images import decode_problem

T = TypeVar("T")


class DownloadError(ValueError):
    """A download that is incomplete or inconsistent; the message names the file or folder."""


def first_found(src: Path, names: tuple[str, ...], what: str, is_dir: bool = True,
                error: type[ValueError] = DownloadError) -> Path:
    """The first of ``names`` under ``src`` that exists (a folder, or a file with ``is_dir=False``)."""
    for name in names:
        path = src / name
        if path.is_dir() if is_dir else path.is_file():
            return path
    raise error(f"{src}: no {what} found (looked for {', '.join(names)})")


BLOCK = 65_536  # paths handed to the decoding pool at a time


def bad_images(paths: Iterable[T], workers: int | None = None) -> dict[T, str]:
    """{path: why it does not decode} for the images of ``paths`` that do not (every core by default).

    ``paths`` is consumed a block at a time: ``pool.map`` submits every task of what it is given at once,
    and 2M paths as one list and 8,000 pending chunks held the import at 550 MB.
    """
    bad: dict[T, str] = {}
    paths = iter(paths)
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        while block := list(itertools.islice(paths, BLOCK)):
            problems = pool.map(decode_problem, block, chunksize=256)
            bad.update((path, problem) for path, problem in zip(block, problems) if problem is not None)
    return bad


def decoding_failures(paths: Iterable[T], on_bad_image: str, error: type[ValueError],
                      workers: int | None = None) -> dict[T, str]:
    """:func:`bad_images`, refused with ``error`` naming the first when ``on_bad_image`` is fail."""
    bad = bad_images(paths, workers)
    if bad and on_bad_image == "fail":
        path, problem = min(bad.items())
        raise error(f"{path}: unreadable image ({problem}); {len(bad)} unreadable in all "
                    "(on_bad_image: skip leaves them out)")
    return bad


def refuse_filled(out: Path, error: type[ValueError] = DownloadError) -> None:
    """An import never mixes with data already there: an existing, non-empty ``out`` is refused."""
    if out.exists() and any(out.iterdir()):
        raise error(f"{out}: exists and is not empty; import into a new folder")


@contextmanager
def staged_output(out: Path, error: type[ValueError] = DownloadError) -> Iterator[Path]:
    """A staging folder beside ``out``, renamed to ``out`` when the block succeeds and removed when it fails.

    An existing, non-empty ``out`` is refused (:func:`refuse_filled`).
    """
    refuse_filled(out, error)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def link_or_copy(source: Path, target: Path, link: bool = True) -> None:
    """A hard link of ``source`` at ``target`` (a copy across filesystems, or with ``link=False``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, target)
            return
        except OSError:  # another filesystem
            pass
    shutil.copy2(source, target)
