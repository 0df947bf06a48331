"""Exact inner-product nearest-neighbour search: faiss on the CPU, faiss-gpu or torch on a CUDA GPU.

Descriptors are expected L2-normalised, so inner product = cosine similarity.
On a CUDA machine without faiss-gpu (the faiss-gpu wheels need CUDA 12
libraries; many machines carry only torch's), the search runs as blocked
matrix products and top-k in torch on the GPU: the same exact results.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from embedlab.descriptors import DescriptorReader, rows_per_slice

# faiss GPU flat search supports at most this k (GpuIndexFlat limit).
GPU_MAX_K = 2048


class Predictions(NamedTuple):
    """Predicted (query, reference, score) triples as parallel arrays."""

    query_ids: np.ndarray
    reference_ids: np.ndarray
    scores: np.ndarray


def _faiss():
    import faiss  # imported lazily: heavy, and only needed for search

    return faiss


def faiss_gpus() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str = "auto") -> str:
    """Return "cuda" or "cpu" for ``device`` in {"auto", "cuda", "cpu"}."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    if device == "cpu":
        return "cpu"
    if faiss_gpus() > 0 or _torch_cuda():
        return "cuda"
    if device == "cuda":
        raise RuntimeError(
            "device='cuda' but there is no GPU to search on (faiss.get_num_gpus() == 0 and "
            "torch.cuda.is_available() is False): use device='cpu' / 'auto' or a CUDA machine"
        )
    return "cpu"


def search_backend(device: str = "auto") -> str:
    """Which code searches on ``device``: "faiss-cpu", "faiss-gpu" or "torch-cuda"."""
    if resolve_device(device) == "cpu":
        return "faiss-cpu"
    return "faiss-gpu" if faiss_gpus() > 0 else "torch-cuda"


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N x D), got shape {x.shape}")
    # faiss needs float32 C-contiguous memory; this is a no-op when already so.
    return np.ascontiguousarray(x, dtype=np.float32)


