"""Running a model in eval mode for a while, then giving it back as it was."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside; its own train/eval mode restored after, errors included.

    Restoring matters: Lightning 2.x keeps the mode it finds, so a model scored
    before training and left in eval would train with frozen BatchNorm statistics.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
