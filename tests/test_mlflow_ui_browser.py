"""The MLflow UI in a real browser: two drip runs selected and compared, their μAP on the page.

`mlflow ui` serves a sqlite store holding two real tiny drip runs; headless
Chromium (Debian's, driven by Playwright; no browser download) opens the
experiment, ticks both runs, clicks Compare and reads the uAP row of the
compare view's metrics table. The screenshot is left in
test-artifacts/mlflow_compare.png ($EMBEDLAB_TEST_ARTIFACTS overrides the folder).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import servers
from conftest import cli_env

pytestmark = pytest.mark.slow


def ui_metric(value: float) -> str:
    """A metric value as the MLflow UI prints it (Utils.formatMetric of the 3.x UI)."""
    def js_round(x: float) -> float:  # Math.round: halves up
        return math.floor(x + 0.5)

    def js_str(x: float) -> str:  # Number.prototype.toString for these magnitudes
        return str(int(x)) if x == int(x) else repr(x)

    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    if abs(value) < 10:
        return js_str(js_round(value * 1000) / 1000)
    if abs(value) < 100:
        return js_str(js_round(value * 100) / 100)
    return js_str(js_round(value * 10) / 10)


def test_ui_metric_matches_the_ui_formatting():
    assert [ui_metric(v) for v in (0.0, 0.23742849914798014, 0.2481601, 2e-4, 1.0, 0.25, 12.345, 123.45)] == \
        ["0", "0.237", "0.248", "2.000e-4", "1", "0.25", "12.35", "123.5"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_demo) -> Path:
    return servers.drip_store(tmp_path_factory, tiny_demo)


@pytest.fixture
def mlflow_ui(store: Path, tmp_path: Path):
    port = servers.free_port()
    log = tmp_path / "mlflow-ui.log"
    cmd = ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with servers.process_group(cmd, log, cwd=store, env=cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")) as proc:
        url = f"http://127.0.0.1:{port}"
        servers.wait_http(f"{url}/health", proc, log)
        yield url


def test_compare_view_shows_the_uap_of_both_selected_runs(store: Path, mlflow_ui: str):
    chromium = servers.chromium_executable()
    from playwright.sync_api import expect, sync_playwright

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("embedlab")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("embedlab.stage") == "drip"}
    assert set(runs) == {"drip/weak", "drip/strong"}
    expected = {name: ui_metric(r.data.metrics["uAP"]) for name, r in runs.items()}
    screenshot = servers.artifact_path("mlflow_compare.png")
    screenshot.unlink(missing_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=servers.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(mlflow_ui, wait_until="load")
            # MLflow 3 opens on its GenAI view; runs live under "Model training".
            page.get_by_text("Model training", exact=True).first.click()
            page.get_by_role("link", name="embedlab", exact=True).first.click()

            for name in runs:
                row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
                expect(row).to_have_count(1)
                row.get_by_role("checkbox", name=re.compile("row selection")).check()
            page.get_by_role("button", name=re.compile(r"^Compare")).click()

            expect(page.get_by_text(re.compile(r"Comparing 2 Runs"))).to_be_visible()
            # The run details table names the runs in column order.
            names_row = page.get_by_role("row").filter(has=page.get_by_text("Run Name:", exact=True))
            expect(names_row).to_have_count(1)
            columns = [t.strip() for t in names_row.get_by_role("cell").all_inner_texts() if t.strip() in runs]
            uap = _scroll_to_metric_row(page, "uAP")
            shown = _row_values(page, uap)
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()

    assert sorted(columns) == sorted(runs), f"run columns {columns}"
    assert shown == [expected[name] for name in columns], \
        f"uAP row shows {shown} for {columns}, the store holds {expected}"
    assert screenshot.read_bytes()[:4] == b"\x89PNG"


def _scroll_to_metric_row(page, metric: str):
    """The metrics table is virtualised: a names grid and a values grid, scrolled
    together. Wheel over the values until the metric's row is rendered."""
    from playwright.sync_api import expect

    # The names grid: each metric's name links to its chart ("Plot chart").
    names = page.get_by_role("grid").filter(has=page.get_by_title("Plot chart"))
    expect(names).to_have_count(1)
    link = names.get_by_role("link", name=metric, exact=True)
    names.scroll_into_view_if_needed()
    box = names.bounding_box()
    # The values grid sits right of the names and takes the wheel; the names follow it.
    page.mouse.move(box["x"] + box["width"] + 40, box["y"] + box["height"] / 2)
    for _ in range(60):
        if link.count():
            break
        page.mouse.wheel(0, 90)
        page.wait_for_timeout(100)
    assert link.count() == 1, f"no {metric!r} row in the compare view's metrics table"
    return link


def _row_values(page, link) -> list[str]:
    """The value cells of the metric's row: the cells of the other grid at the same row offset
    (react-virtualized places each cell of a row at the same ``top``)."""
    top = link.evaluate("a => a.closest('[style*=\"top\"]').style.top")
    grids = page.get_by_role("grid")
    cells = []
    for i in range(grids.count()):
        grid = grids.nth(i)
        if grid.get_by_title("Plot chart").count():
            continue  # the names grid
        cells += [cell for cell in grid.get_by_role("rowgroup").locator(":scope > *").all()
                  if cell.evaluate("e => e.style.top") == top]
    texts = [cell.inner_text().strip() for cell in cells]
    if cells:
        # Bring the row into view. The names grid follows the values grid one scroll
        # event late: two more 1 px wheel steps line them up for the screenshot.
        cells[0].scroll_into_view_if_needed()
        cells[0].hover()
        for delta in (-1, 1):
            page.mouse.wheel(0, delta)
            page.wait_for_timeout(300)
    return texts
