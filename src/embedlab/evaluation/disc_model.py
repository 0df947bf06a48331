"""Score a descriptor model on the DISC query/reference sets (μAP and friends).

Shared by the training stages: embed both sets to h5, search, evaluate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from embedlab.const import DISC_HEADLINE
from embedlab.config import Params
from embedlab.data.disc import DiscLayout, read_ground_truth
from embedlab.images import list_images
from embedlab.postprocess import PostprocessConfig, postprocess_files
from embedlab.evaluation.embed import embed_to_file
from embedlab.evaluation.disc_search import evaluate_disc
from embedlab.evaluation.multiscale import embed_multiscale
from embedlab.evaluation.retrieval_grid import write_retrieval_pictures
from embedlab.run_inputs import DataInput, first
from embedlab.tracking import picture_title


@dataclasses.dataclass
class ScoringSets:
    """The DISC images one evaluation embeds and scores, as ``evaluate`` says (all, or a fixed subset)."""

    layout: DiscLayout
    paths: dict[str, list[Path]]  # query, reference (and train when evaluate.train_descriptors > 0)
    ids: dict[str, list[str]]  # every query / reference id: the ground truth's
    scored: list[str] | None  # the scored queries of a fixed subset, else None (all)

    @classmethod
    def of(cls, params: Params) -> "ScoringSets":
        layout = DiscLayout(Path(params.data.disc))
        layout.validate()
        paths = {"query": list_images(layout.query_dir), "reference": list_images(layout.reference_dir)}
        ids = {name: [p.stem for p in paths[name]] for name in ("query", "reference")}
        fixed_subset = bool(params.evaluate.queries or params.evaluate.references)
        if fixed_subset:
            paths["query"], paths["reference"] = scoring_subset(paths["query"], paths["reference"],
                                                                layout.ground_truth_csv, params.evaluate.queries,
                                                                params.evaluate.references, params.seed)
        if params.evaluate.train_descriptors > 0:
            paths["train"] = list_images(layout.training_dir)[:params.evaluate.train_descriptors]
        return cls(layout, paths, ids, [p.stem for p in paths["query"]] if fixed_subset else None)

    def data_inputs(self, params: Params) -> list[DataInput]:
        """What this evaluation reads, as the run's datasets: the query and reference images, the ground truth,
        and the training images post-processing is fitted on. A fixed subset is a part of its set."""
        subset = None if self.scored is None else {
            "queries": params.evaluate.queries, "references": params.evaluate.references, "seed": params.seed}
        layout = self.layout
        inputs = [DataInput("disc21/query", layout.query_dir, {"images": len(self.paths["query"])}, subset),
                  DataInput("disc21/reference", layout.reference_dir, {"images": len(self.paths["reference"])}, subset),
                  DataInput("disc21/ground_truth", layout.ground_truth_csv,
                            {"matches": len(read_ground_truth(layout.ground_truth_csv))})]
        if "train" in self.paths:
            train = len(self.paths["train"])
            inputs.append(DataInput("disc21/postprocess", layout.training_dir, {"images": train},
                                    first(train, len(list_images(layout.training_dir)))))
        return inputs

    def score(self, query: Path, reference: Path, folder: Path, params: Params, prefix: str = "") -> dict:
        """μAP and friends of two descriptor files, keys prefixed. The pictures are titled with the active
        MLflow run's name; a model's own scores (no prefix: not before training, not post-processed) also
        get the retrieval grids (``evaluation/retrieval_grid.py``)."""
        title = picture_title(prefix)
        metrics = evaluate_disc(query, reference, self.layout.ground_truth_csv, folder, k=params.evaluate.k,
                                all_query_ids=self.ids["query"], all_reference_ids=self.ids["reference"],
                                scored_query_ids=self.scored, title=title)
        if not prefix:
            write_retrieval_pictures(folder, read_ground_truth(self.layout.ground_truth_csv), self.paths["query"],
                                     self.paths["reference"], title, params.seed)
        return {f"{prefix}{k}": metrics[k] for k in DISC_HEADLINE}


def scoring_data(params: Params, scores: bool) -> list[DataInput]:
    """The DISC sets a retrieval stage is scored on, as its MLflow datasets (none when it ``scores`` nothing)."""
    return ScoringSets.of(params).data_inputs(params) if scores else []


def embed_title(subset: str, prefix: str = "") -> str:
    """The progress bar's title of one embedded set: "embed query", "embed reference (before)"."""
    scored = prefix.strip("_").replace("_", " ")
    return f"embed {subset}" + (f" ({scored})" if scored else "")


