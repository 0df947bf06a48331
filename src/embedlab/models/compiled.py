"""torch.compile for a stage's training steps, leaving what gets saved untouched."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


def trunk(model: nn.Module) -> nn.Module:
    """The part of ``model`` that holds the compute: its timm ``body``, else the whole model.

    The body rather than the model, because training steps do not all go
    through ``forward`` (the GeM trainer calls ``features``).
    """
    return getattr(model, "body", model)


@contextlib.contextmanager
def compiled_trunk(model: nn.Module, enabled: bool) -> Iterator[None]:
    """While inside, ``model``'s trunk runs torch.compiled.

    ``nn.Module.compile`` works in place: parameter names, checkpoints and
    exports stay those of the plain model (``torch.compile(model)`` would
    prefix every key with ``_orig_mod.``). On the way out the trunk runs
    eagerly again, so the evaluations after training follow ``embed.compile``.
    """
    if not enabled:
        yield
        return
    body = trunk(model)
    body.compile()
    try:
        yield
    finally:
        body._compiled_call_impl = None  # nn.Module.compile has no public way back to eager


def is_compiled(model: nn.Module) -> bool:
    return getattr(trunk(model), "_compiled_call_impl", None) is not None
