"""A training run's DVC files: ``metrics.json``, pictures beside it, and one CSV per plot kind."""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Mapping

from embedlab.const import METRICS_JSON
from embedlab.atomic import atomic_path, write_json_atomic, write_text_atomic
from embedlab.models.checkpoints import CheckpointError, checkpoint_epoch

log = logging.getLogger(__name__)

History = list[tuple[int, float, float]]  # (epoch, train loss, validation metric)
# A history CSV's columns after the validation metric's: the epoch counted along the chain of runs this one
# continues (a drip step after its init_from, the fine-tuning after the pre-training), which dvc.yaml's plots
# draw on, and the run a row belongs to (the CSV's name: drip_s1).
CHAINED_EPOCH, RUN = "chained_epoch", "run"


@dataclasses.dataclass(frozen=True)
class HistoryParent:
    """The run a run continues, for its history: its history CSV and the checkpoint this run started from."""

    history: Path
    checkpoint: Path
    repeat_rows: bool = False  # write the parent's rows (its whole chain) first: one chart draws the chain


def chained_history(plot_name: str, rows: History, parent: HistoryParent | None) -> list[tuple]:
    """The rows of a history CSV: (epoch, train loss, validation metric, chained epoch, run).

    The chained epoch goes on from the parent's last (its history CSV's ``chained_epoch``, an older CSV's
    ``epoch``; without that CSV, the epochs its checkpoint was trained for), so that a step's curve follows
    its parent's instead of starting again at 0. With ``repeat_rows`` the parent CSV's rows come first.
    """
    before: list[tuple] = []
    if parent is not None and parent.history.is_file():
        with open(parent.history, newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            metric = fields[2] if len(fields) > 2 else None  # epoch, train_loss, <metric>, ...
            for row in reader if metric else ():
                before.append((int(row["epoch"]), float(row["train_loss"]), float(row[metric]),
                               int(row.get(CHAINED_EPOCH) or row["epoch"]), row.get(RUN) or parent.history.stem))
    if before:
        start = max(r[3] for r in before) + 1
    elif parent is not None and parent.checkpoint.is_file():
        try:
            start = checkpoint_epoch(parent.checkpoint) + 1
        except CheckpointError as exc:  # the plot's axis is no reason to fail a finished run
            log.warning("%s; its history starts at epoch 0 of the chained axis", exc)
            start = 0
    else:
        start = 0
    own = [(e, t, v, start + e, plot_name) for e, t, v in rows]
    return (before if parent is not None and parent.repeat_rows else []) + own


def write_stage_reports(report_dir: Path, summary: dict, plots_root: Path, plot_name: str,
                        history: tuple[str, str, History], curves: dict[str, tuple[Path, str]],
                        pictures: Mapping[str, Path] | None = None,
                        parent: HistoryParent | None = None) -> None:
    """``<report_dir>/metrics.json`` (+ ``pictures`` that exist, as ``<name>.png``) and
    ``<plots_root>/<kind>/<plot_name>.csv``.

    Plot data goes to one folder per kind (dvc.yaml titles and draws each).
    ``history`` is (kind, validation metric, rows), written as ``epoch,
    train_loss, <metric>, chained_epoch, run`` (:func:`chained_history`,
    ``parent``: the run this one continues); ``curves`` maps a kind to the
    evaluation's CSV and the header written when it is absent (DVC expects
    the out even without an evaluation).
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_dir / METRICS_JSON, summary)
    for name, picture in (pictures or {}).items():
        if picture.is_file():
            with atomic_path(report_dir / f"{name}.png") as tmp:
                shutil.copyfile(picture, tmp)
    for kind, (source, header) in curves.items():
        write_text_atomic(plots_root / kind / f"{plot_name}.csv", source.read_text() if source.is_file() else header)
    kind, metric, rows = history
    write_text_atomic(plots_root / kind / f"{plot_name}.csv",
                      f"epoch,train_loss,{metric},{CHAINED_EPOCH},{RUN}\n"
                      + "".join(",".join(map(str, row)) + "\n" for row in chained_history(plot_name, rows, parent)))


def log_pictures(pictures: Mapping[str, Path]) -> None:
    """Each existing picture as an MLflow image keyed by its name: the UI's image charts put the same key of
    several runs side by side (a plain artifact shows one run at a time)."""
    import mlflow
    from PIL import Image

    for name, picture in pictures.items():
        if picture.is_file():
            with Image.open(picture) as image:
                mlflow.log_image(image.convert("RGB"), key=name, step=0)