class _Rows:
    """Reference rows: an N x D array, or a :class:`~embedlab.descriptors.DescriptorReader` read slice by slice."""

    def __init__(self, reference) -> None:
        if hasattr(reference, "slices"):
            self.source, self.shape = reference, (len(reference), reference.dim)
        else:
            self.source = _as_matrix(reference, "reference")
            self.shape = self.source.shape

    def slices(self) -> Iterator[tuple[int, np.ndarray]]:
        rows = rows_per_slice(self.shape[1])
        if isinstance(self.source, np.ndarray):
            for start in range(0, self.shape[0], rows):
                yield start, self.source[start:start + rows]
        else:
            yield from self.source.slices(rows)

    @property
    def n_slices(self) -> int:
        return -(-self.shape[0] // rows_per_slice(self.shape[1]))


def knn_search(
    query: np.ndarray,
    reference: np.ndarray | DescriptorReader,
    k: int,
    device: str = "auto",
    batch_size: int = 16384,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search of ``query`` rows among ``reference`` rows.

    Returns ``(scores, indices)``, both of shape ``(n_query, min(k, n_reference))``,
    each row sorted by decreasing score. faiss marks missing neighbours with
    index -1; with an exact index and k clipped to the reference count this
    only happens for non-finite vectors, and :func:`predictions_from_knn`
    drops such entries. Queries are searched in batches of ``batch_size``
    (bounded memory, and a progress bar when ``progress``). A
    DescriptorReader as ``reference`` goes into the index slice by slice, so
    memory holds the index and one slice, not a second copy of the references.
    """
    q = _as_matrix(query, "query")
    r = _Rows(reference)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != reference dim {r.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if r.shape[0] == 0:
        raise ValueError("reference set is empty: nothing to search")
    k = min(int(k), r.shape[0])
    if q.shape[0] == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

    backend = search_backend(device)
    if backend == "torch-cuda":
        return torch_knn_search(q, r, k, "cuda", batch_size, progress)
    if backend == "faiss-cpu":
        return _blocked_cpu_search(q, r, k, progress)
    faiss = _faiss()
    if k > GPU_MAX_K:
        if device == "cuda":
            raise ValueError(f"k={k} exceeds the faiss GPU limit of {GPU_MAX_K}; use device='cpu'")
        return _blocked_cpu_search(q, r, k, progress)  # device="auto" with a huge k: the CPU rather than fail
    index = on_all_gpus(faiss.IndexFlatIP(r.shape[1]))
    for _, part in r.slices():  # into the GPUs' shards slice by slice: no whole copy in host memory
        index.add(part)
    return _search_in_batches(q, k, batch_size, progress, lambda batch: index.search(batch, k))


def on_all_gpus(index, fp16: bool = False):
    """``index`` (faiss, CPU) sharded over every GPU: each holds 1/N of the vectors (fp16: half the bytes), so
    references beyond one GPU's memory fit and every GPU searches its share. A fp16 scalar-quantised flat
    index (which faiss has no GPU kernel for) becomes a fp16 GPU flat index of its decoded vectors."""
    faiss = _faiss()
    options = faiss.GpuMultipleClonerOptions()
    options.shard, options.useFloat16 = True, fp16
    if isinstance(index, faiss.IndexScalarQuantizer):
        options.useFloat16 = True
        gpu = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(index.d, index.metric_type), co=options)
        step = rows_per_slice(index.d)
        for start in range(0, index.ntotal, step):
            gpu.add(index.reconstruct_n(start, min(step, index.ntotal - start)))
        return gpu
    return faiss.index_cpu_to_all_gpus(index, co=options)


def _search_in_batches(q: np.ndarray, k: int, batch_size: int, progress: bool,
                       search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``search`` (a batch of queries -> its scores and indices) over ``q`` in batches of ``batch_size``."""
    scores = np.empty((q.shape[0], k), np.float32)
    indices = np.empty((q.shape[0], k), np.int64)
    for start in _progress(range(0, q.shape[0], batch_size), progress, "batch"):
        stop = min(start + batch_size, q.shape[0])
        scores[start:stop], indices[start:stop] = search(q[start:stop])
    return scores, indices


def _progress(items: Iterable, progress: bool, unit: str, total: int | None = None) -> Iterable:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="knn search", unit=unit, total=total)


def _blocked_cpu_search(q: np.ndarray, r: _Rows, k: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """faiss's exact kNN of all queries against one slice of references at a time, merged into a running top-k.

    Memory holds one reference slice and the queries' top-k, never the whole
    reference set (an index would hold a copy of it, and more while it grows).
    """
    faiss = _faiss()
    scores = np.full((q.shape[0], k), -np.inf, np.float32)
    indices = np.full((q.shape[0], k), -1, np.int64)
    for first, part in _progress(r.slices(), progress, "slice", r.n_slices):
        s, i = faiss.knn(q, part, min(k, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
        i = np.where(i >= 0, i + first, -1)
        both_s, both_i = np.concatenate([scores, s], 1), np.concatenate([indices, i], 1)
        # Stable: among equal scores the earlier reference stays first, as one index over all would order them.
        order = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
        scores, indices = np.take_along_axis(both_s, order, 1), np.take_along_axis(both_i, order, 1)
    return scores, indices


def torch_knn_search(
    q: np.ndarray,
    r: np.ndarray | DescriptorReader | _Rows,
    k: int,
    device: str,
    batch_size: int = 16384,
    progress: bool = False,
    reference_block: int = 1 << 18,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_search` in torch (float32, no TF32): blocked ``q @ r.T`` and top-k.

    GPU memory is bounded by the reference set plus one ``batch_size`` ×
    ``reference_block`` score block (4 GiB at the defaults), whatever the sizes.
    Ties are broken as torch.topk breaks them, which may differ from faiss.
    """
    import torch

    dev = torch.device(device)
    rows = r if isinstance(r, _Rows) else _Rows(r)
    # TF32 would round the scores to 10 mantissa bits: not an exact search.
    with _no_tf32(torch):
        ref = torch.empty(rows.shape, dtype=torch.float32, device=dev)
        for first, part in rows.slices():
            ref[first:first + len(part)] = torch.from_numpy(part).to(dev)

        def search(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            query = torch.from_numpy(batch).to(dev)
            best_s, best_i = None, None
            for first in range(0, ref.shape[0], reference_block):
                block = query @ ref[first:first + reference_block].T
                s, i = block.topk(min(k, block.shape[1]), dim=1)
                i += first
                if best_s is None:
                    best_s, best_i = s, i
                else:
                    s, pick = torch.cat([best_s, s], 1).topk(k, dim=1)
                    best_s, best_i = s, torch.cat([best_i, i], 1).gather(1, pick)
            return best_s.cpu().numpy(), best_i.cpu().numpy()

        return _search_in_batches(q, k, batch_size, progress, search)


@contextmanager
def _no_tf32(torch):
    matmul = torch.backends.cuda.matmul
    saved, matmul.allow_tf32 = matmul.allow_tf32, False
    try:
        yield
    finally:
        matmul.allow_tf32 = saved


def predictions_from_knn(
    query_names: Sequence[str],
    reference_names: Sequence[str],
    scores: np.ndarray,
    indices: np.ndarray,
) -> Predictions:
    """Flatten kNN results into (query_id, reference_id, score) predictions.

    Row ``i`` of ``scores``/``indices`` belongs to ``query_names[i]``; entries
    with index -1 (no neighbour) are dropped. Order: query by query, best first.
    """
    scores = np.asarray(scores)
    indices = np.asarray(indices)
    if scores.shape != indices.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and indices {indices.shape} must be equal 2-D shapes")
    if scores.shape[0] != len(query_names):
        raise ValueError(f"{len(query_names)} query names for {scores.shape[0]} result rows")
    q_names = np.asarray(query_names, dtype=str) if len(query_names) else np.zeros(0, dtype=str)
    r_names = np.asarray(reference_names, dtype=str) if len(reference_names) else np.zeros(0, dtype=str)
    if indices.size and indices.max() >= len(r_names):
        raise ValueError(f"index {int(indices.max())} out of range for {len(r_names)} reference names")

    keep = indices >= 0
    rows = np.nonzero(keep)[0]
    return Predictions(
        query_ids=q_names[rows],
        reference_ids=r_names[indices[keep]],
        scores=scores[keep].astype(np.float32),
    )
