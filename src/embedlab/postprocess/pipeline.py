"""Descriptor post-processing for copy detection: ensemble, whitening, stretching, score normalisation.

Fixed order, each step optional except the first:

1. ensemble: per-model blocks L2-normalised, weighted, concatenated, L2-normalised
   (:mod:`.ensemble`); a single model is simply L2-normalised;
2. whitening: PCA whitening fitted on the (ensembled) training descriptors,
   applied to queries, references and the training descriptors alike
   (:mod:`.whitening`);
3. training-set normalisation: queries and references pushed away from their
   nearest training descriptors, then L2-normalised
   (:mod:`.training_set_normalization`; off by default);
4. stretching: queries scaled by ``exp(-factor * m_q)`` (:mod:`.stretching`);
5. score normalisation: queries get ``-factor * m_q`` and references ``1`` as an
   extra last dimension (:mod:`.score_normalization`).

Steps 3 to 5 measure ``m_q`` against the training descriptors as they leave
step 2 (training descriptors are never moved or stretched); with both on, step 5
sees stretched queries, so the final score is ``scale_q * (s - factor * m_q)``.
Both penalise the same thing (crowded query neighbourhoods), so the default
runs score normalisation only: it is exact in our inner-product search.
With score normalisation on, the outputs are for inner-product search only
(do not re-normalise them). Run from the shell::

    embedlab postprocess --query q_m1.h5 q_m2.h5 --reference r_m1.h5 r_m2.h5 \\
        --train t_m1.h5 t_m2.h5 --out models/postprocess --whiten-dim 256
    embedlab evaluate-disc --query models/postprocess/query.h5 \\
        --reference models/postprocess/reference.h5 --ground-truth data/raw/disc/ground_truth.csv --out eval_pp
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embedlab.atomic import write_json_atomic
from embedlab.descriptors import DescriptorFileError, write_descriptors
from embedlab.config import PostprocessConfig
from embedlab.postprocess.ensemble import concat_blocks, read_blocks
from embedlab.postprocess.score_normalization import normalize_scores
from embedlab.postprocess.stretching import stretch_queries
from embedlab.postprocess.training_set_normalization import push_from_training_set
from embedlab.postprocess.whitening import Whitening, fit_whitening

QUERY_FILE = "query.h5"
REFERENCE_FILE = "reference.h5"
WHITENING_FILE = "whitening.safetensors"
SUMMARY_FILE = "postprocess.json"

Blocks = np.ndarray | Sequence[np.ndarray]


@dataclass
class PostprocessInfo:
    """What :func:`postprocess` did: the fitted whitening and the per-query terms."""

    n_models: int
    dim_in: int  # ensemble dimension (sum of the models' dimensions)
    dim_out: int  # final descriptor dimension (+1 with score normalisation)
    whitening: Whitening | None = None
    stretch_scales: np.ndarray | None = None  # per query
    score_offsets: np.ndarray | None = None  # factor * m_q per query


def _as_blocks(x: Blocks | None) -> list[np.ndarray]:
    if x is None:
        return []
    if isinstance(x, np.ndarray) and x.ndim == 2:
        return [x]
    return [np.asarray(b) for b in x]


def _check_model_dims(q: list[np.ndarray], r: list[np.ndarray], t: list[np.ndarray]) -> None:
    if len(r) != len(q) or (t and len(t) != len(q)):
        raise ValueError(f"{len(q)} query, {len(r)} reference and {len(t)} training blocks: "
                         "give one block per model for each set, in the same model order")
    for i, (qb, rb) in enumerate(zip(q, r)):
        dims = {"query": qb.shape[-1], "reference": rb.shape[-1]} | ({"training": t[i].shape[-1]} if t else {})
        if len(set(dims.values())) > 1:
            raise ValueError(f"model {i + 1}: descriptor dimensions differ: {dims}")


def postprocess(query: Blocks, reference: Blocks, train: Blocks | None,
                cfg: PostprocessConfig = PostprocessConfig()) -> tuple[np.ndarray, np.ndarray, PostprocessInfo]:
    """Post-process descriptors; each argument is one N x D array or a list of them (one per model).

    Returns ``(query', reference', info)``. Raises ValueError on mismatched
    blocks, NaN/inf values, missing training descriptors or settings the
    training set cannot support (e.g. ``whiten_dim`` >= its size).
    """
    q_blocks, r_blocks, t_blocks = _as_blocks(query), _as_blocks(reference), _as_blocks(train)
    _check_model_dims(q_blocks, r_blocks, t_blocks)
    if cfg.needs_train and not t_blocks:
        raise ValueError("whitening, training-set normalisation, stretching and score normalisation need training "
                         "descriptors")
    weights = cfg.weights
    q = concat_blocks(q_blocks, weights, "query")
    r = concat_blocks(r_blocks, weights, "reference")
    t = concat_blocks(t_blocks, weights, "training descriptors") if t_blocks else None
    info = PostprocessInfo(n_models=len(q_blocks), dim_in=q.shape[1], dim_out=q.shape[1])

    if cfg.whiten:
        info.whitening = fit_whitening(t, cfg.whiten_dim, cfg.whiten_power)
        q = info.whitening.apply(q, what="query")
        r = info.whitening.apply(r, what="reference")
        t = info.whitening.apply(t, what="training descriptors")
    if cfg.train_norm_factor > 0:
        q, r = (push_from_training_set(x, t, cfg.train_norm_factor, cfg.train_norm_n, cfg.train_norm_top, cfg.device,
                                       what) for x, what in ((q, "query"), (r, "reference")))
    if cfg.stretch_factor > 0:
        q, info.stretch_scales = stretch_queries(q, t, cfg.stretch_factor, cfg.stretch_n, cfg.device)
    if cfg.score_norm_factor > 0:
        q, r, info.score_offsets = normalize_scores(q, r, t, cfg.score_norm_factor, cfg.score_norm_n, cfg.device)
    info.dim_out = q.shape[1]
    return q, r, info


def _stats(x: np.ndarray | None) -> dict[str, float] | None:
    if x is None or x.size == 0:
        return None
    return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}


def _check_file_dims(query_h5s, reference_h5s, train_h5s, q_blocks, r_blocks, t_blocks) -> None:
    if len(reference_h5s) != len(query_h5s) or (train_h5s and len(train_h5s) != len(query_h5s)):
        raise ValueError(f"{len(query_h5s)} query, {len(reference_h5s)} reference and {len(train_h5s)} training "
                         "files: give one file per model for each set, in the same model order")
    for i, (q_path, qb) in enumerate(zip(query_h5s, q_blocks)):
        others = [(reference_h5s[i], r_blocks[i])] + ([(train_h5s[i], t_blocks[i])] if train_h5s else [])
        for path, block in others:
            if block.shape[1] != qb.shape[1]:
                raise DescriptorFileError(path, f"descriptor dimension {block.shape[1]} differs from "
                                                f"{qb.shape[1]} in {q_path} (model {i + 1})")


def postprocess_files(query_h5s: Sequence[str | os.PathLike], reference_h5s: Sequence[str | os.PathLike],
                      train_h5s: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                      cfg: PostprocessConfig = PostprocessConfig()) -> tuple[Path, Path, dict[str, Any]]:
    """Post-process descriptor files (one per model and set) into ``out_dir``.

    Writes ``query.h5`` and ``reference.h5`` (ISC layout, the input image
    names), ``whitening.safetensors`` when whitening, and ``postprocess.json``
    (the summary) last, each atomically. Every input is read and checked
    before anything is written: a bad input leaves ``out_dir`` untouched.
    Returns ``(query_out_h5, reference_out_h5, summary)``.
    """
    start = time.perf_counter()
    query_h5s, reference_h5s, train_h5s = list(query_h5s), list(reference_h5s), list(train_h5s or [])
    q_names, q_blocks = read_blocks(query_h5s, "query")
    r_names, r_blocks = read_blocks(reference_h5s, "reference")
    t_names, t_blocks = read_blocks(train_h5s, "train") if train_h5s else ([], [])
    _check_file_dims(query_h5s, reference_h5s, train_h5s, q_blocks, r_blocks, t_blocks)
    if cfg.needs_train and not train_h5s:
        raise ValueError("whitening, stretching and score normalisation need training descriptor files (--train)")
    try:
        q, r, info = postprocess(q_blocks, r_blocks, t_blocks, cfg)
    except ValueError as err:  # the inputs are checked above: what is left is about the training set
        raise DescriptorFileError(", ".join(map(str, train_h5s)), str(err)) from err

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # its presence means a complete run
    query_out, reference_out = out / QUERY_FILE, out / REFERENCE_FILE
    write_descriptors(query_out, q_names, q)
    write_descriptors(reference_out, r_names, r)
    whitening_out = None
    if info.whitening is not None:
        whitening_out = out / WHITENING_FILE
        info.whitening.save(whitening_out)
    summary: dict[str, Any] = {
        "query": str(query_out),
        "reference": str(reference_out),
        "whitening": str(whitening_out) if whitening_out else None,
        "inputs": {"query": list(map(str, query_h5s)), "reference": list(map(str, reference_h5s)),
                   "train": list(map(str, train_h5s))},
        "config": dataclasses.asdict(cfg),
        "n_models": info.n_models,
        "n_query": len(q_names),
        "n_reference": len(r_names),
        "n_train": len(t_names),
        "dim_in": info.dim_in,
        "dim_out": info.dim_out,
        "inner_product_only": info.score_offsets is not None,
        "stretch_scales": _stats(info.stretch_scales),
        "score_offsets": _stats(info.score_offsets),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    return query_out, reference_out, summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`postprocess_files`."""
    cfg = summary["config"]
    steps = [f"ensemble of {summary['n_models']}"]
    if cfg["whiten"]:
        steps.append(f"whitening (power {cfg['whiten_power']}) {summary['dim_in']} -> "
                     f"{summary['dim_out'] - int(summary['inner_product_only'])} dims")
    if summary["stretch_scales"]:
        steps.append(f"stretching (factor {cfg['stretch_factor']}, n {cfg['stretch_n']})")
    if summary["score_offsets"]:
        steps.append(f"score normalisation (factor {cfg['score_norm_factor']}, n {cfg['score_norm_n']})")
    written = [summary["query"], summary["reference"]] + ([summary["whitening"]] if summary["whitening"] else [])
    lines = [
        "Descriptor post-processing",
        f"  {' -> '.join(steps)}",
        f"  queries {summary['n_query']:,}  references {summary['n_reference']:,}  "
        f"training {summary['n_train']:,}  output dim {summary['dim_out']}",
        f"  wrote {', '.join(written)}",
    ]
    if summary["inner_product_only"]:
        lines.append("  score-normalised: use inner-product search only (evaluate-disc does); never re-normalise")
    return "\n".join(lines)
