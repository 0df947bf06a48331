"""Augmentation throughput: images written per second per core, for each recipe.

    .venv/bin/python benchmarks/augment_throughput.py                       # all eleven, 256 px
    .venv/bin/python benchmarks/augment_throughput.py --recipes big bw --repeats 1
    .venv/bin/python benchmarks/augment_throughput.py --source data/raw/disc/training

Runs the real generator (``embedlab.augment.generator.generate``: decode, the
recipe, JPEG at quality 100, atomic writes) into a temporary folder, once with
1 worker and once with every core, ``--classes`` × ``--per-class`` images each
(the anchor included), best of ``--repeats``. Sources: ``--source`` (every
image of it), else 640×480 crops of scikit-image's photos (ISC-like sizes).
The original generator made about 23 images/s on one core (docs/originals/gem.md:
2M images in about a day); the goal is 10× that per core (230) and a
near-linear scaling from 1 worker to all cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from embedlab.augment._albu import fblur, fpixel
from embedlab.augment.generator import GenerateSettings, generate, generated_set_classes, resolve_workers
from embedlab.augment.recipes import load_recipes
from embedlab.config import load_params
from embedlab.stages.augment import overlay_sources

ORIGINAL_PER_CORE = 23.0  # images/s (2M images, about one day, one core)
GOAL_PER_CORE = 10 * ORIGINAL_PER_CORE


def photo_sources(folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> None:
    """``n`` random crops of scikit-image's colour photos, resized to ``size``, as JPEGs."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(),
              data.retina(), data.hubble_deep_field(), data.colorwheel()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = photos[i % len(photos)][..., :3]
        h, w = arr.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        Image.fromarray(arr[y:y + ch, x:x + cw]).resize(size, Image.BICUBIC).save(folder / f"B{i:06d}.jpg", quality=90)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def python_loop_seconds(n: int = 5_000_000) -> float:
    """A fixed pure-Python workload: how fast the core is right now (shared machines vary)."""
    start, total = time.perf_counter(), 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - start


def measure(recipe, classes, pool, workers: int, repeats: int, scratch: Path, per_class: int) -> float:
    """Best images/s of ``repeats`` runs (other processes on the machine only ever slow a run down)."""
    best = 0.0
    for _ in range(repeats):
        out = scratch / f"{recipe.name}-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        manifest = generate(recipe, classes, out, GenerateSettings(per_class=per_class, jpeg_quality=100),
                            pool, workers=workers, progress=False)
        best = max(best, manifest["run"]["images_per_second"])
        shutil.rmtree(out, ignore_errors=True)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml",
                        help="the recipes (augment section) and runtime.augment_workers")
    parser.add_argument("--recipes", nargs="*", help="default: every recipe of params.yaml")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=48)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--workers", type=int, help="the 'all cores' run (0: every core; default: "
                                                    "params.yaml's runtime.augment_workers)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--source", help="a folder of images (default: crops of scikit-image photos)")
    args = parser.parse_args(argv)

    fpixel(), fblur()  # import albumentations (seconds) before any timing
    params = load_params(args.params)
    cfg = params.augment
    recipes = load_recipes(cfg.base, cfg.recipes, args.size, where=f"{args.params}: augment")
    names = args.recipes or list(recipes)
    n_all = resolve_workers(params.runtime.augment_workers if args.workers is None else args.workers)
    with tempfile.TemporaryDirectory(prefix="augment-bench-") as tmp:
        scratch = Path(tmp)
        source = Path(args.source) if args.source else scratch / "source"
        faces = scratch / "faces"
        if not args.source:
            photo_sources(source, args.classes)
        photo_sources(faces, 4, seed=1)
        classes = generated_set_classes(source, 1, args.classes)
        pool = overlay_sources(source)
        print(f"# {len(classes)} classes x {args.per_class} images at {args.size} px, JPEG q100, "
              f"1 and {n_all} workers, best of {args.repeats}")
        print(f"# machine: {os.cpu_count()} cores ({cpu_model()}), load average before "
              f"{os.getloadavg()[0]:.2f}; Python {platform.python_version()}; "
              f"5M-step Python loop {python_loop_seconds():.2f} s")
        print()
        print(f"| recipe | 1 worker img/s | {n_all} workers img/s | per core ({n_all} workers) | "
              f"scaling 1→{n_all} | 1 worker vs original (23/s) |")
        print("|---|---:|---:|---:|---:|---:|")
        rows = []
        for name in names:
            recipe = recipes[name]
            jobs = classes + (generated_set_classes(source, 1, 1, faces)[1:] if recipe.faces else [])
            one = measure(recipe, jobs, pool, 1, args.repeats, scratch, args.per_class)
            many = measure(recipe, jobs, pool, n_all, args.repeats, scratch, args.per_class) if n_all > 1 else one
            rows.append((name, one, many))
            print(f"| {name} | {one:.0f} | {many:.0f} | {many / n_all:.0f} | {many / one:.2f} "
                  f"({many / one / n_all:.0%} of linear) | {one / ORIGINAL_PER_CORE:.1f}× |", flush=True)
        short = [n for n, one, _ in rows if one < GOAL_PER_CORE]
        print()
        print(f"# load average after {os.getloadavg()[0]:.2f}, 5M-step Python loop {python_loop_seconds():.2f} s; "
              f"below {GOAL_PER_CORE:.0f} img/s on one core: {', '.join(short) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
