"""Goal 4 of issue 7: μAP over 500k predictions in under a second on one CPU core.

    .venv/bin/python benchmarks/evaluate_speed.py
    .venv/bin/python benchmarks/evaluate_speed.py --predictions 2000000 --repeats 3

The process is pinned to one core (affinity) and every thread pool is set to
one thread before numpy / torch / faiss are imported. Synthetic predictions
(seeded): 10 per query for 50k queries, references drawn from 1M ids, scores
higher on average for the ground-truth pairs. Timed, best of ``--repeats``:
:func:`embedlab.metrics.micro_average_precision` on score / match arrays
(the goal), and beside it the rest of what ``evaluate-disc`` computes from
the same predictions: labelling string (query, reference) ids against the
ground truth, recall at precision 0.9 and recall at rank 1.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from embedlab.metrics import (  # noqa: E402
    label_predictions,
    micro_average_precision,
    recall_at_precision,
    recall_at_rank,
)

GOAL_SECONDS = 1.0


def predictions(n: int, per_query: int, n_refs: int, seed: int):
    """Query ids, reference ids, scores, match flags and the ground-truth pairs (about 1 match in 20)."""
    rng = np.random.default_rng(seed)
    n_queries = n // per_query
    q = np.repeat(np.arange(n_queries), per_query)
    # Distinct references within a query: one from each of per_query slices of the id range.
    stride = n_refs // per_query
    r = rng.integers(0, stride, size=n) + np.tile(np.arange(per_query) * stride, n_queries)
    match = rng.random(n) < 0.05
    scores = (rng.normal(0.0, 1.0, n) + 1.5 * match).astype(np.float32)
    q_ids = np.char.add("Q", q.astype(str))
    r_ids = np.char.add("R", r.astype(str))
    gt = list(zip(q_ids[match].tolist(), r_ids[match].tolist()))
    gt += [(f"Q{i}", "R_missing") for i in range(0, n_queries, 7)]  # ground truth no prediction found
    return q_ids, r_ids, scores, match, gt


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=500_000)
    parser.add_argument("--per-query", type=int, default=10)
    parser.add_argument("--refs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    q_ids, r_ids, scores, match, gt = predictions(args.predictions, args.per_query, args.refs, args.seed)
    n_gt = len(gt)
    assert np.array_equal(label_predictions(q_ids, r_ids, gt), match)
    rows = [
        ("μAP (`micro_average_precision`) - the goal",
         best_of(lambda: micro_average_precision(scores, match, n_gt), args.repeats)),
        ("labelling string id pairs (`label_predictions`)",
         best_of(lambda: label_predictions(q_ids, r_ids, gt), args.repeats)),
        ("recall at precision 0.9", best_of(lambda: recall_at_precision(scores, match, n_gt, 0.9), args.repeats)),
        ("recall at rank 1", best_of(lambda: recall_at_rank(q_ids, r_ids, scores, gt, 1), args.repeats)),
    ]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"\n{args.predictions:,} predictions ({args.per_query} per query), {n_gt:,} ground-truth pairs, "
          f"μAP {micro_average_precision(scores, match, n_gt):.4f}; one core (affinity {cpus}, 1 thread); "
          f"best of {args.repeats}; numpy {np.__version__}, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(f"| computation | seconds | share of the {GOAL_SECONDS:g} s goal |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / GOAL_SECONDS:.2f} |")
    seconds = rows[0][1]
    print(f"\nGoal (μAP over {args.predictions:,} predictions < {GOAL_SECONDS:g} s on one core): "
          f"{'met' if seconds < GOAL_SECONDS else 'NOT met'} ({seconds:.3f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
