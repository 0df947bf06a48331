"""Baseline stage: the 64-bit perceptual hash scored on the DISC sets like every trained model.

    embedlab baseline

Hashes the query and reference images (``evaluation/phash.py``) into
``models/baseline/phash/eval/descriptors``, scores them with the models'
own search and μAP (the same images: all, or evaluate's fixed subset) and
writes ``reports/baseline/phash/metrics.json`` and an MLflow run
``baseline/phash``. No training and no weights: the row every learned model
in ``embedlab report`` is read against.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from embedlab import tracking
from embedlab.atomic import write_json_atomic
from embedlab.config import Params
from embedlab.const import METRICS_JSON, SKIPPED_IMAGES
from embedlab.evaluation.disc_model import ScoringSets
from embedlab.evaluation.phash import DIM, phash_to_file

NAME = "phash"


def run_baseline(params: Params, out_dir: Path = Path("models/baseline") / NAME,
                 report_dir: Path = Path("reports/baseline") / NAME) -> dict:
    sets = ScoringSets.of(params)
    eval_dir = out_dir / "eval"
    files = {subset: eval_dir / "descriptors" / f"{subset}.h5" for subset in ("query", "reference")}
    with tracking.stage_run("baseline", f"baseline/{NAME}", params.tracking.experiment, params.tracking.uri,
                            tags={"embedlab.baseline": NAME}):
        tracking.log_params({"baseline.method": "imagehash.phash", "baseline.bits": DIM})
        skipped = sum(phash_to_file(sets.paths[subset], files[subset], params.data.on_bad_image,
                                    bad_log=out_dir / SKIPPED_IMAGES) for subset in files)
        summary = {"step": f"baseline: perceptual hash ({DIM} bit)",
                   **sets.score(files["query"], files["reference"], eval_dir, params), "skipped_images": skipped}
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        write_json_atomic(report_dir / METRICS_JSON, summary)
        mlflow.log_artifact(str(report_dir / METRICS_JSON), "reports")
    return summary
