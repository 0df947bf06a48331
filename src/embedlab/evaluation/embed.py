"""Embed a folder of images into an ISC descriptor file (h5).

    embedlab embed --checkpoint models/drip/s1/checkpoints/last.ckpt \
        --images data/raw/disc/query --out query.h5

Works on any folder of images. Unreadable images fail the run, or with
``--on-bad-image skip`` are left out and counted in the summary.

Speed (see benchmarks/embed_throughput.py): loader workers hand over uint8
pixels (4× less to copy than float32) or, on the GPU decode path, the JPEG
bytes themselves; normalisation, resizing of GPU-decoded images and the model
run on the device, under bf16/fp16 autocast on a GPU by default, channels-last,
optionally ``torch.compile``d; descriptors stay on the device until a few
batches have gathered, so the CPU never waits for each batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from embedlab.data.decode import decode_resize, read_encoded, resolve_decode
from embedlab.data.path_table import path_table
from embedlab.data.transforms import normalize_uint8, to_uint8
from embedlab.descriptor_chunks import Chunk, ChunkedDescriptors, check_names, images_digest, weights_digest
from embedlab.config import RuntimeConfig
from embedlab.devices import autocast_dtype, check_devices, runtime_loader_options, torch_device
from embedlab.images import list_images, load_or_skip
from embedlab.models.checkpoints import load_descriptor_model
from embedlab.models.eval_mode import eval_mode

log = logging.getLogger(__name__)

_FLUSH_EVERY = 16  # batches of descriptors kept on the device before one copy to the host


class ImageFiles(Dataset):
    """Items ``(kind, data, index)``: ``pixels`` (uint8 [3, S, S], Pillow), ``encoded``
    (JPEG bytes for the batched decoder, when ``encoded``) or ``None`` (skipped)."""

    def __init__(self, paths: Sequence[Path], img_size: int, on_bad_image: str, encoded: bool = False) -> None:
        self.paths, self.img_size, self.on_bad_image = path_table(paths), img_size, on_bad_image
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        if self.encoded:
            data = read_encoded(self.paths[index])
            if data is not None:
                return "encoded", data, index
        img = load_or_skip(self.paths[index], self.on_bad_image)
        if img is None:
            return None, None, index
        return "pixels", to_uint8(img, self.img_size), index


class Batch(NamedTuple):
    pixels: torch.Tensor | None  # uint8 [n, 3, S, S], decoded by Pillow in the workers
    pixel_index: list[int]
    # JPEG bytes for the batched decoder, concatenated: one shared-memory buffer per batch
    # (a tensor per file would hold hundreds of file descriptors open between processes).
    encoded: torch.Tensor | None
    encoded_lengths: list[int]
    encoded_index: list[int]
    skipped: list[int]

    def pin_memory(self) -> "Batch":
        """Pin the pixels only: nvJPEG reads the JPEG bytes from pageable memory itself."""
        return self._replace(pixels=None if self.pixels is None else self.pixels.pin_memory())


def _collate(items) -> Batch:
    pixels = [(d, i) for kind, d, i in items if kind == "pixels"]
    encoded = [(d, i) for kind, d, i in items if kind == "encoded"]
    return Batch(
        torch.stack([d for d, _ in pixels]) if pixels else None, [i for _, i in pixels],
        torch.cat([d for d, _ in encoded]) if encoded else None, [len(d) for d, _ in encoded],
        [i for _, i in encoded], [i for kind, _, i in items if kind is None],
    )


def _device_images(batch: Batch, paths: Sequence[Path], img_size: int, on_bad_image: str, dev: torch.device,
                   decode_dev: torch.device | None) -> tuple[torch.Tensor | None, list[int], list[int]]:
    """Normalised float images on ``dev`` in file order, their path indices, and skipped indices."""
    parts: list[torch.Tensor] = []
    index: list[int] = []
    skipped = list(batch.skipped)
    if batch.pixels is not None:
        parts.append(batch.pixels.to(dev, non_blocking=True))
        index.extend(batch.pixel_index)
    if batch.encoded is not None:
        encoded = torch.split(batch.encoded, batch.encoded_lengths)
        for i, img in zip(batch.encoded_index, decode_resize(encoded, img_size, decode_dev or dev)):
            if img is None:  # the batched decoder refused it: Pillow, with the usual bad-image policy
                log.debug("%s: batched JPEG decode failed, decoding with Pillow", paths[i])
                pil = load_or_skip(paths[i], on_bad_image)
                if pil is None:
                    skipped.append(i)
                    continue
                img = to_uint8(pil, img_size).to(dev)
            parts.append(img.to(dev)[None])
            index.append(i)
    if not parts:
        return None, [], skipped
    images = torch.cat(parts) if len(parts) > 1 else parts[0]
    if batch.encoded is not None and batch.pixels is not None:  # back to file order, as the Pillow path gives it
        order = sorted(range(len(index)), key=index.__getitem__)
        images = images[torch.as_tensor(order, device=images.device)]
        index = [index[j] for j in order]
    return normalize_uint8(images), index, skipped


@dataclasses.dataclass
class Embeddings:
    names: list[str]
    vectors: np.ndarray
    skipped: list[Path]
    kept: list[int] = dataclasses.field(default_factory=list)  # index into the paths of each vector
    seconds: float = 0.0  # from the first batch requested to the last descriptor on the host
    settings: dict = dataclasses.field(default_factory=dict)  # precision, decode, workers as resolved


@dataclasses.dataclass
class _Plan:
    """How an embedding runs: the runtime section resolved for this machine and model."""

    dev: torch.device
    size: int
    dtype: torch.dtype | None
    decode_dev: torch.device | None
    options: dict
    batch_size: int
    compile: bool
    channels_last: bool

    @classmethod
    def of(cls, model: torch.nn.Module, img_size: int | None, runtime: RuntimeConfig) -> "_Plan":
        dev = torch_device(runtime.device)
        return cls(dev, img_size or model.spec.img_size, autocast_dtype(runtime.precision, dev),
                   resolve_decode(runtime.decode, dev), runtime_loader_options(runtime, keep_workers=False),
                   runtime.inference_batch_size, runtime.compile, runtime.channels_last)

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def settings(self) -> dict:
        return {"device": str(self.dev), "img_size": self.size, "precision": self.precision,
                "decode": "cpu" if self.decode_dev is None else "gpu",
                "num_workers": self.options["num_workers"], "compile": self.compile}


@torch.no_grad()
def _embedding_chunks(model: torch.nn.Module, paths: Sequence[Path], plan: _Plan, on_bad_image: str,
                      progress: bool | str, start: int = 0, end: int | None = None) -> Iterator[Chunk]:
    """Descriptors of ``paths[start:end]`` in chunks of ``_FLUSH_EVERY`` batches of consecutive inputs.

    The loader is iterated once, so its workers are never kept alive between passes.
    """
    was_channels_last = getattr(model, "channels_last", None)
    if was_channels_last is not None:
        model.use_channels_last(plan.channels_last)
    model.to(plan.dev)
    forward = torch.compile(model, dynamic=False) if plan.compile else model
    end = len(paths) if end is None else end
    batch_size, todo = plan.batch_size, path_table(paths)[start:end]
    loader = DataLoader(ImageFiles(todo, plan.size, on_bad_image, encoded=plan.decode_dev is not None),
                        batch_size=batch_size, collate_fn=_collate, **plan.options)
    pending: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[int] = []
    chunk_start = start
    try:
        with eval_mode(model):
            bar = tqdm(loader, desc=progress if isinstance(progress, str) else "embed", unit="batch",  # str: title
                       disable=not progress, leave=False,
                       total=-(-len(todo) // batch_size))
            for number, batch in enumerate(bar):
                images, kept_here, bad = _device_images(batch, todo, plan.size, on_bad_image, plan.dev,
                                                        plan.decode_dev)
                skipped.extend(start + i for i in bad)
                if images is not None:
                    n = images.shape[0]
                    if plan.compile and n < batch_size:  # one graph for every batch: pad the short last one
                        images = torch.cat([images, images.new_zeros((batch_size - n, *images.shape[1:]))])
                    with torch.autocast(plan.dev.type, dtype=plan.dtype or torch.float32,
                                        enabled=plan.dtype is not None):
                        vectors = forward(images)
                    pending.append(vectors[:n].float())
                    kept.extend(start + i for i in kept_here)
                stop = min(start + (number + 1) * batch_size, end)
                if (number + 1) % _FLUSH_EVERY == 0 or stop == end:
                    vectors = (torch.cat(pending).cpu().numpy() if pending
                               else np.zeros((0, model.descriptor_dim), np.float32))
                    yield Chunk(chunk_start, stop, [Path(paths[i]).stem for i in kept], vectors, skipped, kept)
                    pending, kept, skipped, chunk_start = [], [], [], stop
    finally:
        if was_channels_last is not None:
            model.use_channels_last(was_channels_last)


def embed_paths(model: torch.nn.Module, paths: Sequence[Path], img_size: int | None = None,
                on_bad_image: str = "fail", runtime: RuntimeConfig | None = None,
                progress: bool = True) -> Embeddings:
    """Descriptors of ``paths`` in memory (names are file stems, e.g. Q00000), run as ``runtime`` says.

    ``runtime`` (params.yaml's section; default: its defaults): device,
    precision (autocast; auto: bf16/fp16 on a GPU, fp32 on the CPU),
    channels_last, compile (a one-off compile, then faster batches; the last
    batch is padded so no second graph is compiled), decode (see
    :mod:`embedlab.data.decode`), loader workers and ``inference_batch_size``.
    For sets too large to hold, :func:`embed_to_file` writes chunk by chunk.
    """
    plan = _Plan.of(model, img_size, runtime or RuntimeConfig())
    start = time.perf_counter()
    chunks = list(_embedding_chunks(model, paths, plan, on_bad_image, progress))
    seconds = time.perf_counter() - start
    vectors = (np.concatenate([c.vectors for c in chunks]) if chunks
               else np.zeros((0, model.descriptor_dim), np.float32))
    return Embeddings([n for c in chunks for n in c.names], np.ascontiguousarray(vectors, dtype=np.float32),
                      [Path(paths[i]) for c in chunks for i in c.skipped], [i for c in chunks for i in c.kept],
                      seconds, plan.settings())


def process_ranges(n: int, processes: int) -> list[tuple[int, int]]:
    """``processes`` contiguous (start, end) ranges of ``n`` inputs, sizes differing by at most one."""
    bounds = np.linspace(0, n, processes + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _process_device(runtime: RuntimeConfig, rank: int) -> str:
    device = torch_device(runtime.device)
    return f"cuda:{rank}" if device.type == "cuda" else str(device)


def _embed_range(rank: int, model: torch.nn.Module, paths: list[Path], parts: ChunkedDescriptors,
                 img_size: int | None, on_bad_image: str, runtime: RuntimeConfig, ranges: list[tuple[int, int]]) -> None:
    """One process of a multi-process embedding: its range of inputs, on its own GPU, into the shared parts."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(ranges)))
    plan = _Plan.of(model, img_size, dataclasses.replace(runtime, device=_process_device(runtime, rank)))
    start, end = ranges[rank]
    at = parts.resume(start, end)
    if at < end:
        for chunk in _embedding_chunks(model, paths, plan, on_bad_image, False, at, end):
            parts.write(chunk)


def _embed_in_processes(model: torch.nn.Module, paths: list[Path], parts: ChunkedDescriptors,
                        img_size: int | None, on_bad_image: str, runtime: RuntimeConfig, processes: int) -> int:
    """Embed ``paths`` in ``processes`` processes (one per GPU, or CPU processes), each a contiguous range whose
    chunks continue where the next range starts, so the chunks of all ranges chain into one file. Each range
    resumes after its own last complete chunk. Returns the inputs already embedded before this run."""
    import torch.multiprocessing as mp

    check_devices(dataclasses.replace(runtime, devices=processes))
    ranges = process_ranges(len(paths), processes)
    before = sum(parts.resume(start, end) - start for start, end in ranges)
    mp.spawn(_embed_range, args=(model.cpu(), paths, parts, img_size, on_bad_image, runtime, ranges),
             nprocs=processes, join=True)
    return before


def embed_to_file(model: torch.nn.Module, paths: Sequence[Path], out: str | Path, img_size: int | None = None,
                  on_bad_image: str = "fail", runtime: RuntimeConfig | None = None,
                  progress: bool | str = True, processes: int = 1) -> Embeddings:
    """Embed ``paths`` into the h5 ``out`` chunk by chunk (:mod:`embedlab.descriptor_chunks`).

    Memory holds one chunk of descriptors, whatever the number of images; a run
    killed part-way resumes after its last complete chunk when rerun with the
    same images, weights, image size and precision. ``processes`` > 1 splits
    the images over that many processes (one per GPU; the file is the same).
    The returned Embeddings hold the names, skipped paths and settings, not
    the vectors (read ``out``).
    """
    out = Path(out)
    paths = list(paths)
    check_names(out, paths)
    runtime = runtime or RuntimeConfig()
    plan = _Plan.of(model, img_size, runtime)
    parts = ChunkedDescriptors(out, {"images": images_digest(paths), "count": len(paths),
                                     "weights": weights_digest(model), "img_size": plan.size,
                                     "precision": plan.precision})
    start, resumed_after = time.perf_counter(), parts.resume()
    if processes > 1:
        resumed_after = _embed_in_processes(model, paths, parts, img_size, on_bad_image, runtime, processes)
    else:
        for chunk in _embedding_chunks(model, paths, plan, on_bad_image, progress, resumed_after):
            parts.write(chunk)
    seconds = time.perf_counter() - start
    rows, skipped = parts.finish(len(paths), model.descriptor_dim)
    return Embeddings([], np.zeros((0, model.descriptor_dim), np.float32), [Path(paths[i]) for i in skipped],
                      [], seconds, {**plan.settings(), "vectors": rows, "resumed_after": resumed_after})


def embed_folder(checkpoint: str | Path, images: str | Path, out: str | Path, img_size: int | None = None,
                 on_bad_image: str = "fail", runtime: RuntimeConfig | None = None, progress: bool = True) -> dict:
    """Embed every image of ``images`` with ``checkpoint`` and write ``out`` (h5), resumably, in
    ``runtime.devices`` processes (one per GPU)."""
    if img_size is not None and img_size < 1:
        raise ValueError(f"img_size (--img-size) must be at least 1 pixel, got {img_size}")
    start = time.perf_counter()
    model = load_descriptor_model(checkpoint)
    paths = list_images(images)
    processes = runtime.devices if runtime is not None else 1
    result = embed_to_file(model, paths, out, img_size, on_bad_image, runtime, progress, processes)
    for path in result.skipped:
        log.warning("skipped unreadable image %s", path)
    seconds = time.perf_counter() - start
    settings = dict(result.settings)
    rows = settings.pop("vectors")
    return {
        "out": str(out),
        "images": rows,
        "skipped": len(result.skipped),
        "dim": int(model.descriptor_dim),
        **settings,  # resumed_after: images a killed earlier run had embedded already
        "seconds": round(seconds, 3),  # the whole call: model loading, embedding, writing the h5
        "embed_seconds": round(result.seconds, 3),  # the loader + model loop alone
        "images_per_s": round((len(paths) - settings["resumed_after"]) / max(seconds, 1e-9), 1),
    }
