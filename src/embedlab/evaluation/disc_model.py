"""Score a descriptor model on the DISC query/reference sets (μAP and friends).

Shared by the training stages: embed both sets to h5, search, evaluate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from embedlab.const import DISC_HEADLINE
from embedlab.config import Params
from embedlab.data.disc import DiscLayout
from embedlab.images import list_images
from embedlab.postprocess import PostprocessConfig, postprocess_files
from embedlab.evaluation.embed import embed_to_file
from embedlab.evaluation.disc_search import evaluate_disc



def evaluate_descriptor_model(model: torch.nn.Module, params: Params, out_dir: Path, prefix: str = "") -> dict:
    """Embed DISC query + reference into ``out_dir/descriptors`` and evaluate into ``out_dir``.

    With ``evaluate.train_descriptors`` > 0, that many DISC training images are
    embedded too, the descriptors are post-processed (whitening, score
    normalisation, ...) into ``out_dir/post`` and scored again: the ``post_``
    metrics, so one table shows μAP before and after post-processing.
    """
    layout = DiscLayout(Path(params.data.disc))
    layout.validate()
    sets = {"query": list_images(layout.query_dir), "reference": list_images(layout.reference_dir)}
    n_train = params.evaluate.train_descriptors
    if n_train > 0:
        sets["train"] = list_images(layout.training_dir)[:n_train]
    files, embedded, skipped = {}, {}, 0
    for subset, paths in sets.items():
        files[subset] = out_dir / "descriptors" / f"{subset}.h5"
        result = embed_to_file(model, paths, files[subset], on_bad_image=params.data.on_bad_image,
                               runtime=params.runtime)
        embedded[subset] = result.settings["vectors"]
        skipped += len(result.skipped)
    ids = {subset: [p.stem for p in sets[subset]] for subset in ("query", "reference")}

    def score(query: Path, reference: Path, folder: Path, tag: str) -> dict:
        metrics = evaluate_disc(query, reference, layout.ground_truth_csv, folder, k=params.evaluate.k,
                                all_query_ids=ids["query"], all_reference_ids=ids["reference"])
        return {f"{prefix}{tag}{k}": metrics[k] for k in DISC_HEADLINE}

    summary = {**score(files["query"], files["reference"], out_dir, ""), f"{prefix}skipped_images": skipped}
    if n_train > 0:
        query, reference, _ = postprocess_files([files["query"]], [files["reference"]], [files["train"]],
                                                out_dir / "post" / "descriptors",
                                                postprocess_settings(params, embedded["train"], model.descriptor_dim))
        summary.update(score(query, reference, out_dir / "post", "post_"))
    return summary


def postprocess_settings(params: Params, n_train: int, dim: int) -> PostprocessConfig:
    """evaluate.postprocess; an unset whitening size fits the training set."""
    settings = params.evaluate.postprocess
    if settings.whiten and settings.whiten_dim is None:
        # PCA needs more samples than dimensions: a small demo training set caps the size.
        settings = dataclasses.replace(settings, whiten_dim=max(1, min(dim, n_train - 1)))
    return settings
