"""A training run's DVC files: ``metrics.json``, pictures beside it, and one CSV per plot kind."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

from embedlab.const import METRICS_JSON
from embedlab.atomic import atomic_path, write_json_atomic, write_text_atomic

History = list[tuple[int, float, float]]  # (epoch, train loss, validation metric)


def write_stage_reports(report_dir: Path, summary: dict, plots_root: Path, plot_name: str,
                        history: tuple[str, str, History], curves: dict[str, tuple[Path, str]],
                        pictures: Mapping[str, Path] | None = None) -> None:
    """``<report_dir>/metrics.json`` (+ ``pictures`` that exist, as ``<name>.png``) and
    ``<plots_root>/<kind>/<plot_name>.csv``.

    Plot data goes to one folder per kind so that dvc.yaml's top-level plots
    draw every run of a kind in one chart. ``history`` is (kind, validation
    metric, rows); ``curves`` maps a kind to the evaluation's CSV and the
    header written when it is absent (DVC expects the out even without an evaluation).
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
                      f"epoch,train_loss,{metric}\n" + "".join(f"{e},{t},{v}\n" for e, t, v in rows))


def log_pictures(pictures: Mapping[str, Path]) -> None:
    """Each existing picture as an MLflow image keyed by its name: the UI's image charts put the same key of
    several runs side by side (a plain artifact shows one run at a time)."""
    import mlflow
    from PIL import Image

    for name, picture in pictures.items():
        if picture.is_file():
            with Image.open(picture) as image:
                mlflow.log_image(image.convert("RGB"), key=name, step=0)
