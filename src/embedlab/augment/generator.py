"""The parallel, resumable generator of augmented training sets.

Output: an image store (:mod:`embedlab.data.shards`) whose images are keyed
``<class>_<i>`` (class = source file stem; face classes get a ``face_``
prefix), classes in order and ``i`` in order within a class::

    <out>/fingerprint.json              the parameters the set was made with
    <out>/shard-000000.tar ...          <class>_0.jpg, the anchor: the source resized to the set's size,
                                        <class>_<i>.jpg, i = 1 .. per_class-1: augmentations
    <out>/index.npz, store.json         the store's index
    <out>/manifest.json                 written last: counts, skipped inputs, versions

A 2M-image set is 200 shards: DVC hashes, links and pushes 400 files.

Image ``i`` of a class is drawn from its own seed, a hash of (seed, recipe,
class, i): the bytes do not depend on the worker count, the order of work or
on what was generated before. Workers make whole classes; the main process
writes them in class order. A killed run keeps its complete shards and a
re-run continues after the last image they hold, so it equals an
uninterrupted one byte for byte. A folder made with other parameters (see
:func:`fingerprint_settings`) is an error, unless ``if_stale="restart"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from embedlab.atomic import write_json_atomic
from embedlab.data.augmented import image_key, split_key
from embedlab.data.classes import ClassImage, ClassSource, select_classes
from embedlab.digests import PACKAGE, settings_digest, source_digest
from embedlab.augment._albu import fblur, fpixel
from embedlab.augment.context import AugContext
from embedlab.augment.pool import OverlayPool
from embedlab.augment.recipes import Recipe, RecipeAugmenter
from embedlab.data.shards import SHARD_SIZE, ImageStore, ShardWriter, check_key
from embedlab.images import BadImageError, check_on_bad_image, encode_jpeg, encoded_size, load_rgb
from embedlab.worker_threads import one_thread, torch_single_threaded

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
MANIFEST = "manifest.json"
FACE_PREFIX = "face_"


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    """Everything besides the recipe and the classes that shapes a set."""

    per_class: int = 20
    jpeg_quality: int = 100
    seed: int = 0
    on_bad_image: str = "skip"  # skip | fail

    def __post_init__(self) -> None:
        check_on_bad_image(self.on_bad_image)
        if self.per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {self.per_class}")


# --- inputs -----------------------------------------------------------------------


def generated_set_classes(source: str | os.PathLike, every: int = 1, classes: int = 0,
                          faces: str | os.PathLike | None = None) -> list[ClassImage]:
    """Every ``every``-th image of ``source`` (sorted by name), at most ``classes``
    of them (0: all), then every image of ``faces`` (``face_<stem>``) when given."""
    sources = [ClassSource(Path(source), classes, every)]
    if faces is not None:
        if not Path(faces).is_dir():
            raise FileNotFoundError(f"face folder {faces} does not exist: recipes with `faces: true` add its images "
                                    f"as classes (set augment.faces; the demo data has faces with "
                                    f"demo_data.n_frm_faces > 0)")
        sources.append(ClassSource(Path(faces), prefix=FACE_PREFIX))
    return select_classes(sources, unique_names=True)


def image_seed(seed: int, recipe: str, class_name: str, index: int) -> int:
    """The seed of one image: a hash of (seed, recipe, class, index)."""
    digest = hashlib.sha256(f"{seed}\0{recipe}\0{class_name}\0{index}".encode()).digest()
    return int.from_bytes(digest[:16], "little")




# --- fingerprint --------------------------------------------------------------------


def _files_digest(paths: Sequence[str]) -> str:
    """Names and byte sizes (not contents: reading a million files twice is slow)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name}\0{encoded_size(p)}\n".encode())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that make the pixels and the JPEG bytes."""
    from importlib.metadata import PackageNotFoundError, version

    import cv2
    import PIL

    import embedlab

    out = {"pillow": PIL.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
           "embedlab": embedlab.__version__}
    try:  # from the package metadata: importing albumentations takes seconds
        out["albumentations"] = version("albumentations")
    except PackageNotFoundError:
        out["albumentations"] = "not installed"
    return dict(sorted(out.items()))


def fingerprint_settings(recipe: Recipe, classes: Sequence[ClassImage], pool: Sequence[str],
                         settings: GenerateSettings) -> dict[str, Any]:
    """What a set's bytes depend on (the worker count is not among them)."""
    return {"recipe": recipe.to_dict(), **dataclasses.asdict(settings),
            "classes": len(classes), "class_sources": _files_digest([c.path for c in classes]),
            "class_names": hashlib.sha256("\n".join(c.name for c in classes).encode()).hexdigest()[:16],
            "overlay_pool": _files_digest(pool), "versions": library_versions(),
            # the augment package and the image writer: a code change makes other bytes
            "code": source_digest([*Path(__file__).resolve().parent.glob("*.py"), PACKAGE / "images.py"])}


