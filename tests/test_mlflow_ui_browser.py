"""The MLflow UI in a real browser: two drip runs selected and compared, their μAP on the page;
the logged pictures of two runs side by side.

`mlflow ui` serves a sqlite store holding two real tiny drip runs; headless
Chromium (Debian's, driven by Playwright; no browser download) opens the
experiment, ticks both runs, clicks Compare and reads the uAP row of the
compare view's metrics table. The screenshot is left in
test-artifacts/mlflow_compare.png ($EMBEDLAB_TEST_ARTIFACTS overrides the folder).

A second store holds two runs, each with a figure logged as the stages log
their pictures (:func:`embedlab.stages.reports.log_pictures`: an MLflow image
under the key ``pr_curve``). MLflow 3's compare page lists only root-level
artifacts the runs share, so keyed images are compared in the runs page's
chart view (``compareRunsMode=CHART``): one card per key, each run's image
under its name. The test opens that card full-screen, checks that each run's
own figure is shown under its name, and leaves the screenshot in
test-artifacts/mlflow_compare_pictures.png.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _serve_ui(store: Path, log: Path):
    """`mlflow ui` on the store's ``mlflow.db``, on a free loopback port: its URL."""
    port = servers.free_port()
    cmd = ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with servers.process_group(cmd, log, cwd=store, env=cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")) as proc:
        url = f"http://127.0.0.1:{port}"
        servers.wait_http(f"{url}/health", proc, log)
        yield url


@pytest.fixture
def mlflow_ui(store: Path, tmp_path: Path):
    with _serve_ui(store, tmp_path / "mlflow-ui.log") as url:
        yield url


@contextlib.contextmanager
def _experiment_page(url: str, experiment: str):
    """Headless Chromium on the MLflow UI at ``url``, opened on ``experiment``'s runs: the page."""
    chromium = servers.chromium_executable()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=servers.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="load")
            # MLflow 3 opens on its GenAI view; runs live under "Model training".
            page.get_by_text("Model training", exact=True).first.click()
            page.get_by_role("link", name=experiment, exact=True).first.click()
            yield page
        finally:
            browser.close()


def test_compare_view_shows_the_uap_of_both_selected_runs(store: Path, mlflow_ui: str):
    from playwright.sync_api import expect

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("embedlab")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("embedlab.stage") == "drip"}
    assert set(runs) == {"drip/weak", "drip/strong"}
    expected = {name: ui_metric(r.data.metrics["uAP"]) for name, r in runs.items()}
    screenshot = servers.artifact_path("mlflow_compare.png")
    screenshot.unlink(missing_ok=True)

    with _experiment_page(mlflow_ui, "embedlab") as page:
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


# --- the pictures of two runs, side by side ---------------------------------------------

PICTURE_RUNS = {"drip/weak": ("tab:red", 0.31), "drip/strong": ("tab:blue", 0.74)}  # run: line colour, μAP


