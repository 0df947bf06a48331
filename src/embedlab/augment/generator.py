"""The parallel, resumable generator of augmented training sets.

Output, one folder per class (class = source file stem; face classes get a
``face_`` prefix)::

    <out>/fingerprint.json              the parameters the set was made with
    <out>/<class>/<class>_0.jpg         the anchor: the source resized to the set's size
    <out>/<class>/<class>_<i>.jpg       i = 1 .. per_class-1: augmentations
    <out>/manifest.json                 written last: counts, skipped inputs, versions

Image ``i`` of a class is drawn from its own seed, a hash of (seed, recipe,
class, i): the bytes do not depend on the worker count, the order of work or
on what was generated before. Files are written atomically, and files that
exist are not redone, so a killed run finished by a re-run equals an
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
from typing import Any, NamedTuple, Sequence

import numpy as np

from embedlab.atomic import write_json_atomic
from embedlab.data.classes import ClassImage, ClassSource, select_classes
from embedlab.digests import PACKAGE, settings_digest, source_digest
from embedlab.augment._albu import fblur, fpixel
from embedlab.augment.context import AugContext
from embedlab.augment.pool import OverlayPool
from embedlab.augment.recipes import Recipe, RecipeAugmenter
from embedlab.images import BadImageError, check_on_bad_image, encoded_size, load_rgb, save_jpeg_atomic

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


def image_path(out: Path, class_name: str, index: int) -> Path:
    return out / class_name / f"{class_name}_{index}.jpg"


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
    written: int
    present: int
    bad: tuple[str, str] | None = None  # (path, reason) of an unreadable source


@dataclasses.dataclass
class _Worker:
    out: Path
    recipe: Recipe
    settings: GenerateSettings
    augmenter: RecipeAugmenter

    def run(self, job: ClassImage) -> ClassResult:
        folder = self.out / job.name
        names = set(os.listdir(folder)) if folder.is_dir() else set()
        for name in names:  # temp files of writes a kill interrupted (atomic_path: ".<name>.*")
            if name.startswith(f".{job.name}_"):
                (folder / name).unlink(missing_ok=True)
        todo = [i for i in range(self.settings.per_class) if f"{job.name}_{i}.jpg" not in names]
        present = self.settings.per_class - len(todo)
        if not todo:
            return ClassResult(job.name, 0, present)
        try:
            src = load_rgb(job.path)
        except BadImageError as exc:
            return ClassResult(job.name, 0, present, (str(exc.path), exc.reason))
        q = self.settings.jpeg_quality
        for i in todo:
            if i == 0:
                img = self.augmenter.anchor(src)
            else:
                rng = np.random.default_rng(image_seed(self.settings.seed, self.recipe.name, job.name, i))
                img = self.augmenter(src, rng)
            save_jpeg_atomic(img, image_path(self.out, job.name, i), quality=q)
        return ClassResult(job.name, len(todo), present)


_WORKER: _Worker | None = None


def _init_worker(out: Path, recipe: Recipe, settings: GenerateSettings, pool: OverlayPool) -> None:
    global _WORKER
    import cv2

    fpixel(), fblur()  # already imported where the parent forked; imported here otherwise
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would only compete
    _WORKER = _Worker(out, recipe, settings, RecipeAugmenter(recipe, AugContext(pool=pool)))


def _run_class(job: ClassImage) -> ClassResult:
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
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the set of ``recipe`` for ``classes`` under ``out``; return the manifest.

    ``pool_paths`` are the other images of underlay/overlay/opacity steps.
    ``extra`` goes into the manifest's parameters (e.g. the params.yaml values).
    """
    from tqdm import tqdm

    if not classes:
        raise ValueError("no classes to generate (the source folder selection is empty)")
    out = Path(out)
    n_workers = min(resolve_workers(workers), len(classes))
    fp = fingerprint_settings(recipe, classes, pool_paths, settings)
    resumed = prepare_out(out, fp, if_stale=if_stale, restart=restart)
    pool = OverlayPool(list(pool_paths), max_side=recipe.size)
    fpixel(), fblur()  # import albumentations (seconds) once, before forking: workers inherit it
    init_args = (out, recipe, settings, pool)
    total = len(classes) * settings.per_class
    results: list[ClassResult] = []
    start = time.perf_counter()
    bar = tqdm(total=total, unit="img", desc=f"augment {recipe.name}", disable=not progress, smoothing=0.1)

    def collect(result: ClassResult) -> None:
        if result.bad is not None and settings.on_bad_image == "fail":
            raise BadImageError(*result.bad)
        if result.bad is not None:
            log.warning("skipping bad source image %s: %s", *result.bad)
        results.append(result)
        bar.update(settings.per_class)

    try:
        if n_workers == 1:
            import cv2

            threads = cv2.getNumThreads()
            _init_worker(*init_args)
            try:
                for job in classes:
                    collect(_run_class(job))
            finally:
                cv2.setNumThreads(threads)
        else:
            chunk = max(1, min(16, len(classes) // (n_workers * 8)))
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with ctx.Pool(n_workers, initializer=_init_worker, initargs=init_args) as procs:
                for result in procs.imap_unordered(_run_class, classes, chunksize=chunk):
                    collect(result)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    manifest = _manifest(recipe, results, settings, fp, n_workers, elapsed, resumed, extra or {})
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _manifest(recipe: Recipe, results: list[ClassResult], settings: GenerateSettings, fp: dict[str, Any],
              n_workers: int, elapsed: float, resumed: bool, extra: dict[str, Any]) -> dict[str, Any]:
    bad = sorted((r.bad for r in results if r.bad is not None), key=lambda b: b[0])
    written = sum(r.written for r in results)
    done = [r for r in results if r.bad is None]
    return {
        "recipe": recipe.name,
        "steps": [s.to_dict() for s in recipe.steps],
        "grayscale": recipe.grayscale,
        "faces": recipe.faces,
        "counts": {
            "classes": len(done),
            "classes_skipped": len(bad),
            "images": len(done) * settings.per_class,
            "images_written": written,
            "images_present": sum(r.present for r in results),
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


def format_summary(manifest: dict[str, Any], out: str | os.PathLike) -> str:
    """A one-screen summary of a run (printed by the CLI)."""
    c, run = manifest["counts"], manifest["run"]
    lines = [
        f"augment {manifest['recipe']}: {c['classes']} classes x {manifest['parameters']['per_class']} images "
        f"of {manifest['parameters']['size']} px -> {out}",
        f"  written {c['images_written']}, already present {c['images_present']}, "
        f"skipped inputs {c['skipped_inputs']}",
        f"  {run['workers']} worker(s), {run['seconds']:.1f} s, "
        f"{run['images_per_second'] or 0:.0f} images/s ({(run['images_per_second'] or 0) / run['workers']:.0f} "
        f"per worker){', resumed' if run['resumed'] else ''}",
    ]
    for item in manifest["skipped_inputs"][:5]:
        lines.append(f"  skipped {item['path']}: {item['reason']}")
    if c["skipped_inputs"] > 5:
        lines.append(f"  ... and {c['skipped_inputs'] - 5} more (manifest.json lists them all)")
    lines.append(f"  manifest: {Path(out) / MANIFEST}")
    return "\n".join(lines)


