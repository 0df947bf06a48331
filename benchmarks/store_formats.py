"""Image-set storage formats side by side: write cost, files for DVC, and random-access reads per worker.

    .venv/bin/python benchmarks/store_formats.py                       # 10k and 100k images
    PYTHONPATH=/path/to/libs .venv/bin/python benchmarks/store_formats.py --sizes 10000

Each format stores the same N small JPEGs (seeded 64×64 crops of
scikit-image's photos, about 2 KB each; keys I0000000...). One process then
reads ``--reads`` random indices (seeded), the access pattern of P×K
sampling and of DDP samplers, and gets each image's bytes. The page cache
is warm (the files were just written), so this measures what each format
costs per read, not the disk. "files" is what DVC hashes, links and pushes:
`dvc add` on the loose folder and on the embedlab shards measures that cost.

Formats (those whose package is not installed are reported as such):
- loose JPEG files, one per image (the layout before the store);
- embedlab shards: tar shards of 10k + index.npz, ``pread`` by index
  (:mod:`embedlab.data.shards`);
- webdataset tar shards read by index with wids (``ShardListDataset``);
- HDF5: one file, a variable-length uint8 dataset;
- Parquet: a binary column, row groups of 1,000;
- litdata (``optimize`` chunks, ``StreamingDataset[i]``);
- mosaicml-streaming (MDS shards, ``StreamingDataset[i]``).
The last three need their packages (not dependencies of embedlab: `pip
install webdataset wids litdata mosaicml-streaming` into a separate
target; streaming pins numpy<2.2 and imports transformers<5).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from embedlab.data.shards import ImageStore, write_store

from table import print_head, sizes_parser

Writer = Callable[[Path, list[tuple[str, bytes]]], Callable[[int], bytes]]


def photo_crops(n_distinct: int, seed: int = 0) -> list[bytes]:
    """Distinct small JPEGs: seeded 64×64 crops of scikit-image's bundled photos."""
    from skimage import data

    photos = [np.asarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_distinct):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
        buf = io.BytesIO()
        Image.fromarray(photo[y:y + 64, x:x + 64]).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def loose(root: Path, items):
    root.mkdir()
    for key, data in items:
        (root / f"{key}.jpg").write_bytes(data)
    keys = [k for k, _ in items]
    return lambda i: (root / f"{keys[i]}.jpg").read_bytes()


def embedlab_shards(root: Path, items):
    write_store(root, items)
    store = ImageStore(root)
    return store.__getitem__


def wids_shards(root: Path, items):
    import webdataset
    import wids

    root.mkdir()
    with webdataset.ShardWriter(str(root / "shard-%06d.tar"), maxcount=10_000, verbose=0) as sink:
        for key, data in items:
            sink.write({"__key__": key, "jpg": data})
    shards = [{"url": str(p), "nsamples": min(10_000, len(items) - 10_000 * n)}
              for n, p in enumerate(sorted(root.glob("*.tar")))]
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # wids prints a line per dataset
        ds = wids.ShardListDataset(shards, transformations=[], localname=lambda url: url)
    return lambda i: ds[i][".jpg"].getvalue()  # a BytesIO over the member's bytes


def hdf5(root: Path, items):
    import h5py

    root.mkdir()
    with h5py.File(root / "images.h5", "w") as f:
        ds = f.create_dataset("jpg", (len(items),), dtype=h5py.vlen_dtype(np.uint8))
        for start in range(0, len(items), 10_000):
            part = items[start:start + 10_000]
            ds[start:start + len(part)] = [np.frombuffer(d, np.uint8) for _, d in part]
    f = h5py.File(root / "images.h5", "r")
    return lambda i: f["jpg"][i].tobytes()


