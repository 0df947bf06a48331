"""Peak memory of a DISC evaluation as a multiple of the reference array, as the reference set grows.

    .venv/bin/python benchmarks/evaluate_memory.py                       # 10k, 100k, 1M references × 256-d
    .venv/bin/python benchmarks/evaluate_memory.py --sizes 10000 100000

For each size it writes a synthetic reference h5 (seeded unit vectors, ISC
layout), 1,000 queries and a ground truth. Then, each in a fresh process, it
runs two ways side by side:
- **before**: `read_descriptors` of the references, added whole to a
  faiss `IndexFlatIP` and searched (what `evaluate_disc` did before);
- **evaluate_disc**: the command's own path now. The references are read
  from the h5 in 64 MiB slices; each slice is searched with faiss and merged
  into a running top-k. Predictions, metrics and the PR curve are written too.

The figure is the process's peak RSS during the evaluation (sampled every
2 ms by a thread) minus its RSS just before it (imports and queries
loaded), divided by the reference array's bytes (N × 256 × 4). The goal is ≤ 1.2×.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import child_json  # noqa: E402
from table import print_head, sizes_parser  # noqa: E402

DIM, QUERIES = 256, 1000

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
from embedlab.descriptors import read_descriptors
from embedlab.evaluation.disc_search import evaluate_disc

way, folder = sys.argv[1], Path(sys.argv[2])
q_names, q = read_descriptors(folder / "query.h5")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
start, peak, running = rss(), [0], [True]

def sample():  # the peak of this evaluation, not of the imports before it (ru_maxrss would mix both)
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
if way == "whole":  # the path before: the whole array, copied into a faiss index
    import faiss
    names, r = read_descriptors(folder / "reference.h5")
    index = faiss.IndexFlatIP(r.shape[1])
    index.add(r)
    index.search(q, 10)
else:
    evaluate_disc(folder / "query.h5", folder / "reference.h5", folder / "gt.csv", folder / "out", device="cpu")
running[0] = False
sampler.join()
print(json.dumps({"extra_bytes": max(peak[0], rss()) - start}))
"""


def write_set(folder: Path, n: int, seed: int = 0) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(folder / "reference.h5", "w") as f:
        vectors = f.create_dataset("vectors", shape=(n, DIM), dtype=np.float32)
        for start in range(0, n, 100_000):  # written in slices: the writer's memory is not what is measured
            part = rng.standard_normal((min(100_000, n - start), DIM), dtype=np.float32)
            vectors[start:start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
        f.create_dataset("image_names", data=np.array([f"R{i:07d}".encode() for i in range(n)]))
    q = rng.standard_normal((QUERIES, DIM), dtype=np.float32)
    with h5py.File(folder / "query.h5", "w") as f:
        f.create_dataset("vectors", data=q / np.linalg.norm(q, axis=1, keepdims=True))
        f.create_dataset("image_names", data=np.array([f"Q{i:05d}".encode() for i in range(QUERIES)]))
    rows = ["query_id,reference_id"] + [f"Q{i:05d},R{i * 7 % n:07d}" for i in range(0, QUERIES, 2)]
    (folder / "gt.csv").write_text("\n".join(rows) + "\n")


def measure(way: str, folder: Path) -> float:
    return child_json(CHILD, way, folder)["extra_bytes"]


def main(argv: list[str] | None = None) -> int:
    args = sizes_parser(__doc__).parse_args(argv)
    print_head(f"Peak memory above the start of the evaluation, {QUERIES:,} queries × N references × {DIM}-d, "
               "k=10, CPU search", ["references", "array MiB", "before: extra MiB", "× array",
                                    "evaluate_disc: extra MiB", "× array"])
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="eval_mem_") as tmp:
            folder = Path(tmp)
            write_set(folder, n)
            array = n * DIM * 4
            whole, streamed = measure("whole", folder), measure("evaluate", folder)
            print(f"| {n:,} | {array / 2**20:,.1f} | {whole / 2**20:,.1f} | {whole / array:.2f} | "
                  f"{streamed / 2**20:,.1f} | {streamed / array:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
