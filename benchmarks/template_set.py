"""Growth of the decoder's template set: reading N templates back, and the impostor threshold at FMR 1e-6.

    .venv/bin/python benchmarks/template_set.py                    # 10k, 100k and 1M templates (about 2 minutes)
    .venv/bin/python benchmarks/template_set.py --dim 512          # the buffalo_l size (2 GB of h5 at 1M)

For each N it writes a templates split as the templates stage does (an h5
of N unit vectors named by photo path, a CSV of path,person; 20 photos per
person), then in a fresh process reads it with `read_template_set` (the
names compared with the table slice by slice, every template checked
through a map of the file) and computes `impostor_threshold` at FMR 1e-6
(1e8 impostor pairs). It prints time per template and the process's private
memory (RssAnon: the map's pages belong to the page cache, not to the
process), and beside it what the same paths and persons cost as Python
lists of strings (what the set held before it kept them as arrays).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import child_json  # noqa: E402
from table import print_head, sizes_parser  # noqa: E402

READ = r"""
import json, sys, time
import pyarrow, pyarrow.csv, pyarrow.compute, h5py, torch  # loaded before the baseline: their code is not data
from embedlab.data.templates import read_template_set
from embedlab.evaluation.decoder_cosine import impostor_threshold
def anon_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024
base = anon_mib()
start = time.perf_counter()
ts = read_template_set(sys.argv[1], "train")
read_s = time.perf_counter() - start

held = anon_mib() - base
start = time.perf_counter()
threshold, pairs = impostor_threshold(ts, 1e-6)
threshold_s, after = time.perf_counter() - start, anon_mib() - base
before = anon_mib()
as_lists = ([str(p) for p in ts.paths], [ts.person_name(i) for i in range(len(ts))])
print(json.dumps({"read_s": read_s, "held_mib": held, "threshold_s": threshold_s, "after_mib": after,
                  "pairs": pairs, "lists_mib": anon_mib() - before}))
"""


def write_split(folder: Path, n: int, dim: int) -> None:
    """``train.h5`` and ``train.csv`` of ``n`` random unit templates, written a block at a time."""
    import h5py

    rng = np.random.default_rng(0)
    paths = [f"train/images/p{i // 20:07d}/{i % 20}.jpg" for i in range(n)]
    with h5py.File(folder / "train.h5", "w") as f:
        vectors = f.create_dataset("vectors", (n, dim), np.float32)
        f.create_dataset("image_names", data=np.array(paths, dtype=bytes))
        for start in range(0, n, 100_000):
            block = rng.standard_normal((min(100_000, n - start), dim)).astype(np.float32)
            vectors[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    (folder / "train.csv").write_text("path,person\n" + "".join(f"{p},{p.split('/')[2]}\n" for p in paths))


def main(argv: list[str] | None = None) -> int:
    parser = sizes_parser(__doc__)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args(argv)
    print_head(f"Template sets of N templates ({args.dim}-d, 20 per person)",
               ["templates", "read µs/template", "held after read MiB", "threshold at FMR 1e-6 s",
                "pairs scored", "held after threshold MiB", "same as Python lists MiB"])
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="template_set_") as tmp:
            write_split(Path(tmp), n, args.dim)
            got = child_json(READ, tmp)
        print(f"| {n:,} | {got['read_s'] / n * 1e6:,.2f} | {got['held_mib']:,.1f} | {got['threshold_s']:,.1f} | "
              f"{got['pairs']:,} | {got['after_mib']:,.1f} | {got['lists_mib']:,.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
