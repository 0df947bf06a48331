"""Score a face encoder on verification pairs (EER and friends), and write a submission.

    embedlab face-submission --checkpoint models/triplet/finetune/encoder.safetensors \
        --pairs data/raw/faces/test_public --out submission.csv

Each distinct image of a pair list is embedded once; a pair's score is the
cosine similarity of its two embeddings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from embedlab.atomic import write_csv_atomic
from embedlab.config import RuntimeConfig
from embedlab.tracking import picture_title
from embedlab.const import BEFORE
from embedlab.data.faces import PairImages, read_test_pairs
from embedlab.models.checkpoints import load_descriptor_model
from embedlab.evaluation.embed import embed_paths
from embedlab.evaluation.pair_pictures import write_pair_pictures
from embedlab.verification import verification_report, write_roc


def pair_similarities(model: torch.nn.Module, pairs: Sequence, root: Path | None,
                      runtime: RuntimeConfig | None = None, on_bad_image: str = "fail") -> tuple[np.ndarray, float]:
    """Cosine similarity of every pair (NaN where an image was skipped), and images embedded per second."""
    images = PairImages(pairs, model.spec.img_size, root=root, on_bad_image=on_bad_image)
    start = time.perf_counter()
    result = embed_paths(model, images.paths, on_bad_image=on_bad_image, runtime=runtime, progress=False)
    seconds = time.perf_counter() - start
    table = np.full((len(images.paths), result.vectors.shape[1]), np.nan, dtype=np.float32)
    table[result.kept] = result.vectors
    return images.similarities(table), len(result.kept) / max(seconds, 1e-9)


def score_pairs(model: torch.nn.Module, pairs: Sequence, same: Sequence[int], kinds: Sequence[str] | None,
                root: Path | None, out_dir: Path, prefix: str, runtime: RuntimeConfig | None = None,
                on_bad_image: str = "fail") -> dict:
    """Verification metrics of ``pairs`` (``<prefix>eer`` ...) and the ROC curve in ``out_dir``."""
    scores, rate = pair_similarities(model, pairs, root, runtime, on_bad_image)
    keep = ~np.isnan(scores)  # pairs with a skipped image
    same = np.asarray(same)[keep]
    kinds = None if kinds is None else np.asarray(kinds)[keep]
    report = verification_report(scores[keep], same, kinds)
    write_roc(scores[keep], same, out_dir)
    if not prefix.startswith(BEFORE):
        write_pair_pictures(scores[keep], same, kinds, out_dir, picture_title(prefix))
    metrics = {f"{prefix}{k}": v for k, v in report.items() if v is not None}
    metrics[f"{prefix}skipped_pairs"] = int((~keep).sum())
    metrics[f"{prefix}embed_images_per_s"] = round(rate, 1)
    return metrics


def write_face_submission(checkpoint: str | Path, pair_dir: str | Path, out: str | Path,
                          runtime: RuntimeConfig | None = None) -> dict:
    """``pair_id,similarity`` for every pair folder of ``pair_dir`` (the challenge's submission)."""
    model = load_descriptor_model(checkpoint)
    pairs = read_test_pairs(pair_dir)
    scores, rate = pair_similarities(model, pairs, None, runtime)
    write_csv_atomic(out, ["pair_id", "similarity"],
                     [(pair_id, f"{score:.6f}") for (pair_id, *_), score in zip(pairs, scores)])
    return {"out": str(out), "pairs": len(pairs), "images_per_s": round(rate, 1)}
