"""Names in one place: the files of a run's folder and the metric keys the tables and sweeps read.

A run folder (``models/<stage>/<run>``) holds ``run.json``, ``checkpoints/``
(``last.ckpt``, ``best.ckpt``), the exported model, ``eval/`` and
``eval_before.json``; its report folder (``reports/<stage>/<run>``) holds
``metrics.json``, which DVC reads as the stage's metrics.
"""

from __future__ import annotations

from pathlib import Path

# --- a run's folder ---------------------------------------------------------------------------
RUN_STATE = "run.json"  # fingerprint, MLflow run id, complete (embedlab.stages.run_state)
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"  # written every epoch: what a resume and the next step start from
BEST_CKPT = "best.ckpt"  # the monitored metric's best epoch, written just before last.ckpt
EVAL = "eval"  # the final evaluation's files
EVAL_BEFORE = "eval_before"  # the starting model's evaluation ...
EVAL_BEFORE_JSON = "eval_before.json"  # ... and its scores, kept for a resumed run
SKIPPED_IMAGES = "skipped_images.tsv"  # unreadable training images, with on_bad_image: skip
W_MATRIX = "w_matrix.safetensors"  # a drip step's class centroids
DESCRIPTOR_MODEL = "descriptor_model.safetensors"  # exported drip / GeM model (+ .json spec)
ENCODER = "encoder.safetensors"  # exported face encoder
DECODER = "decoder.safetensors"  # exported template decoder
LOGGED_MODEL = "model"  # the exported model as MLflow's logged model of the run (embedlab.mlflow_model)
MODEL_STAGES = ("drip", "gem", "triplet")  # the stages whose export is a descriptor model (not the decoder's)

# --- evaluation files and reports ---------------------------------------------------------------
METRICS_JSON = "metrics.json"
PR_CURVE_CSV = "pr_curve.csv"
PR_CURVE_HEADER = "precision,recall,threshold\n"
ROC_CSV = "roc.csv"
ROC_HEADER = "fpr,tpr,threshold\n"

# --- metric keys --------------------------------------------------------------------------------
BEFORE = "before_"  # prefix of the starting model's scores
SPEED = "speed"  # MLflow group of a run's throughput figures (speed/<name>_per_s), apart from its scores
DISC_HEADLINE = ("uAP", "recall_at_p90", "threshold_at_p90", "recall_at_rank1", "recall_at_rank10")
FACE_HEADLINE = ("valid_eer", "valid_eer_fake_same_person", "valid_eer_other_person", "test_eer", "test_roc_auc")


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / LAST_CKPT
