"""The results table printed at the end of ``make demo`` (``embedlab report``)."""

from __future__ import annotations

import json
from pathlib import Path

from embedlab.config import Params
from embedlab.tracking import tracking_uri

COLUMNS = (
    ("step", "step", "{}"),
    ("classes", "n_classes", "{}"),
    ("epochs", "epochs", "{}"),
    ("train loss", "train_loss", "{:.3f}"),
    ("val loss", "val_loss", "{:.3f}"),
    ("μAP before", "before_uAP", "{:.4f}"),
    ("μAP", "uAP", "{:.4f}"),
    ("R@P90", "recall_at_p90", "{:.4f}"),
    ("R@rank1", "recall_at_rank1", "{:.4f}"),
    ("R@rank10", "recall_at_rank10", "{:.4f}"),
)


def _cell(fmt: str, value) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def drip_rows(params: Params, reports_root: Path = Path("reports/drip")) -> list[dict]:
    """Metrics of each drip step in schedule order, then any other runs found."""
    found = {p.parent.name: p for p in sorted(reports_root.glob("*/metrics.json"))}
    order = [name for name in params.drip.schedule if name in found] + sorted(set(found) - set(params.drip.schedule))
    return [json.loads(found[name].read_text()) for name in order]


def format_table(rows: list[dict]) -> str:
    header = [title for title, _, _ in COLUMNS]
    body = [[_cell(fmt, row.get(key)) for _, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def results_report(params: Params) -> str:
    rows = drip_rows(params)
    table = format_table(rows) if rows else "(no drip results yet: run `dvc repro`)"
    uri = tracking_uri(params.tracking.uri)
    return (
        "Drip training on the DISC query/reference sets\n"
        f"{table}\n\n"
        "Compare the runs in the MLflow UI:\n"
        f"  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n"
        "  then open http://127.0.0.1:5000"
    )
