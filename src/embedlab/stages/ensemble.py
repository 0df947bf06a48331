"""Ensemble stage: several trained models' descriptors concatenated, then post-processed.

    embedlab ensemble          # the members of evaluate.ensemble, e.g. [drip/s3, gem/imagenet/big]

Each member is ``<stage>/<name>`` whose evaluation wrote
``models/<stage>/<name>/eval/descriptors/{query,reference,train}.h5`` (the
training descriptors exist when ``evaluate.train_descriptors`` > 0). The
table row shows μAP of the plain concatenation and, as ``μAP post``, after
the evaluate stage's post-processing (whitening of the concatenation, score
normalisation). A member may be a pattern: ``gem/*/*`` is every GeM run of the
start × set matrix (the original's 33-model ensemble in one line).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow

from embedlab import tracking
from embedlab.const import METRICS_JSON
from embedlab.atomic import write_json_atomic
from embedlab.config import Params
from embedlab.descriptors import read_descriptors
from embedlab.postprocess import PostprocessConfig, postprocess_files
from embedlab.evaluation.disc_model import ScoringSets, postprocess_settings


def member_descriptors(member: str, models_root: Path = Path("models")) -> dict[str, Path]:
    """The h5 files a member's evaluation wrote, or a clear error saying what to run."""
    folder = models_root / member / "eval" / "descriptors"
    files = {subset: folder / f"{subset}.h5" for subset in ("query", "reference", "train")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"ensemble member {member!r}: missing {', '.join(missing)}; train and evaluate it "
                                f"first with evaluate.train_descriptors > 0 (`dvc repro`)")
    return files


def expand_members(members: list[str], models_root: Path = Path("models"), evaluated: bool = True) -> list[str]:
    """Members as given, a glob pattern (``gem/*/*``) replaced by the runs it matches, sorted (``evaluated``:
    those with evaluation descriptors only)."""
    expanded = []
    for member in members:
        if not any(c in member for c in "*?["):
            expanded.append(member)
            continue
        found = sorted(p.relative_to(models_root).as_posix() for p in models_root.glob(member)
                       if (p / "eval" / "descriptors").is_dir() or (not evaluated and p.is_dir()))
        if not found:
            raise FileNotFoundError(f"member pattern {member!r}: no {'evaluated ' if evaluated else ''}run under "
                                    f"{models_root} matches it (`dvc repro` the stages first)")
        expanded.extend(m for m in found if m not in expanded)
    return expanded


def run_ensemble(params: Params, members: list[str] | None = None, out_dir: Path = Path("models/ensemble"),
                 report_dir: Path = Path("reports/ensemble")) -> dict:
    members = expand_members(list(members or params.evaluate.ensemble))
    if len(members) < 2:
        raise ValueError(f"params.yaml: evaluate.ensemble needs at least 2 members, got {members}")
    files = [member_descriptors(m) for m in members]
    scoring = ScoringSets.of(params)  # the members' own images: all, or evaluate's fixed subset
    sets = {subset: [f[subset] for f in files] for subset in ("query", "reference", "train")}

    def score(cfg: PostprocessConfig, folder: Path, tag: str) -> dict:
        query, reference, _ = postprocess_files(sets["query"], sets["reference"], sets["train"],
                                                folder / "descriptors", cfg)
        return scoring.score(query, reference, folder, params, tag)

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
