"""Growth with the data: importing DISC21 and packing it into the image store at 10k / 100k / 1M images.

    .venv/bin/python benchmarks/scale.py                           # 10k and 100k training + reference images
    .venv/bin/python benchmarks/scale.py --sizes 1000000           # 1M: about 2M files on disk, minutes

For each size N it builds a synthetic DISC21 download: N training and N
reference images, N/20 queries, and a ground truth for half the queries.
The images are hard links to 500 distinct 64×64 JPEGs, so building it is
cheap. Each measurement then runs in its own process, which reports its
time and peak RSS:
- `embedlab import disc21` (`import_disc21`): ids checked, every image
  decoded on every core, the project's layout hard-linked;
- packing the imported training set into the image store (`write_store`),
  then 20,000 random reads (`ImageStore[i]`).
The goal is a cost per image and a memory that stay flat as N grows.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import child_json  # noqa: E402
from store_formats import photo_crops  # noqa: E402

IMPORT = r"""
import json, resource, sys, time
from embedlab.data.disc21_import import import_disc21
start = time.perf_counter()
summary = import_disc21(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - start, "images": summary["training"] + summary["reference"]
                  + summary["query"], "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PACK = r"""
import json, resource, sys, time
import numpy as np
from pathlib import Path
from embedlab.data.shards import ImageStore, write_store
paths = sorted(Path(sys.argv[1]).iterdir())
start = time.perf_counter()
write_store(sys.argv[2], ((p.stem, p.read_bytes()) for p in paths))
write = time.perf_counter() - start
store = ImageStore(sys.argv[2])
order = np.random.default_rng(0).integers(0, len(store), 20_000)
start = time.perf_counter()
for i in order:
    store[int(i)]
reads = len(order) / (time.perf_counter() - start)
print(json.dumps({"seconds": write, "images": len(paths), "reads_per_s": reads,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def synthetic_download(root: Path, n: int, distinct: list[Path]) -> None:
    for folder, prefix, count, digits in (("images/train", "T", n, 6), ("images/references", "R", n, 6),
                                          ("images/queries", "Q", max(n // 20, 2), 5)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            os.link(distinct[i % len(distinct)], root / folder / f"{prefix}{i:0{digits}d}.jpg")
    queries = max(n // 20, 2)
    rows = ["query_id,reference_id"] + [f"Q{i:05d},R{(i * 7) % n:06d}" for i in range(0, queries, 2)]
    (root / "public_ground_truth.csv").write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args(argv)
    print(f"Synthetic DISC21 downloads of 64×64 JPEGs; {os.cpu_count()} CPUs; Python {platform.python_version()}\n")
    print("| training + reference images | import µs/image | import peak RSS MiB | pack µs/image | "
          "pack peak RSS MiB | store random reads/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="scale_") as tmp:
        tmp = Path(tmp)
        (tmp / "distinct").mkdir()
        distinct = []
        for i, data in enumerate(photo_crops(500)):
            distinct.append(tmp / "distinct" / f"{i}.jpg")
            distinct[-1].write_bytes(data)
        for n in args.sizes:
            download, disc, store = tmp / f"download_{n}", tmp / f"disc_{n}", tmp / f"store_{n}"
            synthetic_download(download, n, distinct)
            imported = child_json(IMPORT, download, disc)
            packed = child_json(PACK, disc / "training", store)
            print(f"| {2 * n:,} | {imported['seconds'] / imported['images'] * 1e6:,.0f} | "
                  f"{imported['peak_mib']:,.0f} | {packed['seconds'] / packed['images'] * 1e6:,.0f} | "
                  f"{packed['peak_mib']:,.0f} | {packed['reads_per_s']:,.0f} |", flush=True)
            for folder in (download, disc, store):
                shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
