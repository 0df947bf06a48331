"""Score models on the robustness query set (``data/robustness.py``): μAP overall and per edit kind.

    embedlab robustness            # robustness.members, on robustness.out

A member is ``<stage>/<name>`` under ``models/``: a trained model (its
``descriptor_model.safetensors``), ``drip/pretrained`` (the ImageNet
backbone's own features, what drip starts from) or ``baseline/phash`` (the
perceptual hash). Each embeds the robustness queries and every DISC
reference (a member's own reference file from its evaluation is reused when
it covers all references); the search and μAP are the models' evaluation.
The μAP of an edit kind scores that kind's queries together with every
distractor, so a model that matches distractors pays for it in every kind.

Writes ``reports/robustness/metrics.json`` ({member: {all, <kind>...}}),
the plot ``reports/robustness/per_edit.png`` and its data
``reports/plots/robustness/per_edit.csv``, and one MLflow run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import mlflow

from embedlab import tracking
from embedlab.atomic import write_csv_atomic, write_json_atomic
from embedlab.config import Params
from embedlab.data.disc import DiscLayout
from embedlab.data.robustness import DISTRACTOR, GROUND_TRUTH, QUERY_DIR, read_edit_kinds, read_manifest
from embedlab.descriptors import DescriptorReader
from embedlab.evaluation.disc_search import evaluate_disc
from embedlab.evaluation.phash import phash_to_file
from embedlab.images import list_images
from embedlab.stages.ensemble import expand_members

ALL = "all"
PHASH_MEMBER = "baseline/phash"
Embedder = Callable[[list[Path], Path], None]


def member_embedder(member: str, params: Params, models_root: Path = Path("models")) -> Embedder:
    """A function that writes ``member``'s descriptors of some images to an h5 file."""
    if member == PHASH_MEMBER:
        def hash_images(paths: list[Path], out: Path) -> None:
            phash_to_file(paths, out, params.data.on_bad_image)

        return hash_images
    folder = models_root / member
    exported, backbone = folder / "descriptor_model.safetensors", folder / "backbone.safetensors"
    if exported.is_file():
        from embedlab.models.checkpoints import load_descriptor_model

        model = load_descriptor_model(exported)
    elif backbone.is_file():
        from embedlab.models.backbone import BackboneFeatures

        spec = json.loads(backbone.with_suffix(".json").read_text())
        model = BackboneFeatures(spec["backbone"], str(backbone), params.drip.img_size, params.drip.gem_p)
    else:
        raise FileNotFoundError(f"robustness member {member!r}: neither {exported} nor {backbone} exists; "
                                "train it first (`dvc repro`)")

    def embed(paths: list[Path], out: Path) -> None:
        from embedlab.evaluation.embed import embed_to_file

        embed_to_file(model, paths, out, on_bad_image=params.data.on_bad_image, runtime=params.runtime,
                      progress=False)

    return embed


def _reference_file(member: str, references: list[Path], folder: Path, embed: Embedder,
                    models_root: Path) -> Path:
    """The member's evaluation file of the references when it holds every one, else a fresh one."""
    evaluated = models_root / member / "eval" / "descriptors" / "reference.h5"
    if evaluated.is_file() and DescriptorReader(evaluated).names == [p.stem for p in references]:
        return evaluated
    out = folder / "reference.h5"
    embed(references, out)
    return out


def run_robustness(params: Params, models_root: Path = Path("models"),
                   report_dir: Path = Path("reports/robustness"),
                   plots_dir: Path = Path("reports/plots/robustness")) -> dict:
    cfg = params.robustness
    root = Path(cfg.out)
    manifest = read_manifest(root)
    queries = list_images(root / QUERY_DIR)
    kinds = read_edit_kinds(root)
    layout = DiscLayout(Path(params.data.disc))
    references = list_images(layout.reference_dir)
    members = expand_members(cfg.members, models_root, evaluated=False)
    query_ids, reference_ids = [p.stem for p in queries], [p.stem for p in references]
    distractors = [q for q in query_ids if kinds[q] == DISTRACTOR]
    edit_kinds = [k for k in manifest["edits"] if k in set(kinds.values())]
    scores: dict[str, dict[str, float]] = {}
    with tracking.stage_run("robustness", "robustness", params.tracking.experiment, params.tracking.uri,
                            tags={"embedlab.robustness_members": ",".join(members)}):
        tracking.log_params({"robustness.members": ",".join(members), "robustness.queries": len(queries),
                             "robustness.seed": cfg.seed, "robustness.per_kind": cfg.per_kind,
                             "robustness.distractors": cfg.distractors})
        for member in members:
            folder = models_root / "robustness" / member
            embed = member_embedder(member, params, models_root)
            embed(queries, folder / "query.h5")
            reference = _reference_file(member, references, folder, embed, models_root)
            scores[member] = {}
            for kind in [ALL, *edit_kinds]:
                scored = None if kind == ALL else [q for q in query_ids if kinds[q] == kind] + distractors
                metrics = evaluate_disc(folder / "query.h5", reference, root / GROUND_TRUTH, folder / "eval" / kind,
                                        k=params.evaluate.k, all_query_ids=query_ids, all_reference_ids=reference_ids,
                                        scored_query_ids=scored)
                scores[member][kind] = metrics["uAP"]
            mlflow.log_metrics({f"robustness/{member}/{kind}/uAP": v for kind, v in scores[member].items()})
        write_json_atomic(report_dir / "metrics.json", scores)
        write_csv_atomic(plots_dir / "per_edit.csv", ["member", "edit", "uAP"],
                         [(m, k, f"{v:.6f}") for m, per in scores.items() for k, v in per.items()])
        figure = per_edit_figure(scores, [ALL, *edit_kinds], len(queries), len(distractors))
        figure.savefig(report_dir / "per_edit.png", dpi=110)
        mlflow.log_figure(figure, "robustness/per_edit.png")
        mlflow.log_artifact(str(report_dir / "metrics.json"), "reports")
    return scores


def per_edit_figure(scores: dict[str, dict[str, float]], kinds: list[str], n_queries: int, n_distractors: int):
    """Grouped bars: μAP of each member on each edit kind (and on all queries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    members = list(scores)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(kinds)), 4.2))
    width = 0.8 / max(1, len(members))
    x = np.arange(len(kinds))
    for i, member in enumerate(members):
        values = [scores[member].get(k, 0.0) for k in kinds]
        bars = ax.bar(x + (i - (len(members) - 1) / 2) * width, values, width, label=member)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=6, padding=1, rotation=90)
    ax.set_xticks(x, [k.replace("_", " ") for k in kinds])
    top = max((v for per in scores.values() for v in per.values()), default=1.0)
    ax.set_ylim(0, min(1.05, 1.25 * top + 0.05))  # room for the labels, no empty upper half
    ax.set_ylabel("μAP")
    ax.set_title(f"Robustness set: μAP per edit kind ({n_queries} queries, {n_distractors} of them distractors)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
