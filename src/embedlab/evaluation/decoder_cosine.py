"""Scoring a decoder: does the template of the decoded face match the template it came from?

Decode, convert to 8-bit as a saved image would be, re-embed with the
template model, and take the cosine to the original template (the
original's validate.py). The threshold is the template model's own: the
impostor score (templates of different persons) exceeded at the chosen false
match rate, unless given explicitly (0.661 for buffalo_l at FMR 1e-6).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from embedlab.atomic import atomic_path
from embedlab.data.templates import TemplateSet
from embedlab.models.decoder import to_uint8
from embedlab.models.decoder_module import DecoderModule
from embedlab.models.eval_mode import eval_mode

log = logging.getLogger(__name__)

SAMPLED_PAIRS = 2_000_000  # impostor pairs scored at least (all of them when there are fewer)
MIN_PAIRS_ABOVE = 100  # pairs above the threshold, so that it does not rest on a handful of pairs
_BLOCK = 1 << 22  # scores per block: memory stays flat in the number of templates and pairs


def impostor_pair_count(person: np.ndarray) -> int:
    """Pairs of templates of different persons (``person``: each template's person index)."""
    counts = np.bincount(np.asarray(person, np.int64)) if len(person) else np.zeros(0, np.int64)
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


def _sample(person: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted rows of the smallest random subset of templates whose pairs of different persons number
    at least ``count`` (there must be that many in all).

    All pairs within a random subset: thousands of distinct templates on both
    sides of the pairs (not a few templates against all others), scored as one
    matrix product over a subset that fits in memory. 1e8 pairs need about 14k templates.
    """
    order = np.random.default_rng(seed).permutation(len(person))
    for prefix in (min(len(order), 4 * int(np.sqrt(2 * count)) + 16), len(order)):
        drawn = person[order[:prefix]]
        # The k-th drawn template pairs with the k earlier ones, less those of its own person.
        by_person = np.argsort(drawn, kind="stable")
        group_starts = np.r_[0, np.flatnonzero(np.diff(drawn[by_person])) + 1]
        same_before = np.empty(prefix, np.int64)
        same_before[by_person] = np.arange(prefix) - np.repeat(group_starts, np.diff(np.r_[group_starts, prefix]))
        enough = np.flatnonzero(np.cumsum(np.arange(prefix) - same_before) >= count)
        if len(enough):
            return np.sort(order[:enough[0] + 1])  # in file order: the rows are read from a map of the h5
    raise ValueError(f"{impostor_pair_count(person):,} impostor pairs in all, fewer than the {count:,} asked for")


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
    :data:`MIN_PAIRS_ABOVE` / ``fmr`` pairs the FMR needs; else every pair within
    a random subset of templates holding at least that many. Scored in blocks,
    keeping only the highest scores: at FMR 1e-6 the threshold comes from 1e8
    pairs among about 14k templates, whatever the number of templates.
    """
    available = impostor_pair_count(ts.person)
    _check_enough(fmr, available)
    wanted = max(min_pairs, int(np.ceil(MIN_PAIRS_ABOVE / fmr)))
    rows = np.arange(len(ts)) if available <= wanted else _sample(ts.person, wanted, seed)
    x = torch.from_numpy(np.ascontiguousarray(ts.templates[rows], dtype=np.float32))  # a copy of the rows used
    persons = torch.from_numpy(ts.person[rows].astype(np.int64))
    used = impostor_pair_count(ts.person[rows])
    if fmr * used < MIN_PAIRS_ABOVE:
        log.warning("the threshold at FMR %g rests on %d impostor pairs above it (of %d): more train templates, "
                    "or a larger decoder.fmr, would make it steadier", fmr, int(fmr * used), used)
    return _score_exceeded_by(_all_impostor_scores(x, persons), fmr, used), used


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


GRID_FACE_PX = 128  # each face is shown at least this large, whatever the decoder's output size


@torch.no_grad()
def write_control_grid(module: DecoderModule, templates: torch.Tensor, photos: torch.Tensor, path: Path) -> Path:
    """Photo | decoded face side by side for each control sample, three pairs to a row, each pair captioned
    with the cosine of the decoded face's template to the photo's and the SSIM of the two images."""
    from embedlab.models.decoder_module import photo_similarity

    device = next(module.model.parameters()).device
    with eval_mode(module):
        output = module.model(templates.to(device))
        cosines = module.reembed_cosines(templates.to(device), output).cpu()
        _, ssims = photo_similarity(output, photos.to(device))
    decoded = to_uint8(output).cpu()
    originals = to_uint8(photos)
    pairs = [_captioned_pair(o, d, f"cos {c:.3f} · SSIM {s:.2f}")
             for o, d, c, s in zip(originals, decoded, cosines.tolist(), ssims.cpu().tolist())]
    cols = min(3, len(pairs))
    w, h = pairs[0].size
    sheet = Image.new("RGB", (cols * w + (cols + 1) * 4, -(-len(pairs) // cols) * (h + 4) + 4), "white")
    for i, pair in enumerate(pairs):
        sheet.paste(pair, (4 + (i % cols) * (w + 4), 4 + (i // cols) * (h + 4)))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _captioned_pair(photo: torch.Tensor, decoded: torch.Tensor, caption: str) -> Image.Image:
    from PIL import ImageDraw

    from embedlab.augment.fonts import default_font_paths, load_font

    size = max(GRID_FACE_PX, photo.shape[-1])
    faces = [Image.fromarray(x.permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.BICUBIC)
             for x in (photo, decoded)]
    band = max(14, size // 8)
    pair = Image.new("RGB", (2 * size + 2, size + band), "white")
    pair.paste(faces[0], (0, 0))
    pair.paste(faces[1], (size + 2, 0))
    ImageDraw.Draw(pair).text((4, size + 1), caption, fill=(0, 0, 0), font=load_font(str(default_font_paths()[0]), band - 3))
    return pair
