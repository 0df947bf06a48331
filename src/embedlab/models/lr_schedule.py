"""Warm-up, flat, cosine: the GeM trainer's learning-rate factor (docs/originals/gem.md).

The original: linear warm-up over epochs 0–4 from 0.01 of the base rate,
the base rate through epoch 9, cosine decay over epochs 10–25. As a
``LambdaLR`` factor, per epoch or per step::

    schedule = WarmupFlatCosine(warmup=5, flat=5, total=25, steps_per_epoch=8000)
    torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)   # scheduler.step() every step
"""

from __future__ import annotations

import dataclasses
import math


def warmup_flat_cosine(epoch: float, warmup: float, flat: float, total: float, start_factor: float = 0.01,
                       final_factor: float = 0.0) -> float:
    """The factor at ``epoch`` (fractional epochs allowed).

    [0, warmup): linear from ``start_factor`` to 1; [warmup, warmup + flat): 1;
    [warmup + flat, total]: half cosine from 1 down to ``final_factor``, which
    it keeps after ``total``.
    """
    if warmup < 0 or flat < 0 or total < warmup + flat:
        raise ValueError(f"need 0 <= warmup, 0 <= flat, warmup + flat <= total; got {warmup}, {flat}, {total}")
    if epoch < warmup:
        return start_factor + (1.0 - start_factor) * epoch / warmup
    decay_start = warmup + flat
    if epoch < decay_start:
        return 1.0
    if epoch >= total:
        return final_factor
    progress = (epoch - decay_start) / (total - decay_start)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass(frozen=True)
class WarmupFlatCosine:
    """``warmup_flat_cosine`` as a picklable ``LambdaLR`` callable of the step count."""

    warmup: float = 5
    flat: float = 5
    total: float = 25
    steps_per_epoch: int = 1
    start_factor: float = 0.01
    final_factor: float = 0.0

    def __call__(self, step: int) -> float:
        return warmup_flat_cosine(step / self.steps_per_epoch, self.warmup, self.flat, self.total,
                                  self.start_factor, self.final_factor)
