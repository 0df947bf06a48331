"""Score a descriptor model on the DISC query/reference sets (μAP and friends).

Shared by the training stages: embed both sets to h5, search, evaluate.
"""

from __future__ import annotations

from pathlib import Path

from embedlab.config import Params
from embedlab.data.disc import DiscLayout
from embedlab.descriptors import write_descriptors
from embedlab.images import list_images
from embedlab.models.backbone import DescriptorModel
from embedlab.stages.embed import embed_paths
from embedlab.stages.evaluate import evaluate_disc

# The headline numbers copied into stage summaries and the results table.
HEADLINE = ("uAP", "recall_at_p90", "threshold_at_p90", "recall_at_rank1", "recall_at_rank10")


def evaluate_descriptor_model(model: DescriptorModel, params: Params, out_dir: Path, prefix: str = "") -> dict:
    """Embed DISC query + reference into ``out_dir/descriptors`` and evaluate into ``out_dir``."""
    layout = DiscLayout(Path(params.data.disc))
    layout.validate()
    files, ids, skipped = {}, {}, 0
    for subset, folder in (("query", layout.query_dir), ("reference", layout.reference_dir)):
        paths = list_images(folder)
        result = embed_paths(model, paths, batch_size=params.embed.batch_size,
                             num_workers=params.embed.num_workers, on_bad_image=params.embed.on_bad_image)
        files[subset], ids[subset] = out_dir / "descriptors" / f"{subset}.h5", [p.stem for p in paths]
        skipped += len(result.skipped)
        write_descriptors(files[subset], result.names, result.vectors)
    metrics = evaluate_disc(files["query"], files["reference"], layout.ground_truth_csv, out_dir, k=params.evaluate.k,
                            all_query_ids=ids["query"], all_reference_ids=ids["reference"])
    return {**{f"{prefix}{k}": metrics[k] for k in HEADLINE}, f"{prefix}skipped_images": skipped}
