"""Growth of the decoder's photo list: `embedlab import pairs` of a table of N photos, and loading the list.

    .venv/bin/python benchmarks/photo_list.py                      # 10k, 100k and 1M rows (about 2 minutes)
    .venv/bin/python benchmarks/photo_list.py --sizes 10000000     # the original's 10.6M: several minutes

For each N it makes N photos (hard links to one small JPEG, 1,000 per person
folder) and a CSV table of them (path, person), then, each in its own
process: the import (`import_photo_table`: read, check every photo exists,
write photos.npz) and the load (`PhotoList.load`, then every path read
once). It prints time per row and peak RSS. The goal: both flat per row, and
memory of the list near the bytes of its paths, not of 10M Python strings.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import child_json  # noqa: E402
from table import print_head, sizes_parser  # noqa: E402
from store_formats import photo_crops  # noqa: E402

IMPORT = r"""
import json, resource, sys, time
from embedlab.data.photo_list import import_photo_table
start = time.perf_counter()
summary = import_photo_table(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - start, "rows": summary["photos"],
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

LOAD = r"""
import json, sys, time
from embedlab.data.photo_list import PhotoList
def rss_mib():  # the resident size now (the peak would include the imports)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
before = rss_mib()
start = time.perf_counter()
photos = PhotoList.load(sys.argv[1])
held = rss_mib() - before
total = sum(len(photos.paths[i].name) for i in range(len(photos)))
print(json.dumps({"seconds": time.perf_counter() - start, "rows": len(photos), "list_mib": held}))
"""


def photo_table(root: Path, n: int, jpeg: bytes) -> Path:
    (root / "photos").mkdir(parents=True)
    lines = ["path,person"]
    for i in range(n):
        if i % 50_000 == 0:  # a file takes at most 65,000 hard links on ext4
            source = root / f"source_{i}.jpg"
            source.write_bytes(jpeg)
        person = f"p{i // 1000:07d}"
        folder = root / "photos" / person
        if i % 1000 == 0:
            folder.mkdir()
        os.link(source, folder / f"{i % 1000}.jpg")
        lines.append(f"{person}/{i % 1000}.jpg,{person}")
    table = root / "photos.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    args = sizes_parser(__doc__).parse_args(argv)
    print_head("Photo tables of N rows (1,000 photos per person)",
               ["rows", "import µs/row", "import peak RSS MiB", "load + read every path µs/row", "loaded list MiB"])
    jpeg = next(iter(photo_crops(1)))
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="photo_list_") as tmp:
            table = photo_table(Path(tmp), n, jpeg)
            imported = child_json(IMPORT, table, Path(tmp) / "photos", Path(tmp) / "list")
            loaded = child_json(LOAD, Path(tmp) / "list")
            print(f"| {n:,} | {imported['seconds'] / n * 1e6:,.1f} | {imported['peak_mib']:,.0f} | "
                  f"{loaded['seconds'] / n * 1e6:,.1f} | {loaded['list_mib']:,.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
