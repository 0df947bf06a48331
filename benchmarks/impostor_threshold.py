"""Seconds and peak memory of the decoder's threshold (impostor scores at an FMR) as templates and FMR vary.

    .venv/bin/python benchmarks/impostor_threshold.py                          # 20,000 templates × 512-d
    .venv/bin/python benchmarks/impostor_threshold.py --templates 5000 --fmr 1e-3

Seeded random unit templates, ``--per-person`` each, through
``evaluation.decoder_cosine.impostor_threshold`` (what the decoder stage
runs). Each FMR runs in its own process; the figure is its peak RSS above
the RSS after the templates were made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import child_json  # noqa: E402
from table import print_head  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import numpy as np
from embedlab.data.templates import TemplateSet
from embedlab.evaluation.decoder_cosine import impostor_threshold

n, per, dim, fmr = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
ts = TemplateSet.from_rows([str(i) for i in range(n)], [f"p{i // per}" for i in range(n)], x)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
threshold, used = impostor_threshold(ts, fmr)
print(json.dumps({"threshold": threshold, "pairs": used, "seconds": time.perf_counter() - start,
                  "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", type=int, default=20_000)
    parser.add_argument("--per-person", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--fmr", type=float, nargs="+", default=[1e-3, 1e-6])
    args = parser.parse_args(argv)
    print_head(f"{args.templates:,} templates × {args.dim}-d, {args.per_person} per person",
               ["FMR", "pairs scored", "threshold", "seconds", "peak RSS above the start MiB"], left=["FMR"])
    for fmr in args.fmr:
        r = child_json(CHILD, args.templates, args.per_person, args.dim, fmr)
        print(f"| {fmr:g} | {r['pairs']:,} | {r['threshold']:.4f} | {r['seconds']:.1f} | {r['peak_mib']:,.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