def prepare_out(out: Path, settings: dict[str, Any], if_stale: str = "fail", restart: bool = False) -> bool:
    """Make ``out`` ready for ``settings``; True when earlier work is resumed.

    ``restart`` clears a set made by this generator; ``if_stale="restart"``
    clears it only when it was made with other settings (what ``dvc repro``
    wants), ``"fail"`` makes that an error. A non-empty folder without a
    fingerprint is never cleared.
    """
    if if_stale not in ("fail", "restart"):
        raise ValueError(f"if_stale must be 'fail' or 'restart', got {if_stale!r}")
    record = out / FINGERPRINT
    resumed = False
    if out.exists():
        if not out.is_dir():
            raise NotADirectoryError(f"{out} is not a folder")
        if not record.is_file():
            if any(out.iterdir()):
                raise ValueError(f"{out}: holds files but no {FINGERPRINT}, so it was not made by `embedlab "
                                 f"augment`; choose another --out (nothing was deleted)")
        else:
            try:
                old = json.loads(record.read_text())
            except json.JSONDecodeError:
                old = {}
            same = old.get("fingerprint") == settings_digest(settings)
            if restart or (not same and if_stale == "restart"):
                log.info("clearing %s (%s)", out, "--restart" if restart else "made with other parameters")
                shutil.rmtree(out)
            elif not same:
                before = old.get("settings", {})
                changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
                raise ValueError(f"{out}: made with other parameters (changed: {', '.join(changed) or 'unknown'}); "
                                 f"rerun with --restart to delete it and start afresh, or choose another --out")
            else:
                resumed = True
    out.mkdir(parents=True, exist_ok=True)
    if not resumed:
        write_json_atomic(record, {"fingerprint": settings_digest(settings), "settings": settings})
    for leftover in [*out.glob(f".{MANIFEST}.*"), *out.glob(f".{FINGERPRINT}.*")]:  # temp files of a killed write
        leftover.unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # present only once the set is complete
    return resumed


# --- the work of one class (runs in worker processes) --------------------------------


class ClassResult(NamedTuple):
    name: str
    images: list[tuple[str, bytes]]  # (key, JPEG bytes) in order
    bad: tuple[str, str] | None = None  # (path, reason) of an unreadable source


@dataclasses.dataclass
class ClassWorker:
    """Makes a class's images: its anchor, then augmentations seeded by (seed, recipe, class, index)."""

    recipe: Recipe
    settings: GenerateSettings
    augmenter: RecipeAugmenter

    def run(self, job: tuple[ClassImage, int]) -> ClassResult:
        """Images ``first`` .. per_class-1 of a class (a resumed class starts after what is written)."""
        image, first = job
        try:
            src = load_rgb(image.path)
        except BadImageError as exc:
            return ClassResult(image.name, [], (str(exc.path), exc.reason))
        out = []
        for i in range(first, self.settings.per_class):
            if i == 0:
                img = self.augmenter.anchor(src)
            else:
                rng = np.random.default_rng(image_seed(self.settings.seed, self.recipe.name, image.name, i))
                img = self.augmenter(src, rng)
            out.append((image_key(image.name, i), encode_jpeg(img, self.settings.jpeg_quality)))
        return ClassResult(image.name, out)


_WORKER: ClassWorker | None = None


def _init_worker(recipe: Recipe, settings: GenerateSettings, pool: OverlayPool) -> None:
    global _WORKER
    fpixel(), fblur()  # already imported where the parent forked; imported here otherwise
    torch_single_threaded()  # OpenCV's one thread is the parent's setting (worker_threads)
    _WORKER = ClassWorker(recipe, settings, RecipeAugmenter(recipe, AugContext(pool=pool)))


def _run_class(job: tuple[ClassImage, int]) -> ClassResult:
    assert _WORKER is not None
    return _WORKER.run(job)


