"""Scoring a decoder: does the template of the decoded face match the template it came from?

Decode, convert to 8-bit as a saved image would be, re-embed with the
template model, and take the cosine to the original template (the
original's validate.py). The threshold is the template model's own: the
impostor score (templates of different persons) exceeded at the chosen false
match rate, unless given explicitly (0.661 for buffalo_l at FMR 1e-6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from embedlab.atomic import atomic_path
from embedlab.data.templates import TemplateSet
from embedlab.models.decoder import to_uint8
from embedlab.models.decoder_module import DecoderModule
from embedlab.models.eval_mode import eval_mode

MAX_IMPOSTOR_PAIRS = 2_000_000


def impostor_scores(ts: TemplateSet, max_pairs: int = MAX_IMPOSTOR_PAIRS, seed: int = 0) -> np.ndarray:
    """Cosines of template pairs of different persons: all of them, or ``max_pairs`` sampled."""
    persons = np.unique(np.asarray(ts.persons), return_inverse=True)[1]
    x = torch.from_numpy(ts.templates)
    n = len(ts)
    if n * (n - 1) // 2 <= max_pairs:
        a, b = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        a, b = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
    keep = persons[a] != persons[b]
    a, b = torch.from_numpy(a[keep]), torch.from_numpy(b[keep])
    chunk = 1 << 20  # pairs per product: bounds the memory of the gathered rows
    return np.concatenate([(x[a[i:i + chunk]] * x[b[i:i + chunk]]).sum(1).numpy()
                           for i in range(0, len(a), chunk)]) if len(a) else np.zeros(0, np.float32)


def threshold_at_fmr(impostors: np.ndarray, fmr: float) -> float:
    """The score that at most ``fmr`` of the impostor pairs exceed."""
    needed = int(np.ceil(1.0 / fmr))
    if len(impostors) < needed:
        raise ValueError(f"decoder.fmr {fmr:g} needs at least {needed:,} impostor pairs; the train templates "
                         f"give {len(impostors):,}. Set decoder.threshold explicitly or a larger decoder.fmr")
    ordered = np.sort(impostors)[::-1]
    return float(ordered[int(np.floor(fmr * len(ordered)))])


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
        out = [module.reembed_cosines(torch.from_numpy(ts.templates[i:i + batch_size]).to(device)).cpu()
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
