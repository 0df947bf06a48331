"""Scoring a decoder: does the template of the decoded face match the template it came from?

Decode, convert to 8-bit as a saved image would be, re-embed with the
template model, and take the cosine to the original template (the
original's validate.py). The threshold is the template model's own: the
impostor score (templates of different persons) exceeded at the chosen false
match rate, unless given explicitly (0.661 for buffalo_l at FMR 1e-6).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from embedlab.atomic import atomic_path
from embedlab.data.templates import TemplateSet
from embedlab.models.decoder import to_uint8
from embedlab.models.decoder_module import DecoderModule
from embedlab.models.eval_mode import eval_mode

log = logging.getLogger(__name__)

SAMPLED_PAIRS = 2_000_000  # impostor pairs scored at least (all of them when there are fewer)
MIN_PAIRS_ABOVE = 100  # pairs above the threshold, so that it does not rest on a handful of pairs
_BLOCK = 1 << 22  # scores per block: memory stays flat in the number of templates and pairs


def impostor_pair_count(persons: Sequence) -> int:
    """Pairs of templates of different persons."""
    _, counts = np.unique(np.asarray(persons), return_counts=True)
    n = int(counts.sum())
    return n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())


def _all_impostor_scores(x: torch.Tensor, persons: torch.Tensor) -> Iterator[np.ndarray]:
    """Cosines of every pair (i < j) of different persons, a block of template rows at a time."""
    n = len(x)
    rows = max(1, _BLOCK // max(n, 1))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        scores = x[start:stop] @ x.T
        later = torch.arange(n)[None, :] > torch.arange(start, stop)[:, None]
        yield scores[later & (persons[start:stop, None] != persons[None, :])].numpy()


def _sampled_impostor_scores(x: torch.Tensor, persons: torch.Tensor, count: int, seed: int) -> Iterator[np.ndarray]:
    """Cosines of ``count`` pairs of different persons: random templates against every other, as matrix products.

    Each drawn template is paired with all templates of other persons (a block
    of rows at a time): a uniform sample of templates, and so of pairs, at the
    speed of a matrix product rather than of gathering rows pair by pair.
    """
    n = len(x)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    rows, made = max(1, _BLOCK // max(n, 1)), 0
    for start in range(0, n, rows):
        if made >= count:
            return
        drawn = order[start:start + rows]
        scores = (x[drawn] @ x.T)[persons[drawn, None] != persons[None, :]][:count - made]
        made += len(scores)
        yield scores.numpy()


def _score_exceeded_by(blocks: Iterable[np.ndarray], fmr: float, count: int) -> float:
    """The score that at most ``fmr`` of ``count`` scores exceed, keeping only the top ones in memory."""
    keep = int(np.floor(fmr * count)) + 1
    top = np.zeros(0)
    for block in blocks:
        top = np.concatenate([top, block]) if len(top) else np.asarray(block)
        if len(top) > keep:
            top = np.partition(top, len(top) - keep)[-keep:]
    return float(top.min())


def _check_enough(fmr: float, available: int) -> None:
    needed = int(np.ceil(1.0 / fmr))
    if available < needed:
        raise ValueError(f"decoder.fmr {fmr:g} needs at least {needed:,} impostor pairs; the train templates "
                         f"give {available:,}. Set decoder.threshold explicitly or a larger decoder.fmr")


def threshold_at_fmr(impostors: np.ndarray, fmr: float) -> float:
    """The score that at most ``fmr`` of the impostor scores ``impostors`` exceed."""
    _check_enough(fmr, len(impostors))
    return _score_exceeded_by([np.asarray(impostors)], fmr, len(impostors))


def impostor_threshold(ts: TemplateSet, fmr: float, min_pairs: int = SAMPLED_PAIRS, seed: int = 0) -> tuple[float, int]:
    """(the template model's threshold at ``fmr``, impostor pairs it was computed on).

    Every pair of different persons when there are at most ``min_pairs`` or the
    :data:`MIN_PAIRS_ABOVE` / ``fmr`` pairs the FMR needs; else that many pairs
    of randomly drawn templates. Scored in blocks, keeping only the highest scores: at FMR 1e-6 the
    threshold comes from 1e8 pairs in bounded memory, not from the 2 pairs
    above it in a 2M sample.
    """
    persons = torch.from_numpy(np.unique(np.asarray(ts.persons), return_inverse=True)[1].reshape(-1))
    available = impostor_pair_count(ts.persons)
    _check_enough(fmr, available)
    wanted = max(min_pairs, int(np.ceil(MIN_PAIRS_ABOVE / fmr)))
    with warnings.catch_warnings():  # the read-only map of the h5, shared not copied: x is never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(np.ascontiguousarray(ts.templates, dtype=np.float32))
    if available <= wanted:
        used, blocks = available, _all_impostor_scores(x, persons)
    else:
        used, blocks = wanted, _sampled_impostor_scores(x, persons, wanted, seed)
    if fmr * used < MIN_PAIRS_ABOVE:
        log.warning("the threshold at FMR %g rests on %d impostor pairs above it (of %d): more train templates, "
                    "or a larger decoder.fmr, would make it steadier", fmr, int(fmr * used), used)
    return _score_exceeded_by(blocks, fmr, used), used


def cosine_stats(cosines: np.ndarray, threshold: float) -> dict:
    return {
        "cosine_min": float(cosines.min()), "cosine_mean": float(cosines.mean()),
        "cosine_median": float(np.median(cosines)), "cosine_max": float(cosines.max()),
        "above_threshold": float((cosines > threshold).mean()), "threshold": float(threshold),
        "n_samples": int(len(cosines)),
    }


@torch.no_grad()
def decoded_cosines(module: DecoderModule, ts: TemplateSet, batch_size: int) -> np.ndarray:
    device = next(module.model.parameters()).device
    with eval_mode(module):
        out = [module.reembed_cosines(torch.from_numpy(np.array(ts.templates[i:i + batch_size])).to(device)).cpu()
               for i in range(0, len(ts), batch_size)]
    return torch.cat(out).numpy()


def format_stats(stats: dict, split: str, fmr: float | None) -> str:
    where = f"FMR {fmr:g}" if fmr is not None else "given"
    return "\n".join([
        f"STATISTICS ON {stats['n_samples']} TEST SAMPLES FROM {split!r}:",
        f" - COSINE MIN:    {stats['cosine_min']:.4f}",
        f" - COSINE MEAN:   {stats['cosine_mean']:.4f}",
        f" - COSINE MEDIAN: {stats['cosine_median']:.4f}",
        f" - COSINE MAX:    {stats['cosine_max']:.4f}",
        f" - ABOVE THRESHOLD {stats['threshold']:.4f} ({where}): {100 * stats['above_threshold']:.1f} %",
    ])


@torch.no_grad()
def write_control_grid(module: DecoderModule, templates: torch.Tensor, photos: torch.Tensor, path: Path) -> Path:
    """Original | reconstruction side by side for each control sample, three pairs to a row."""
    device = next(module.model.parameters()).device
    with eval_mode(module):
        decoded = to_uint8(module.model(templates.to(device))).cpu()
    originals = to_uint8(photos)
    pairs = torch.stack([torch.cat([o, d], dim=2) for o, d in zip(originals, decoded)])
    grid = make_grid(pairs, nrow=3, padding=2, pad_value=255)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return path
