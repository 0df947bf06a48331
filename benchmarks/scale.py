"""Growth with the data: importing DISC21 into image stores, reading them, and DVC on them, at 10k / 100k / 1M.

    .venv/bin/python benchmarks/scale.py                           # 10k and 100k training + reference images
    .venv/bin/python benchmarks/scale.py --sizes 1000000           # 1M: about 2M files on disk, minutes

For each size N it builds a synthetic DISC21 download: N training and N
reference images, N/20 queries, and a ground truth for half the queries.
The images are hard links to 500 distinct 64×64 JPEGs, so building it is
cheap. Each measurement then runs in its own process, which reports its
time and peak RSS:
- `embedlab import disc21` (`import_disc21`): ids checked, every image
  decoded on every core, each part written as an image store;
- 20,000 random reads from the imported training store (`ImageStore[i]`);
- DVC on the imported layout in a fresh git repo (hardlink cache): `dvc add`
  of it, then a no-op `dvc status` of data.dvc plus three stages that depend
  on its parts (training, reference + query, all of it), as `dvc repro`
  checks before it runs anything. With ``--files-up-to N`` the same DVC
  steps also run on the layout as loose files (``--images hardlink``) for
  sizes up to N, side by side.
The goal is a cost per image and a memory that stay flat as N grows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import child_json  # noqa: E402
from table import print_head, sizes_parser  # noqa: E402
from store_formats import photo_crops  # noqa: E402

from embedlab.data.disc21_import import import_disc21  # noqa: E402

IMPORT = r"""
import json, resource, sys, time
from embedlab.data.disc21_import import import_disc21
start = time.perf_counter()
summary = import_disc21(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - start, "images": summary["training"] + summary["reference"]
                  + summary["query"], "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

READS = r"""
import json, resource, sys, time
import numpy as np
from embedlab.data.shards import ImageStore
store = ImageStore(sys.argv[1])
order = np.random.default_rng(0).integers(0, len(store), 20_000)
start = time.perf_counter()
for i in order:
    store[int(i)]
print(json.dumps({"reads_per_s": len(order) / (time.perf_counter() - start),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

STAGES = """stages:
  train:
    cmd: echo train
    deps: [data/disc/training]
  score:
    cmd: echo score
    deps: [data/disc/reference, data/disc/query]
  everything:
    cmd: echo all
    deps: [data/disc]
"""


def dvc_seconds(disc: Path, repo: Path) -> tuple[float, float]:
    """Seconds of `dvc add` of ``disc`` and of a no-op `dvc status` (data.dvc + three stages) in a fresh repo."""
    repo.mkdir()
    (repo / "data").mkdir()
    disc.rename(repo / "data" / "disc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [str(Path(sys.executable).parent / "dvc")]

    def call(*cmd: str) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
        return time.perf_counter() - start

    call("git", "init", "-q")
    call(*dvc, "init", "-q")
    call(*dvc, "config", "cache.type", "hardlink")
    call(*dvc, "config", "--local", "core.site_cache_dir", str(repo / ".site_cache"))
    (repo / "dvc.yaml").write_text(STAGES)
    added = call(*dvc, "add", "-q", "data/disc")
    call(*dvc, "commit", "-q", "-f")  # the stages' deps recorded: what a finished `dvc repro` leaves
    status = min(call(*dvc, "status") for _ in range(2))
    return added, status


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
    parser = sizes_parser(__doc__, default=(10_000, 100_000))
    parser.add_argument("--files-up-to", type=int, default=100_000,
                        help="also measure DVC on loose files for sizes up to this (default: 100000)")
    args = parser.parse_args(argv)
    print_head("Synthetic DISC21 downloads of 64×64 JPEGs",
               ["training + reference images", "import µs/image", "import peak RSS MiB", "store random reads/s",
                "dvc add, store (s)", "no-op dvc status, store (s)", "dvc add, files (s)",
                "no-op dvc status, files (s)"])
    with tempfile.TemporaryDirectory(prefix="scale_") as tmp:
        tmp = Path(tmp)
        (tmp / "distinct").mkdir()
        distinct = []
        for i, data in enumerate(photo_crops(500)):
            distinct.append(tmp / "distinct" / f"{i}.jpg")
            distinct[-1].write_bytes(data)
        for n in args.sizes:
            download, disc = tmp / f"download_{n}", tmp / f"disc_{n}"
            synthetic_download(download, n, distinct)
            imported = child_json(IMPORT, download, disc)
            reads = child_json(READS, disc / "training")
            store_add, store_status = dvc_seconds(disc, tmp / f"repo_store_{n}")
            files = "| – | – |"
            if n <= args.files_up_to:
                loose = tmp / f"loose_{n}"
                import_disc21(download, loose, images="hardlink")
                files_add, files_status = dvc_seconds(loose, tmp / f"repo_files_{n}")
                files = f"| {files_add:,.1f} | {files_status:,.1f} |"
            print(f"| {2 * n:,} | {imported['seconds'] / imported['images'] * 1e6:,.0f} | "
                  f"{imported['peak_mib']:,.0f} | {reads['reads_per_s']:,.0f} | {store_add:,.1f} | "
                  f"{store_status:,.1f} {files}", flush=True)
            for folder in tmp.iterdir():
                if folder.name != "distinct":
                    shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
