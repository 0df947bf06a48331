"""The drip stage's DVC metrics and plots files, and its loss history from MLflow."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

from embedlab.atomic import atomic_path, write_json_atomic, write_text_atomic
from embedlab.tracking import metric_values


def loss_history(run_id: str) -> list[tuple[int, float, float]]:
    """(epoch, train loss, val loss) from MLflow: complete across a resume, unlike in-memory state."""
    train, val = metric_values(run_id, "train_loss_epoch"), metric_values(run_id, "val_loss")
    return [(epoch, t, v) for epoch, (t, v) in enumerate(itertools.zip_longest(train, val, fillvalue=float("nan")))]


def write_reports(report_dir: Path, plots_root: Path, name: str, eval_dir: Path, summary: dict,
                  history: list[tuple[int, float, float]]) -> None:
    """``<report_dir>/metrics.json`` (+ the PR curve PNG) and one CSV per plot kind.

    Plot data goes to one folder per kind (``<plots_root>/<kind>/<step>.csv``)
    so that dvc.yaml's top-level plots draw every step in one chart. Without an
    evaluation the PR curve CSV holds only its header (DVC expects the out).
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_dir / "metrics.json", summary)
    if (eval_dir / "pr_curve.png").is_file():
        with atomic_path(report_dir / "pr_curve.png") as tmp:
            shutil.copyfile(eval_dir / "pr_curve.png", tmp)
    pr_curve = eval_dir / "pr_curve.csv"
    write_text_atomic(plots_root / "pr_curve" / f"{name}.csv",
                      pr_curve.read_text() if pr_curve.is_file() else "precision,recall,threshold\n")
    rows = "".join(f"{e},{t},{v}\n" for e, t, v in history)
    write_text_atomic(plots_root / "history" / f"{name}.csv", "epoch,train_loss,val_loss\n" + rows)
