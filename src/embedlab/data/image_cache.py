"""The drip classes' images, decoded and resized once: an image store per source at the augmentation size.

Drip augments every sample from its class image at ``aug_size`` (the
original: 384 px). Decoding the full-size original for each sample costs
12 ms at 1024×768 and 53 ms at 2048×1536, for every sample of every epoch;
the original system cached its training images at 384×384 once. So do we:
``<cache>/<size>px/<source>/`` is a store (:mod:`embedlab.data.shards`) of
JPEGs already at ``size``×``size``, under the names of the source images,
and drip reads its classes there.

The cache is a DVC stage (``drip_cache``) at ``drip.aug_size``; a drip run
whose size has no cache yet builds it first. ``cache.json`` records what a
folder was made from; a folder made with other settings is rebuilt, and a
killed build resumes after its last complete shard. The bytes do not depend
on the number of worker processes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

from embedlab.atomic import write_json_atomic
from embedlab.data.shards import SHARD_SIZE, ImageStore, ShardWriter
from embedlab.data.transforms import resize_square
from embedlab.images import BadImageError, check_on_bad_image, encode_jpeg, list_images, load_rgb
from embedlab.worker_threads import one_thread, torch_single_threaded

log = logging.getLogger(__name__)

QUALITY = 95  # JPEG quality of the cached images (fixed: part of what the cache is)
SETTINGS_FILE = "cache.json"


def cache_folder(cache: str | os.PathLike, size: int, source: str) -> Path:
    """Where the cache of ``source`` (facebook, imagenet, frm_faces) at ``size`` px lives."""
    return Path(cache) / f"{size}px" / source


def _resized_jpeg(path: Path, size: int, on_bad_image: str) -> tuple[str, bytes | None, str]:
    try:
        img = resize_square(load_rgb(path, at_least=size), size)
    except BadImageError as err:
        if on_bad_image == "fail":
            raise
        return path.stem, None, err.reason
    return path.stem, encode_jpeg(img, QUALITY), ""


@contextmanager
def _held(lock: Path) -> Iterator[None]:
    """An exclusive lock on ``lock`` (created beside the cache): two runs that need the same cache (sweep
    workers, say) build it once, the second waiting for the first and then finding it done."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_source(folder: str | os.PathLike, out: str | os.PathLike, size: int, on_bad_image: str = "fail",
                 workers: int = 1, shard_size: int = SHARD_SIZE) -> dict:
    """Write (or finish) the cache of the images of ``folder`` at ``out``; returns its cache.json."""
    out = Path(out)
    with _held(out.with_name(f".{out.name}.lock")):
        return _cache_source(Path(folder), out, size, on_bad_image, workers, shard_size)


def _cache_source(folder: Path, out: Path, size: int, on_bad_image: str, workers: int, shard_size: int) -> dict:
    check_on_bad_image(on_bad_image)
    paths = list_images(folder, allow_empty=True)
    settings = {"source": str(folder), "images": len(paths), "size": size, "quality": QUALITY}
    recorded, building = out / SETTINGS_FILE, out / ".building"
    done = json.loads(recorded.read_text()) if recorded.is_file() else {}
    if {k: done.get(k) for k in settings} == settings:
        if done["skipped"] and on_bad_image == "fail":  # built with skip; fail names what was left out
            load_rgb(next(p for p in paths if p.stem == done["skipped"][0]))
        return done
    if out.exists() and not (building.is_file() and building.read_text() == repr(settings)):
        shutil.rmtree(out)  # made from other settings, or a killed build of other settings: start again
    out.mkdir(parents=True, exist_ok=True)
    building.write_text(repr(settings))

    writer = ShardWriter(out, shard_size=shard_size)
    writer.resume()
    last = writer.last_key()  # skipped images make keys and positions differ: resume after the last key
    start = 0 if last is None else 1 + next(i for i, p in enumerate(paths) if p.stem == last)
    encode = partial(_resized_jpeg, size=size, on_bad_image=on_bad_image)
    with one_thread(), multiprocessing.get_context("fork").Pool(workers, initializer=torch_single_threaded) \
            if workers > 1 else _InProcess() as pool:
        results = pool.imap(encode, paths[start:], chunksize=64)  # in order: the same bytes for any worker count

        def items():
            for key, data, problem in results:
                if data is None:
                    log.warning("drip cache: skipping %s/%s (%s)", folder, key, problem)
                    continue
                yield key, data

        manifest = writer.write(items())
    cached = {key.decode() for key in ImageStore(out).keys}
    # From the store, not from this run: a resumed build knows the skips of the killed one too.
    summary = {**settings, "cached": manifest["count"], "skipped": [p.stem for p in paths if p.stem not in cached]}
    write_json_atomic(recorded, summary)
    building.unlink()
    return summary


class _InProcess:
    """``Pool``'s ``imap`` in this process (one worker: no fork, no pickling)."""

    def __enter__(self) -> "_InProcess":
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def imap(func, items, chunksize: int = 1):
        return map(func, items)


def build_drip_cache(sources: dict[str, Path], cache: str | os.PathLike, size: int, on_bad_image: str,
                     workers: int | None = None) -> dict[str, dict]:
    """The cache of each source folder that exists (a missing one, e.g. no frm_faces, has none)."""
    workers = workers or max(1, (os.cpu_count() or 1))
    return {name: cache_source(folder, cache_folder(cache, size, name), size, on_bad_image, workers)
            for name, folder in sources.items() if Path(folder).is_dir()}
