"""notebooks/compare_runs.ipynb executed for real (nbclient, this venv's python3 kernel), so it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

import servers
from conftest import PROJECT

NOTEBOOK = PROJECT / "notebooks" / "compare_runs.ipynb"


def execute(tracking_uri: str, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def text_of(nb: nbformat.NotebookNode) -> str:
    parts = []
    for out in outputs(nb):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts += [out.data.get("text/plain", ""), out.data.get("text/html", "")]
    return "\n".join(parts)


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert any("parameters" in cell.metadata.get("tags", []) for cell in code)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_demo) -> Path:
    return servers.drip_store(tmp_path_factory, tiny_demo)


@pytest.mark.slow
def test_notebook_plots_and_tabulates_the_runs_of_a_real_store(store: Path, monkeypatch):
    uri = f"sqlite:///{store / 'mlflow.db'}"
    nb = execute(uri, monkeypatch)

    errors = [out for out in outputs(nb) if out.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    images = [out for out in outputs(nb) if "image/png" in out.get("data", {})]
    assert len(images) >= 3, "expected the μAP bars, μAP vs intensity and the learning curves"

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])
    drip = {r.info.run_name: r for r in runs if r.data.tags.get("embedlab.stage") == "drip"}
    assert set(drip) == {"drip/weak", "drip/strong"}
    tables = [out.data["text/html"] for out in outputs(nb) if "text/html" in out.get("data", {})]
    assert tables, "no side-by-side table"
    table = tables[-1]
    for name, r in drip.items():
        assert name in table
        assert f"{r.data.metrics['uAP']:.4f}" in table
        assert f"{r.data.metrics['post_uAP']:.4f}" in table
    assert "0.3000" in table and "0.9000" in table  # their qry_augs_intensity
    # Missing stages (gem, triplet) are no error, and no column of their own.
    assert "test_eer" not in table


@pytest.mark.slow
def test_notebook_runs_on_a_store_without_the_experiment(tmp_path: Path, monkeypatch):
    nb = execute(f"sqlite:///{tmp_path / 'empty.db'}", monkeypatch)
    assert not [out for out in outputs(nb) if out.output_type == "error"]
    text = text_of(nb)
    assert "no such experiment" in text and "no retrieval runs" in text and "no stage runs" in text