@pytest.fixture(scope="module")
def picture_store(tmp_path_factory) -> Path:
    """A store whose experiment ``pictures`` holds two runs, each with a small matplotlib figure (a PR curve of
    its own colour and μAP) logged by the stages' own ``log_pictures`` under the key ``pr_curve``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from embedlab.stages.reports import log_pictures

    root = tmp_path_factory.mktemp("picture_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment = MlflowClient(tracking_uri=uri).create_experiment(
        "pictures", artifact_location=(root / "mlruns").as_uri())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        for name, (colour, uap) in PICTURE_RUNS.items():
            recall = [i / 20 for i in range(21)]
            fig, ax = plt.subplots(figsize=(3, 3), dpi=80)
            ax.plot(recall, [1 - r * (1 - uap) for r in recall], color=colour, linewidth=4)
            ax.set(title=f"{name}: μAP {uap:.2f}", xlabel="recall", ylabel="precision")
            fig.tight_layout()
            picture = root / name.replace("/", "_") / "pr_curve.png"
            picture.parent.mkdir()
            fig.savefig(picture)
            plt.close(fig)
            with mlflow.start_run(experiment_id=experiment, run_name=name):
                mlflow.log_metric("uAP", uap)
                log_pictures({"pr_curve": picture})
    finally:
        mlflow.set_tracking_uri(previous)
    return root


@pytest.fixture
def picture_ui(picture_store: Path, tmp_path: Path):
    with _serve_ui(picture_store, tmp_path / "mlflow-ui.log") as url:
        yield url


def test_chart_view_shows_the_logged_picture_of_both_runs_side_by_side(picture_store: Path, picture_ui: str):
    from playwright.sync_api import expect

    client = MlflowClient(tracking_uri=f"sqlite:///{picture_store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pictures")
    run_ids = {r.info.run_name: r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    assert set(run_ids) == set(PICTURE_RUNS)
    screenshot = servers.artifact_path("mlflow_compare_pictures.png")
    screenshot.unlink(missing_ok=True)

    with _experiment_page(picture_ui, "pictures") as page:
        assistant = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
        if assistant.count():  # MLflow 3.17's assistant panel takes a quarter of the page
            assistant.first.click()
        # The runs page's chart view (the radio beside the table view's): compareRunsMode=CHART.
        page.locator("label:has(input[value=CHART])").click()
        expect(page).to_have_url(re.compile(r"compareRunsMode=CHART"))
        card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
            has=page.locator('h4[title="pr_curve"]'))
        expect(card).to_have_count(1)
        expect(card.locator("img")).to_have_count(2)
        # Full screen: the card's images at a size one can look at.
        card.locator('button[data-component-id="fullscreen_button_chartcard"]').click()
        dialog = page.get_by_role("dialog").filter(has_text="pr_curve")
        expect(dialog).to_have_count(1)
        images = dialog.locator("img")
        expect(images).to_have_count(2)
        page.wait_for_function("images => images.every(i => i.complete && i.naturalWidth > 0)",
                               arg=images.element_handles())
        sources = [img.get_attribute("src") for img in images.all()]
        shown = images.evaluate_all(_RUN_AND_COLOUR_OF_EACH_IMAGE, list(PICTURE_RUNS))
        page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}; images (run, red pixels, blue pixels): {shown}")

    # Each image is that run's logged image (MLflow's thumbnail of images/pr_curve+step+0+...), shown under
    # its run's name, and is the figure that run logged: its curve's colour.
    assert sorted(re.search(r"run_uuid=(\w+)", src).group(1) for src in sources) == sorted(run_ids.values()), sources
    assert all("path=images%2Fpr_curve%2Bstep%2B0%2B" in src for src in sources), sources
    assert sorted(name for name, _, _ in shown) == sorted(PICTURE_RUNS), shown
    for name, red, blue in shown:
        colour = PICTURE_RUNS[name][0]
        assert (red > 5 * blue) if colour == "tab:red" else (blue > 5 * red), \
            f"{name}'s image: {red} red and {blue} blue pixels, its figure's curve is {colour}"
        assert red + blue > 100, f"{name}'s image holds no curve ({red} red, {blue} blue pixels)"
    assert screenshot.read_bytes()[:4] == b"\x89PNG"


# For each image: the run name written above it (the nearest ancestor whose text names one run), and its count
# of clearly red and clearly blue pixels (the image drawn on a canvas: same origin, so readable).
_RUN_AND_COLOUR_OF_EACH_IMAGE = """(images, names) => images.map(img => {
    let node = img.parentElement, name = null;
    while (node && !name) {
        const found = names.filter(n => node.innerText.includes(n));
        if (found.length > 1) break;
        name = found[0] || null;
        node = node.parentElement;
    }
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let red = 0, blue = 0;
    for (let i = 0; i < pixels.length; i += 4) {
        const [r, g, b] = [pixels[i], pixels[i + 1], pixels[i + 2]];
        if (r > b + 80 && r > g + 80) red++;
        if (b > r + 80) blue++;
    }
    return [name, red, blue];
})"""
