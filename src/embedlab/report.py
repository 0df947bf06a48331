"""The results tables printed at the end of ``make demo`` (``embedlab report``).

``results_report(params)`` is plain text for the terminal; with
``markdown=True`` the same sections and columns are GitHub-markdown tables
(``embedlab report --markdown``), which ``tools/update_readme_results.py``
writes into the README between its ``results`` markers.
"""

from __future__ import annotations

import json
from pathlib import Path

from embedlab.config import Params
from embedlab.tracking import tracking_uri

RETRIEVAL_COLUMNS = (
    ("step", "step", "{}"),
    ("classes", "n_classes", "{}"),
    ("epochs", "epochs", "{}"),
    ("train loss", "train_loss", "{:.3f}"),
    ("val loss", "val_loss", "{:.3f}"),
    ("μAP before", "before_uAP", "{:.4f}"),
    ("μAP", "uAP", "{:.4f}"),
    ("μAP post", "post_uAP", "{:.4f}"),  # after whitening + score normalisation (evaluate.postprocess)
    ("R@P90", "recall_at_p90", "{:.4f}"),
    ("R@rank1", "recall_at_rank1", "{:.4f}"),
    ("R@rank10", "recall_at_rank10", "{:.4f}"),
)


FACE_COLUMNS = (
    ("phase", "phase", "{}"),
    ("miner", "miner", "{}"),
    ("epochs", "epochs", "{}"),
    ("train loss", "train_loss", "{:.4f}"),
    ("EER before", "before_valid_eer", "{:.4f}"),
    ("EER", "valid_eer", "{:.4f}"),
    ("EER real-vs-fake", "valid_eer_fake_same_person", "{:.4f}"),
    ("EER other person", "valid_eer_other_person", "{:.4f}"),
    ("test EER", "test_eer", "{:.4f}"),
    ("test AUC", "test_roc_auc", "{:.4f}"),
)


DECODER_COLUMNS = (
    ("epochs", "epochs", "{}"),
    ("train loss", "train_loss", "{:.4f}"),
    ("cos mean before", "before_cosine_mean", "{:.4f}"),
    ("cos min", "cosine_min", "{:.4f}"),
    ("cos mean", "cosine_mean", "{:.4f}"),
    ("cos median", "cosine_median", "{:.4f}"),
    ("cos max", "cosine_max", "{:.4f}"),
    ("threshold", "threshold", "{:.4f}"),
    ("share above", "above_threshold", "{:.1%}"),
    ("SSIM before", "before_ssim_mean", "{:.3f}"),  # decoded face vs its photo, as a person would compare them
    ("SSIM", "ssim_mean", "{:.3f}"),
    ("PSNR dB", "psnr_mean", "{:.2f}"),
)


def _cell(fmt: str, value) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def metric_rows(reports_root: Path, order: list[str], depth: int = 1) -> list[dict]:
    """``<reports_root>/<name>/metrics.json`` of each name in ``order``, then any others found; a name is
    ``depth`` folders deep (GeM's ``<start>/<recipe>``)."""
    found = {p.parent.relative_to(reports_root).as_posix(): p
             for p in sorted(reports_root.glob("*/" * depth + "metrics.json"))}
    names = [name for name in order if name in found] + sorted(set(found) - set(order))
    return [json.loads(found[name].read_text()) for name in names]


def drip_rows(params: Params, reports_root: Path = Path("reports/drip")) -> list[dict]:
    """Metrics of each drip step in schedule order, then any other runs found."""
    return metric_rows(reports_root, list(params.drip_schedule))


def gem_rows(params: Params, reports_root: Path = Path("reports/gem")) -> list[dict]:
    """Metrics of each GeM run: start by start (pipeline.gem_starts), set by set (pipeline.gem)."""
    return metric_rows(reports_root, [f"{start}/{recipe}" for start in params.pipeline.gem_starts
                                      for recipe in params.pipeline.gem], depth=2)


def single_row(report: Path) -> list[dict]:
    """The one row of a stage that runs once (ensemble, decoder), if it has run."""
    return [json.loads(report.read_text())] if report.is_file() else []


def format_table(rows: list[dict], columns=RETRIEVAL_COLUMNS, markdown: bool = False) -> str:
    header = [title for title, _, _ in columns]
    body = [[_cell(fmt, row.get(key)) for _, key, fmt in columns] for row in rows]
    if markdown:
        return markdown_table(header, body)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A GitHub-markdown table: the first column left-aligned (names), the others right-aligned."""
    row = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    rule = "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"
    return "\n".join([row(header), rule, *(row(r) for r in body)])


def robustness_rows(report: Path = Path("reports/robustness/metrics.json")) -> tuple[list[dict], tuple]:
    """One row per member of the robustness evaluation, a column per edit kind (μAP)."""
    if not report.is_file():
        return [], (("model", "member", "{}"),)
    scores = json.loads(report.read_text())
    kinds = list(next(iter(scores.values()), {}))
    columns = (("model", "member", "{}"), *((kind.replace("_", " "), kind, "{:.4f}") for kind in kinds))
    return [{"member": member, **per_kind} for member, per_kind in scores.items()], columns


def results_report(params: Params, markdown: bool = False) -> str:
    """The results tables of every stage that has run; ``markdown``: GitHub tables, no UI hint."""
    sections = [
        ("Classic baseline: 64-bit perceptual hash, no training (what a learned model must beat)",
         single_row(Path("reports/baseline/phash/metrics.json")), RETRIEVAL_COLUMNS, "baseline"),
        ("Drip training on the DISC query/reference sets", drip_rows(params), RETRIEVAL_COLUMNS, "drip"),
        ("GeM trainer on generated training sets (step = gem/<start>/<recipe>)", gem_rows(params), RETRIEVAL_COLUMNS, "gem"),
        ("Ensemble: concatenated descriptors (μAP post: whitened + score-normalised)",
         single_row(Path("reports/ensemble/metrics.json")), RETRIEVAL_COLUMNS, "ensemble"),
        ("Robustness set: μAP per held-out edit kind, distractors included (plot: reports/robustness/per_edit.png)",
         *robustness_rows(), "robustness"),
        ("Face encoder (triplet stage): EER on the validation pairs, then the labelled test pairs",
         metric_rows(Path("reports/triplet"), ["pretrain", "finetune"]), FACE_COLUMNS, "triplet"),
        ("Decoder: cosine between test templates and the templates of their decoded faces",
         single_row(Path("reports/decoder/metrics.json")), DECODER_COLUMNS, "decoder"),
    ]
    if markdown:
        return "\n\n".join(
            f"**{title.replace('<', '&lt;').replace('>', '&gt;')}**\n\n"
            + (format_table(rows, columns, markdown=True) if rows else f"_(no {stage} results yet: run `dvc repro`)_")
            for title, rows, columns, stage in sections)
    parts = [f"{title}\n{format_table(rows, columns) if rows else f'(no {stage} results yet: run `dvc repro`)'}"
             for title, rows, columns, stage in sections]
    uri = tracking_uri(params.tracking.uri)
    return (
        "\n\n".join(parts) + "\n\n"
        "Compare the runs in the MLflow UI:\n"
        f"  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n"
        "  then open http://127.0.0.1:5000"
    )
