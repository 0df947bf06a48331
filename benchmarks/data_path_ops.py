"""Where a training item's time goes, op by op, on one core: this checkout beside another (``--before``).

    .venv/bin/python benchmarks/data_path_ops.py
    git worktree add /tmp/before <commit> && .venv/bin/python benchmarks/data_path_ops.py --before /tmp/before/src

Each source tree is timed in a process of its own with one torch/OpenCV
thread (what a DataLoader worker gets), in alternating rounds (best of
``--rounds``), on the same inputs: crops of scikit-image's photos saved as
JPEG 90 at 512×384 (the ISC-like sources) and at 1024×768. Sizes are the
drip full profile's: augmentation at 384 px, the model at 160 px, query
augmentations at intensity 0.5. Rows:

- decoding a JPEG for the 384-px augmentation size (512×384, then 1024×768,
  which draft-mode decoding reads at half scale where the tree has it);
- the resizes: 512×384 → 384 (the class image), 384 → 160 with the
  conversion to a tensor (float normalised on the CPU before, uint8 now);
- every query augmentation op on a 384-px image: ms per call, how often it
  fires at the intensity, and the expected ms per view (p × ms);
- whole items as the loaders make them: a drip view from a 512×384 file and
  from the 384-px cache's JPEG, a GeM item (256-px generated image with the
  re-id transform), a triplet item (512×384 → 224 px).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
N_PHOTOS = 48


def _best_ms(fn, inputs, repeats: int) -> float:
    """Mean ms per call over ``inputs`` (each called once per pass), best of ``repeats`` passes."""
    for x in inputs[:4]:  # warm caches, lazy imports
        fn(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x in inputs:
            fn(x)
        best = min(best, (time.perf_counter() - start) / len(inputs) * 1e3)
    return best


def measure(folder: Path, intensity: float, repeats: int) -> dict:
    """The rows, measured with whichever ``embedlab`` is first on sys.path (run in a child process)."""
    import cv2
    import numpy as np
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from embedlab.augment import OverlayPool, QueryAugmenter
    from embedlab.augment.catalogue import get_transform
    from embedlab.data import transforms
    from embedlab.data.drip import ClassImages, QueryViews
    from embedlab.data.labelled import LabelledImages
    from embedlab.images import load_rgb

    small = sorted((folder / "512x384").glob("*.jpg"))
    large = sorted((folder / "1024x768").glob("*.jpg"))
    cached = sorted((folder / "384").glob("*.jpg"))
    gem = sorted((folder / "256").glob("*.jpg"))
    new = hasattr(transforms, "to_uint8")

    def decode_for(size):
        if new:
            return lambda p: load_rgb(p, at_least=size)
        return load_rgb

    photos = [load_rgb(p) for p in small]
    at_384 = [transforms.resize_square(img, 384) for img in photos]
    if new:
        to_model = lambda img: transforms.to_uint8(img, 160)  # noqa: E731
    else:
        to_model = lambda img: transforms.to_tensor(transforms.resize_square(img, 160))  # noqa: E731
    rows = {
        "decode 512×384 JPEG (for 384 px)": _best_ms(decode_for(384), small, repeats),
        "decode 1024×768 JPEG (for 384 px)": _best_ms(decode_for(384), large, repeats),
        "resize 512×384 → 384": _best_ms(lambda img: transforms.resize_square(img, 384), photos, repeats),
        "resize 384 → 160 + to tensor": _best_ms(to_model, at_384, repeats),
    }
    aug = QueryAugmenter(intensity, OverlayPool.from_paths(small))
    ops = {}
    for name, p, kwargs in aug.table:
        fn = get_transform(name)
        rngs = [np.random.default_rng([7, i]) for i in range(len(at_384))]
        ms = _best_ms(lambda i: fn(at_384[i], rngs[i], aug.ctx, **kwargs), list(range(len(at_384))), repeats)
        ops[name] = (p, ms)
    rows["query ops, expected per view (Σ p × ms)"] = sum(p * ms for p, ms in ops.values())

    def drip_item(paths):
        views = QueryViews(ClassImages(paths, 384, "fail"), aug, 160, seed=0)
        return lambda i: views[(0, i)]

    rows["drip view from a 512×384 file"] = _best_ms(drip_item(small), list(range(len(small))), repeats)
    rows["drip view from the 384-px cache"] = _best_ms(drip_item(cached), list(range(len(cached))), repeats)
    reid = LabelledImages([(p, i) for i, p in enumerate(gem)], 256, train_transform=transforms.reid_train_transform)
    rows["GeM item (256 px, re-id transform)"] = _best_ms(lambda i: reid[(i, i)], list(range(len(gem))), repeats)
    faces = LabelledImages([(p, i) for i, p in enumerate(small)], 224)
    rows["triplet item (512×384 → 224 px)"] = _best_ms(lambda i: faces[i], list(range(len(small))), repeats)
    return {"rows": rows, "ops": ops}


def write_inputs(folder: Path) -> None:
    sys.path.insert(0, str(HERE))
    from augment_throughput import photo_sources
    from PIL import Image

    photo_sources(folder / "512x384", N_PHOTOS, size=(512, 384))
    photo_sources(folder / "1024x768", N_PHOTOS, size=(1024, 768))
    for size, name in ((384, "384"), (256, "256")):
        (folder / name).mkdir()
        for path in sorted((folder / "512x384").glob("*.jpg")):
            Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR).save(folder / name / path.name,
                                                                                       quality=95)


def run_child(src: Path, folder: Path, intensity: float, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", str(folder), "--intensity", str(intensity),
                           "--repeats", str(repeats)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"the measurement with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    rows = {k: min(r["rows"][k] for r in runs) for k in runs[0]["rows"]}
    ops = {k: (runs[0]["ops"][k][0], min(r["ops"][k][1] for r in runs)) for k in runs[0]["ops"]}
    return {"rows": rows, "ops": ops}


def print_tables(results: dict[str, dict], intensity: float) -> None:
    names = list(results)
    ratio = len(names) == 2
    head = "| step | " + " | ".join(f"{n} ms" for n in names) + (" | speed-up |" if ratio else " |")
    print(head)
    print("|---|" + "---:|" * (len(names) + ratio))
    for key in results[names[0]]["rows"]:
        values = [results[n]["rows"][key] for n in names]
        line = f"| {key} | " + " | ".join(f"{v:.3f}" for v in values)
        print(line + (f" | {values[0] / values[-1]:.2f}× |" if ratio else " |"))
    print(f"\nQuery ops at intensity {intensity:g}, on a 384-px image:\n")
    print("| op | p | " + " | ".join(f"{n} ms" for n in names) + " | " +
          " | ".join(f"{n} p × ms" for n in names) + " |")
    print("|---|---:|" + "---:|" * (2 * len(names)))
    for op, (p, _) in results[names[0]]["ops"].items():
        ms = [results[n]["ops"][op][1] for n in names]
        print(f"| {op} | {p:.3f} | " + " | ".join(f"{m:.3f}" for m in ms) + " | " +
              " | ".join(f"{p * m:.3f}" for m in ms) + " |")
    for n in names:
        view = results[n]["rows"]
        print(f"\n{n}: drip views per second per worker: {1e3 / view['drip view from a 512×384 file']:.0f} "
              f"from files, {1e3 / view['drip view from the 384-px cache']:.0f} from the cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout's src folder, timed beside this one")
    parser.add_argument("--intensity", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of them counts")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the inputs per round")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.intensity, args.repeats)))
        return
    trees = {"before": args.before, "this checkout": SRC} if args.before else {"this checkout": SRC}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_inputs(folder)
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():
                runs[name].append(run_child(src, folder, args.intensity, args.repeats))
    import platform

    print(f"Data path per op, one core; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f} at the end; best of {args.rounds} alternating rounds\n")
    print_tables({name: best_of(r) for name, r in runs.items()}, args.intensity)


if __name__ == "__main__":
    main()