def evaluate_descriptor_model(model: torch.nn.Module, params: Params, out_dir: Path, prefix: str = "") -> dict:
    """Embed DISC query + reference into ``out_dir/descriptors`` and evaluate into ``out_dir``.

    With ``evaluate.train_descriptors`` > 0, that many DISC training images are
    embedded too, the descriptors are post-processed (whitening, score
    normalisation, ...) into ``out_dir/post`` and scored again: the ``post_``
    metrics, so one table shows μAP before and after post-processing.
    """
    sets = ScoringSets.of(params)
    files, embedded, skipped = {}, {}, 0
    for subset, paths in sets.paths.items():
        files[subset] = out_dir / "descriptors" / f"{subset}.h5"
        title = embed_title(subset, prefix)
        if params.evaluate.scales:
            result = embed_multiscale(model, paths, files[subset], params.evaluate.scales,
                                      params.data.on_bad_image, params.runtime, progress=title)
        else:
            result = embed_to_file(model, paths, files[subset], on_bad_image=params.data.on_bad_image,
                                   runtime=params.runtime, progress=title)
        embedded[subset] = result.settings["vectors"]
        skipped += len(result.skipped)

    summary = {**sets.score(files["query"], files["reference"], out_dir, params, prefix),
               f"{prefix}skipped_images": skipped}
    if "train" in files:
        query, reference, _ = postprocess_files([files["query"]], [files["reference"]], [files["train"]],
                                                out_dir / "post" / "descriptors",
                                                postprocess_settings(params, embedded["train"], model.descriptor_dim))
        summary.update(sets.score(query, reference, out_dir / "post", params, f"{prefix}post_"))
    return summary


def scoring_subset(queries: list[Path], references: list[Path], ground_truth: Path, n_queries: int,
                   n_references: int, seed: int) -> tuple[list[Path], list[Path]]:
    """A fixed subset to score on (0: all of a set): ``n_queries`` queries drawn with ``seed``, and
    ``n_references`` references: every match of the chosen queries, then others drawn with ``seed``
    (all matches stay when they alone are more)."""
    rng = np.random.default_rng([seed, 14])
    if n_queries and n_queries < len(queries):
        queries = [queries[i] for i in sorted(rng.choice(len(queries), n_queries, replace=False))]
    if n_references and n_references < len(references):
        chosen = {q.stem for q in queries}
        matched = {r for q, r in read_ground_truth(ground_truth) if q in chosen}
        others = [i for i, r in enumerate(references) if r.stem not in matched]
        extra = rng.choice(len(others), max(0, n_references - len(matched)), replace=False) \
            if n_references > len(matched) else []
        keep = matched | {references[others[i]].stem for i in extra}
        references = [r for r in references if r.stem in keep]
    return queries, references


def postprocess_settings(params: Params, n_train: int, dim: int) -> PostprocessConfig:
    """evaluate.postprocess; an unset whitening size fits the training set."""
    settings = params.evaluate.postprocess
    if settings.whiten and settings.whiten_dim is None:
        # PCA needs more samples than dimensions: a small demo training set caps the size.
        settings = dataclasses.replace(settings, whiten_dim=max(1, min(dim, n_train - 1)))
    return settings
