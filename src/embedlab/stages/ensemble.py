"""Ensemble stage: several trained models' descriptors concatenated, then post-processed.

    embedlab ensemble          # the members of evaluate.ensemble, e.g. [drip/s3, gem/big]

Each member is ``<stage>/<name>`` whose evaluation wrote
``models/<stage>/<name>/eval/descriptors/{query,reference,train}.h5`` (the
training descriptors exist when ``evaluate.train_descriptors`` > 0). The
table row shows μAP of the plain concatenation and, as ``μAP post``, after
the evaluate stage's post-processing (whitening of the concatenation, score
normalisation).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow

from embedlab import tracking
from embedlab.const import DISC_HEADLINE, METRICS_JSON
from embedlab.atomic import write_json_atomic
from embedlab.config import Params
from embedlab.data.disc import DiscLayout
from embedlab.descriptors import read_descriptors
from embedlab.images import list_images
from embedlab.postprocess import PostprocessConfig, postprocess_files
from embedlab.evaluation.disc_model import postprocess_settings
from embedlab.evaluation.disc_search import evaluate_disc


def member_descriptors(member: str, models_root: Path = Path("models")) -> dict[str, Path]:
    """The h5 files a member's evaluation wrote, or a clear error saying what to run."""
    folder = models_root / member / "eval" / "descriptors"
    files = {subset: folder / f"{subset}.h5" for subset in ("query", "reference", "train")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"ensemble member {member!r}: missing {', '.join(missing)}; train and evaluate it "
                                f"first with evaluate.train_descriptors > 0 (`dvc repro`)")
    return files


def run_ensemble(params: Params, members: list[str] | None = None, out_dir: Path = Path("models/ensemble"),
                 report_dir: Path = Path("reports/ensemble")) -> dict:
    members = list(members or params.evaluate.ensemble)
    if len(members) < 2:
        raise ValueError(f"params.yaml: evaluate.ensemble needs at least 2 members, got {members}")
    files = [member_descriptors(m) for m in members]
    layout = DiscLayout(Path(params.data.disc))
    ids = {subset: [p.stem for p in list_images(folder)]
           for subset, folder in (("query", layout.query_dir), ("reference", layout.reference_dir))}
    sets = {subset: [f[subset] for f in files] for subset in ("query", "reference", "train")}

    def score(cfg: PostprocessConfig, folder: Path, tag: str) -> dict:
        query, reference, _ = postprocess_files(sets["query"], sets["reference"], sets["train"],
                                                folder / "descriptors", cfg)
        metrics = evaluate_disc(query, reference, layout.ground_truth_csv, folder, k=params.evaluate.k,
                                all_query_ids=ids["query"], all_reference_ids=ids["reference"])
        return {f"{tag}{k}": metrics[k] for k in DISC_HEADLINE}

    n_train = len(read_descriptors(sets["train"][0])[0])
    dim = sum(read_descriptors(f)[1].shape[1] for f in sets["query"])
    plain = PostprocessConfig(whiten=False, score_norm_factor=0.0, stretch_factor=0.0)
    with tracking.stage_run("ensemble", "ensemble/" + "+".join(members), params.tracking.experiment,
                            params.tracking.uri, tags={"embedlab.ensemble": ",".join(members)}):
        post = postprocess_settings(params, n_train, dim)
        tracking.log_params({"ensemble.members": ",".join(members),
                             **{f"ensemble.postprocess.{k}": v for k, v in dataclasses.asdict(post).items()}})
        summary = {"step": "ensemble: " + " + ".join(members), "members": members,
                   **score(plain, out_dir / "concat", ""), **score(post, out_dir / "post", "post_")}
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        write_json_atomic(report_dir / METRICS_JSON, summary)
        mlflow.log_artifact(str(report_dir / METRICS_JSON), "reports")
    return summary
