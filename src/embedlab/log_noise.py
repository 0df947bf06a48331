"""Silence third-party lines that tell a user nothing about their run.

Each filter sits on the logger or the warning that emits its line and matches that line's text; nothing else
from those loggers is touched (a real warning, an error, Lightning's DDP lines all pass). ``embedlab --verbose``
(debug logging) or ``EMBEDLAB_QUIET=0`` in the environment (e.g. ``EMBEDLAB_QUIET=0 dvc repro``) keeps them all.

Each is known and harmless here:

- faiss's loader reports, at INFO, every CPU-specific build it fails to import before the one it loads
  (six lines: logger ``faiss.loader`` is raised to WARNING);
- Lightning advertises a cloud logger ("💡 Tip"), notes that a checkpoint was loaded without ``weights_only``
  (embedlab reads its own checkpoints), says "Seed set to N" twice a run (the seed is a logged param), "TPU
  available: False", and "`Trainer.fit` stopped: `max_epochs=N` reached" (the stage's summary line gives its
  epochs; another reason to stop still shows);
- Lightning's pytree code calls a torch API that torch deprecated (``LeafSpec``), a warning per run;
- a demo epoch shorter than ``log_every_n_steps`` makes Lightning say it will not log mid-epoch, which the
  stages do not rely on (they log per epoch);
- MLflow's system-metrics monitor says at INFO, every run, that it starts, stops and finds no GPU library;
- MLflow logging a model says it validates the input example, and draws a "Downloading artifacts" bar for each
  file it copies into the model's folder (:func:`artifact_copy_bars_off`, around that call only: the bars of a
  real upload or download stay).
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Iterator

QUIET_ENV = "EMBEDLAB_QUIET"  # "0": no filter (the lines come back without --verbose's debug logging)

# logger -> the texts of the records it drops (a record whose message contains one of them)
DROPPED: dict[str, tuple[str, ...]] = {
    "pytorch_lightning.utilities.rank_zero": ("💡 Tip", "TPU available: False",
                                              "`Trainer.fit` stopped: `max_epochs="),
    "lightning_fabric.utilities.rank_zero": ("💡 Tip", "TPU available: False"),
    "pytorch_lightning.trainer.connectors.checkpoint_connector": ("`weights_only` was not set",),
    "lightning_fabric.utilities.seed": ("Seed set to ",),
    "mlflow.pyfunc": ("Validating input example against model signature",),
}
# logger -> the level it is raised to (the lines below it are all noise)
RAISED: dict[str, int] = {"faiss.loader": logging.WARNING, "mlflow.system_metrics": logging.WARNING}
# (message regex, module regex of the code the warning is attributed to)
WARNINGS: tuple[tuple[str, str], ...] = (
    (r".*LeafSpec.* is deprecated", r"(pytorch_lightning|lightning_fabric)\."),
    (r"The number of training batches .* is smaller than the logging interval", r"pytorch_lightning\.loops\."),
)

_quiet = False


class DropKnownNoise(logging.Filter):
    """Drops a logger's records whose message contains one of ``texts``."""

    def __init__(self, texts: tuple[str, ...]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


def wanted() -> bool:
    """Whether the environment asks for quiet logs (the default; ``EMBEDLAB_QUIET=0`` turns them off)."""
    return os.environ.get(QUIET_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def quiet_third_party() -> None:
    """Install the filters in this process (the CLI does, unless ``--verbose`` or ``EMBEDLAB_QUIET=0``)."""
    global _quiet
    for name, level in RAISED.items():
        logging.getLogger(name).setLevel(level)
    for name, texts in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownNoise) for f in logger.filters):
            logger.addFilter(DropKnownNoise(texts))
    for message, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    _quiet = True


@contextmanager
def artifact_copy_bars_off() -> Iterator[None]:
    """No MLflow artifact bars inside (when quiet): logging a model copies each of its files into the model's
    folder as a "download", one bar per file."""
    if not _quiet:
        yield
        return
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
