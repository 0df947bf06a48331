"""A saved search index: a trained model's references, searched with new images (the copy detector deployed).

    embedlab index build --model models/drip/s2/descriptor_model.safetensors --images data/raw/disc/reference \
        --out indexes/disc --threshold-from models/drip/s2/eval/metrics.json
    embedlab search --index indexes/disc --images new_photos/ --out matches.csv

An index folder holds::

    references.h5   the references' descriptors (ISC layout; written in resumable chunks)
    index.faiss     the faiss index of them: exact inner product (flat), the same in fp16 (flat16:
                    half the bytes, scores within fp16 rounding), or IVF-PQ for references beyond
                    memory (about 1/16 of the bytes at m = dim / 4)
    index.json      the model (path, sha256, image size), the index kind and its settings, the match
                    threshold, counts, and for IVF-PQ its recall@10 against the exact index

``search`` embeds the new images with the same model, finds each one's k
nearest references and writes the pairs scoring at least the threshold:
by default the one at which the model's evaluation reached 90 % precision
(``threshold_at_p90``). A model other than the index's is refused, naming both.
On a machine with faiss-gpu the index is sharded over every GPU for the search.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from embedlab.atomic import atomic_path, write_csv_atomic, write_json_atomic
from embedlab.config import RuntimeConfig
from embedlab.descriptors import DescriptorReader, read_descriptors
from embedlab.digests import file_digest
from embedlab.evaluation.embed import embed_folder
from embedlab.retrieval import GPU_MAX_K, faiss_gpus, knn_search, on_all_gpus

KINDS = ("flat", "flat16", "ivfpq")
REFERENCES, INDEX, INFO = "references.h5", "index.faiss", "index.json"


class SearchIndexError(ValueError):
    """An index folder that cannot be used as asked; the message names the file."""


def _threshold(threshold: float | None, metrics: str | os.PathLike | None) -> float | None:
    if threshold is not None or metrics is None:
        return threshold
    path = Path(metrics)
    try:
        value = json.loads(path.read_text()).get("threshold_at_p90")
    except (OSError, json.JSONDecodeError) as err:
        raise SearchIndexError(f"{path}: cannot read the evaluation's metrics ({err})") from err
    if value is None:
        raise SearchIndexError(f"{path}: no threshold_at_p90 (the evaluation never reached 90 % precision); "
                               "give --threshold")
    return float(value)


def _faiss_index(vectors: np.ndarray, kind: str, nlist: int | None, m: int | None):
    import faiss

    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "flat16":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    else:
        m = m or max(1, dim // 4)
        if dim % m:
            raise ValueError(f"ivfpq: m={m} must divide the descriptor size {dim}")
        nlist = min(nlist or max(1, int(4 * np.sqrt(len(vectors)))), len(vectors))
        train = vectors[np.random.default_rng(0).permutation(len(vectors))[: max(256 * nlist, 10_000)]]
        bits = max(1, min(8, int(np.log2(len(train)))))  # 8 bits a code (256 centroids) from 256 training points on
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, bits, faiss.METRIC_INNER_PRODUCT)
        index.train(train)
        index.nprobe = min(nlist, 16)
    index.add(vectors)
    return index


def _recall_at_10(index, vectors: np.ndarray, sample: int = 1000) -> float:
    """Share of the exact top-10 neighbours the index returns, for a sample of the references as queries."""
    rows = np.random.default_rng(1).permutation(len(vectors))[:sample]
    k = min(10, len(vectors))
    _, exact = knn_search(vectors[rows], vectors, k, device="cpu")
    _, found = index.search(vectors[rows], k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, found)]))


def build_index(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, kind: str = "flat",
                threshold: float | None = None, metrics: str | os.PathLike | None = None,
                nlist: int | None = None, m: int | None = None, on_bad_image: str = "fail",
                runtime: RuntimeConfig | None = None) -> dict:
    """Embed the references ``images`` with ``model`` and save their index in the folder ``out``."""
    import faiss

    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    out = Path(out)
    threshold = _threshold(threshold, metrics)  # before the embedding: a bad metrics file fails at once
    embedded = embed_folder(model, images, out / REFERENCES, on_bad_image=on_bad_image, runtime=runtime,
                            progress=False)
    names, vectors = read_descriptors(out / REFERENCES)
    index = _faiss_index(vectors, kind, nlist, m)
    with atomic_path(out / INDEX) as tmp:
        faiss.write_index(index, str(tmp))
    info = {"model": str(model), "model_sha256": file_digest(model), "img_size": embedded["img_size"],
            "images": str(images), "references": len(names), "dim": int(vectors.shape[1]), "kind": kind,
            "threshold": threshold, "skipped": embedded["skipped"]}
    if kind == "ivfpq":
        info.update(nlist=int(index.nlist), m=int(index.pq.M), bits=int(index.pq.nbits), nprobe=int(index.nprobe))
    if kind != "flat":
        info["recall_at_10"] = round(_recall_at_10(index, vectors), 4)
    write_json_atomic(out / INFO, info)
    return info


def _open(index_dir: Path) -> tuple[dict, list[str], object]:
    import faiss

    for name in (INFO, INDEX, REFERENCES):
        if not (index_dir / name).is_file():
            raise SearchIndexError(f"{index_dir / name}: not found; build the index with `embedlab index build`")
    info = json.loads((index_dir / INFO).read_text())
    names = DescriptorReader(index_dir / REFERENCES).names
    index = faiss.read_index(str(index_dir / INDEX))
    if index.ntotal != len(names):
        raise SearchIndexError(f"{index_dir / INDEX}: holds {index.ntotal} vectors, {REFERENCES} {len(names)}")
    return info, names, index


def search_images(index_dir: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, k: int = 10,
                  threshold: float | None = None, model: str | os.PathLike | None = None,
                  on_bad_image: str = "fail", runtime: RuntimeConfig | None = None) -> dict:
    """Match every image of ``images`` against the index; write ``query_id,reference_id,score`` rows scoring at
    least the threshold (the index's unless given) to the CSV ``out``."""
    index_dir = Path(index_dir)
    info, names, index = _open(index_dir)
    model = Path(model) if model is not None else Path(info["model"])
    if not model.is_file():
        raise SearchIndexError(f"{model}: the index's model is not there (give --model)")
    if file_digest(model) != info["model_sha256"]:
        raise SearchIndexError(f"{model}: not the model {index_dir / INFO} was built with ({info['model']}): "
                               "descriptors of two models do not compare; build the index again with this model")
    threshold = info["threshold"] if threshold is None else threshold
    if threshold is None:
        raise SearchIndexError(f"{index_dir / INFO}: holds no threshold; give --threshold")
    with tempfile.TemporaryDirectory(prefix="embedlab-search-") as tmp:
        embedded = embed_folder(model, images, Path(tmp) / "queries.h5", img_size=info["img_size"],
                                on_bad_image=on_bad_image, runtime=runtime, progress=False)
        queries, vectors = read_descriptors(Path(tmp) / "queries.h5")
    k = min(k, len(names))
    if faiss_gpus() and k <= GPU_MAX_K and info["kind"] != "ivfpq":  # IVF-PQ: the CPU index fits, as built
        index = on_all_gpus(index, fp16=info["kind"] == "flat16")
    scores, found = index.search(vectors, k) if len(vectors) else (np.zeros((0, k)), np.zeros((0, k), int))
    rows = [(q, names[j], f"{s:.6f}") for q, row_scores, row_found in zip(queries, scores, found)
            for s, j in zip(row_scores, row_found) if j >= 0 and s >= threshold]
    write_csv_atomic(out, ("query_id", "reference_id", "score"), rows)
    return {"out": str(out), "queries": len(queries), "matches": len(rows),
            "queries_matched": len({q for q, _, _ in rows}), "threshold": threshold, "k": k,
            "skipped": embedded["skipped"]}
