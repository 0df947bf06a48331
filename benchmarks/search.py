"""Goal 3 of issue 7: exact kNN search speed (queries/s), on the GPU (faiss-gpu, else torch) and the CPU (faiss).

    .venv/bin/python benchmarks/search.py                                   # 50k queries × 1M references × 256-d
    .venv/bin/python benchmarks/search.py --queries 2000 --refs 100000      # quick run

Synthetic L2-normalised vectors (seeded), top-``k`` by inner product through
the project's own :func:`embedlab.retrieval.knn_search` (what
``embedlab evaluate-disc`` runs), timed whole: index build, transfer to the GPU
and the batched searches. The GPU row needs a CUDA device: faiss-gpu when
installed, else torch's blocked matrix products (``search_backend`` names
which); without one it says why it is missing. A small warm-up search runs first on each device (CUDA context,
faiss's GPU resources). The GPU and CPU results are compared (same
neighbours up to ties).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from embedlab.retrieval import knn_search, resolve_device, search_backend


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed_search(query: np.ndarray, reference: np.ndarray, k: int, device: str, repeats: int):
    knn_search(query[:16], reference[:1024], k, device=device)  # warm-up
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = knn_search(query, reference, k, device=device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--refs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--devices", nargs="+", choices=("cuda", "cpu"), default=["cuda", "cpu"])
    parser.add_argument("--repeats", type=int, default=1, help="best of")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import faiss

    reference = vectors(args.refs, args.dim, args.seed)
    query = vectors(args.queries, args.dim, args.seed + 1)
    rows, results = [], {}
    for device in args.devices:
        if device == "cuda":
            try:
                resolve_device("cuda")
            except RuntimeError:
                rows.append(("GPU", None, "not measured: no CUDA device"))
                continue
        seconds, results[device] = timed_search(query, reference, args.k, device, args.repeats)
        name = "GPU" if device == "cuda" else f"CPU ({faiss.omp_get_max_threads()} threads)"
        rows.append((f"{name}, {search_backend(device)}", seconds, ""))

    print(f"\n{args.queries:,} queries × {args.refs:,} references × {args.dim}-d, k={args.k}, exact inner product "
          f"(embedlab.retrieval.knn_search; faiss {faiss.__version__}), best of {args.repeats}; "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| device | seconds | queries/s | note |")
    print("|---|---:|---:|---|")
    for name, seconds, note in rows:
        if seconds is None:
            print(f"| {name} | - | - | {note} |")
        else:
            print(f"| {name} | {seconds:.2f} | {args.queries / seconds:,.0f} | {note} |")
    if len(results) == 2:
        (s_gpu, i_gpu), (s_cpu, i_cpu) = results["cuda"], results["cpu"]
        same = float(np.mean(i_gpu == i_cpu))
        print(f"\nGPU vs CPU: {same:.4%} of neighbour indices identical, max score difference "
              f"{float(np.abs(s_gpu - s_cpu).max()):.2e}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