def parquet(root: Path, items):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    table = pa.table({"key": [k for k, _ in items], "jpg": pa.array([d for _, d in items], pa.binary())})
    # No dictionary or compression: JPEG bytes do not compress, and the cycled test images would dedupe.
    pq.write_table(table, root / "images.parquet", row_group_size=1000, use_dictionary=False, compression="none")
    f = pq.ParquetFile(root / "images.parquet")
    return lambda i: f.read_row_group(i // 1000, columns=["jpg"]).column(0)[i % 1000].as_py()


def litdata_chunks(root: Path, items):
    import litdata

    data = [d for _, d in items]
    litdata.optimize(fn=_litdata_item(data), inputs=list(range(len(data))), output_dir=str(root),
                     chunk_bytes="64MB", num_workers=1, mode="overwrite")
    ds = litdata.StreamingDataset(str(root))
    return lambda i: ds[i]["jpg"]


class _litdata_item:
    def __init__(self, data: list[bytes]) -> None:
        self.data = data

    def __call__(self, i: int) -> dict:
        return {"jpg": self.data[i]}


def mosaic_mds(root: Path, items):
    from streaming import MDSWriter, StreamingDataset

    with MDSWriter(out=str(root), columns={"key": "str", "jpg": "bytes"}, size_limit="64mb") as out:
        for key, data in items:
            out.write({"key": key, "jpg": data})
    ds = StreamingDataset(local=str(root), shuffle=False, batch_size=1)
    return lambda i: ds.get_item(i)["jpg"]


FORMATS: dict[str, Writer] = {
    "loose JPEG files": loose, "embedlab shards (tar + index)": embedlab_shards,
    "webdataset tar + wids": wids_shards, "HDF5 (vlen bytes)": hdf5, "Parquet (binary column)": parquet,
    "litdata": litdata_chunks, "mosaicml-streaming (MDS)": mosaic_mds,
}


def dvc_add_seconds(folder: Path) -> float:
    """``dvc add`` of ``folder`` in a fresh git + DVC repo beside it (its cache on the same disk)."""
    repo = folder.parent / f"dvc_{folder.name}"
    repo.mkdir()
    # The venv's dvc, whether or not the venv is on PATH.
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "config", "--local", "core.site_cache_dir", str(repo / ".site")]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    folder.rename(repo / "data")
    start = time.perf_counter()
    subprocess.run(["dvc", "add", "-q", "data"], cwd=repo, check=True, env=env)
    seconds = time.perf_counter() - start
    (repo / "data").rename(folder)
    shutil.rmtree(repo)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = sizes_parser(__doc__, default=(10_000, 100_000))
    parser.add_argument("--reads", type=int, default=20_000, help="random reads per format")
    parser.add_argument("--dvc", action="store_true", help="also time `dvc add` of the loose folder and the shards")
    args = parser.parse_args(argv)
    distinct = photo_crops(500)
    print_head(f"{len(distinct)} distinct 64×64 JPEGs of {np.mean([len(d) for d in distinct]):,.0f} bytes on "
               "average, cycled; one reading process, warm page cache",
               ["images", "format", "write µs/image", "files", "MiB", "random reads/s (1 process)", "dvc add s"],
               left=["format"])
    for n in args.sizes:
        items = [(f"I{i:07d}", distinct[i % len(distinct)]) for i in range(n)]
        order = np.random.default_rng(1).integers(0, n, args.reads)
        for name, writer in FORMATS.items():
            with tempfile.TemporaryDirectory(prefix="store_bench_") as tmp:
                root = Path(tmp) / "set"
                try:
                    start = time.perf_counter()
                    read = writer(root, items)
                    write = time.perf_counter() - start
                except ImportError as err:
                    print(f"| {n:,} | {name} | not installed ({err.name}) | | | | |", flush=True)
                    continue
                files = [p for p in root.rglob("*") if p.is_file()]
                assert read(int(order[0])) == items[int(order[0])][1], name
                start = time.perf_counter()
                for i in order:
                    read(int(i))
                rate = len(order) / (time.perf_counter() - start)
                dvc = (f"{dvc_add_seconds(root):.1f}" if args.dvc and name in ("loose JPEG files",
                                                                             "embedlab shards (tar + index)")
                       else "")
                print(f"| {n:,} | {name} | {write / n * 1e6:,.0f} | {len(files):,} | "
                      f"{sum(p.stat().st_size for p in files) / 2**20:,.1f} | {rate:,.0f} | {dvc} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