def resolve_workers(workers: int) -> int:
    """0 means every core this process may use."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the whole set ----------------------------------------------------------------------


def generate(recipe: Recipe, classes: Sequence[ClassImage], out: str | os.PathLike,
             settings: GenerateSettings, pool_paths: Sequence[str] = (), workers: int = 0,
             restart: bool = False, if_stale: str = "fail", progress: bool = True,
             extra: dict[str, Any] | None = None, shard_size: int = SHARD_SIZE) -> dict[str, Any]:
    """Write the set of ``recipe`` for ``classes`` under ``out``; return the manifest.

    ``pool_paths`` are the other images of underlay/overlay/opacity steps.
    ``extra`` goes into the manifest's parameters (e.g. the params.yaml values).
    """
    from tqdm import tqdm

    if not classes:
        raise ValueError("no classes to generate (the source folder selection is empty)")
    out = Path(out)
    for c in classes:  # before any work: the set's store names its images by class
        check_key(image_key(c.name, settings.per_class - 1), ".jpg", c.path)
    n_workers = min(resolve_workers(workers), len(classes))
    fp = fingerprint_settings(recipe, classes, pool_paths, settings)
    resumed = prepare_out(out, fp, if_stale=if_stale, restart=restart)
    pool = OverlayPool(list(pool_paths), max_side=recipe.size)
    fpixel(), fblur()  # import albumentations (seconds) once, before forking: workers inherit it
    writer = ShardWriter(out, shard_size=shard_size)
    present = writer.resume()
    jobs = _remaining(classes, writer.last_key())
    init_args = (recipe, settings, pool)
    results: list[ClassResult] = []
    start = time.perf_counter()
    bar = tqdm(total=len(classes) * settings.per_class, initial=present, unit="img", desc=f"augment {recipe.name}",
               disable=not progress, smoothing=0.1)

    def images(results_in_order: Iterable[ClassResult]) -> Iterator[tuple[str, bytes]]:
        for result in results_in_order:
            if result.bad is not None and settings.on_bad_image == "fail":
                raise BadImageError(*result.bad)
            if result.bad is not None:
                log.warning("skipping bad source image %s: %s", *result.bad)
            results.append(result._replace(images=[]))  # counts only: the bytes go to the shards
            bar.update(len(result.images))
            yield from result.images

    try:
        if n_workers == 1:
            with one_thread():
                _init_worker(*init_args)
                store = writer.write(images(map(_run_class, jobs)))
        else:
            chunk = max(1, min(16, len(jobs) // (n_workers * 8)))
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with one_thread(), ctx.Pool(n_workers, initializer=_init_worker, initargs=init_args) as procs:
                # imap keeps the class order: the shards' bytes do not depend on which worker finished first
                store = writer.write(images(procs.imap(_run_class, jobs, chunksize=chunk)))
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    skipped = _skipped_inputs(out, classes, settings, store["count"], results)
    manifest = _manifest(recipe, classes, skipped, store, present, settings, fp, n_workers, elapsed, resumed,
                         extra or {})
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _remaining(classes: Sequence[ClassImage], last_key: str | None) -> list[tuple[ClassImage, int]]:
    """(class, first image to make) after the last image an earlier, killed run wrote."""
    if last_key is None:
        return [(c, 0) for c in classes]
    name, index = split_key(last_key)
    position = next(i for i, c in enumerate(classes) if c.name == name)
    return [(classes[position], index + 1)] + [(c, 0) for c in classes[position + 1:]]


def _skipped_inputs(out: Path, classes: Sequence[ClassImage], settings: GenerateSettings, count: int,
                    results: list[ClassResult]) -> list[tuple[str, str]]:
    """The unreadable sources, this run's and a killed run's (its classes are missing from the store)."""
    if count == len(classes) * settings.per_class:
        return []
    written = {split_key(k.decode())[0] for k in ImageStore(out).keys}
    reasons = {r.name: r.bad for r in results if r.bad is not None}
    return sorted(reasons.get(c.name, (c.path, "unreadable (found by an earlier run)"))
                  for c in classes if c.name not in written)


def _manifest(recipe: Recipe, classes: Sequence[ClassImage], bad: list[tuple[str, str]], store: dict[str, Any],
              present: int, settings: GenerateSettings, fp: dict[str, Any], n_workers: int, elapsed: float,
              resumed: bool, extra: dict[str, Any]) -> dict[str, Any]:
    written = store["count"] - present
    return {
        "recipe": recipe.name,
        "steps": [s.to_dict() for s in recipe.steps],
        "grayscale": recipe.grayscale,
        "faces": recipe.faces,
        "counts": {
            "classes": len(classes) - len(bad),
            "classes_skipped": len(bad),
            "images": store["count"],
            "images_written": written,
            "images_present": present,
            "skipped_inputs": len(bad),
        },
        "skipped_inputs": [{"path": p, "reason": reason} for p, reason in bad],
        "parameters": {**extra, **dataclasses.asdict(settings), "size": recipe.size},
        "seed": settings.seed,
        "fingerprint": settings_digest(fp),
        "versions": fp["versions"],
        "run": {"workers": n_workers, "resumed": resumed, "seconds": round(elapsed, 3),
                "images_per_second": round(written / elapsed, 1) if elapsed > 0 else None},
    }
