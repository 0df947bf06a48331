"""Memory of a DataLoader worker as the path list grows: a list of Path objects vs a PathTable, side by side.

    .venv/bin/python benchmarks/path_memory.py                     # 10k, 100k, 1M paths, 2 workers
    .venv/bin/python benchmarks/path_memory.py --sizes 10000 100000

Each run builds N synthetic paths (DISC21-like names; no files are read),
wraps them in a dataset whose items are the path's length, and iterates a
DataLoader (2 forked workers, batches of 1,024) over every index once. Then,
with the workers still alive, it reads each worker's unique set size (USS:
the memory no other process shares, i.e. the pages copy-on-write has
copied) and the parent's RSS. With a list, each item access touches a Path
object's reference count, so a worker ends up holding its own copy of the
pages it read. With a PathTable the paths are two numpy buffers that no
access writes to.
"""

from __future__ import annotations

import gc
import sys

import psutil
import torch
from torch.utils.data import DataLoader, Dataset

from embedlab.data.path_table import PathTable

from table import print_head, sizes_parser


class PathLengths(Dataset):
    def __init__(self, paths) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> int:
        return len(str(self.paths[index]))


def synthetic_paths(n: int) -> list:
    from pathlib import Path

    return [Path(f"data/raw/disc21/training/T{i:07d}.jpg") for i in range(n)]


def worker_uss_mb(paths, workers: int) -> tuple[float, float]:
    """(mean worker USS, parent RSS) in MiB after one pass over every index."""
    loader = DataLoader(PathLengths(paths), batch_size=1024, num_workers=workers, persistent_workers=True,
                        multiprocessing_context="fork")
    it = iter(loader)
    total = sum(int(batch.sum()) for batch in it)
    assert total > 0
    uss = [psutil.Process(w.pid).memory_full_info().uss for w in it._workers]  # workers still alive
    parent = psutil.Process().memory_info().rss
    del it, loader
    gc.collect()
    return sum(uss) / len(uss) / 2**20, parent / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = sizes_parser(__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print_head(f"DataLoader worker memory after one pass, {args.workers} forked workers",
               ["paths", "list of Path: worker USS MiB", "PathTable: worker USS MiB", "list / table",
                "list: USS bytes per path", "table: USS bytes per path"], versions=f", torch {torch.__version__}")
    for n in args.sizes:
        listed = synthetic_paths(n)
        list_uss, _ = worker_uss_mb(listed, args.workers)
        table = PathTable(listed)
        del listed
        gc.collect()
        table_uss, _ = worker_uss_mb(table, args.workers)
        print(f"| {n:,} | {list_uss:,.1f} | {table_uss:,.1f} | {list_uss / table_uss:.2f} | "
              f"{list_uss * 2**20 / n:,.0f} | {table_uss * 2**20 / n:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
