"""Silence third-party lines that tell a user nothing about their run (``embedlab --verbose`` keeps them).

Each is known and harmless here:
- faiss's loader reports, at INFO, every CPU-specific build it fails to import before the one it loads;
- Lightning advertises a cloud logger ("💡 Tip") and notes that a checkpoint was loaded without
  ``weights_only`` (embedlab reads its own checkpoints);
- Lightning's pytree code calls a torch API that torch deprecated (``LeafSpec``), a warning per run;
- a demo epoch shorter than ``log_every_n_steps`` makes Lightning say it will not log mid-epoch, which the
  stages do not rely on (they log per epoch).
- MLflow's system-metrics monitor says at INFO, every run, that it starts, stops and finds no GPU library.
"""

from __future__ import annotations

import logging
import warnings

_DROPPED_MESSAGES = ("💡 Tip", "`weights_only` was not set")


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _DROPPED_MESSAGES)


def quiet_third_party() -> None:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.trainer.connectors.checkpoint_connector",
                 "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropKnownNoise())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
