"""DVC's plots: each chart of dvc.yaml titled, with axis labels and one scale (no loss beside an EER or a
μAP), the drip steps and the face encoder's phases drawn one after another (the history CSVs' chained_epoch),
and `dvc plots show` rendering all that from CSVs written by the stages' own writer."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import PROJECT, run
from embedlab.stages.reports import HistoryParent, chained_history, write_stage_reports

TEMPLATES = PROJECT / ".dvc" / "plots"  # custom templates, found by name (dvc.yaml's `template:`)
LOSS = re.compile(r"loss", re.I)
SCORE = re.compile(r"eer|uap|cosine", re.I)  # an EER, a μAP, a cosine: never on a loss's axis


def _data_plots() -> list[tuple[str, str, dict]]:
    """(where, plot id, properties) of every chart of dvc.yaml: the top-level plots and the stages' own (a
    foreach stage's under ``do``); pictures (``.png``) are shown as they are and have no axes."""
    spec = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    plots = [("plots", *next(iter(entry.items()))) for entry in spec.get("plots", [])]
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        plots += [(f"stages.{name}", *next(iter(entry.items()))) for entry in body.get("plots", [])]
    return [(where, plot_id, props or {}) for where, plot_id, props in plots if not plot_id.endswith(".png")]


def _template_columns(name: str) -> list[str]:
    """The columns a custom template draws itself (its ``fold`` transforms)."""
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "fold" in node:
                found.extend(node["fold"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads((TEMPLATES / f"{name}.json").read_text()))
    return found


def _y_columns(props: dict) -> list[str]:
    y = props.get("y")
    columns = [y] if isinstance(y, str) else list(y or [])
    if isinstance(y, dict):
        columns = [c for value in y.values() for c in ([value] if isinstance(value, str) else value)]
    if props.get("template") and (TEMPLATES / f"{props['template']}.json").is_file():
        columns += _template_columns(props["template"])
    return columns


def test_every_chart_of_dvc_yaml_has_a_title_axis_labels_and_one_scale():
    plots = _data_plots()
    assert len(plots) >= 8, plots  # drip, GeM, the face encoder's ROC and history, the decoder's history
    for where, plot_id, props in plots:
        label = f"{where}: {plot_id}"
        for key in ("title", "x", "x_label", "y", "y_label"):
            assert props.get(key), f"{label} has no {key}"
        columns = _y_columns(props)
        losses = [c for c in columns if LOSS.search(c)]
        scores = [c for c in columns if SCORE.search(c)]
        assert not (losses and scores), f"{label} draws a loss ({losses}) on the axis of {scores}"
        if where.startswith("stages.") and "${" in plot_id:  # one chart per step or run: its own name
            assert "${" in props["title"], f"{label}: every chart of the foreach would carry the same title"


def test_custom_templates_exist_and_fill_dvcs_title_and_axis_anchors():
    for where, plot_id, props in _data_plots():
        if not props.get("template"):
            continue
        path = TEMPLATES / f"{props['template']}.json"
        assert path.is_file(), f"{where}: {plot_id}: template {path} is missing"
        text = path.read_text()
        for anchor in ("DATA", "TITLE", "X", "X_LABEL", "Y_LABEL", "COLOR"):
            assert f"<DVC_METRIC_{anchor}>" in text, f"{path} does not use <DVC_METRIC_{anchor}>"
        assert _template_columns(props["template"]) and all(LOSS.search(c) for c in
                                                             _template_columns(props["template"]))


def _write_history(folder: Path, name: str, metric: str, rows, parent: HistoryParent | None = None) -> Path:
    write_stage_reports(folder / "report", {}, folder / "plots", name, ("history", metric, rows), {},
                        parent=parent)
    return folder / "plots" / "history" / f"{name}.csv"


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_history_counts_epochs_along_its_chain_and_may_repeat_its_parents_rows(tmp_path: Path):
    s1 = _write_history(tmp_path, "drip_s1", "val_loss", [(0, 8.0, 4.5), (1, 7.0, 4.0), (2, 6.0, 3.5)])
    assert s1.read_text().splitlines()[:2] == ["epoch,train_loss,val_loss,chained_epoch,run", "0,8.0,4.5,0,drip_s1"]
    missing = tmp_path / "nowhere.ckpt"
    s2 = _write_history(tmp_path, "drip_s2", "val_loss", [(0, 5.0, 3.0), (1, 4.0, float("nan"))],
                        HistoryParent(s1, missing, repeat_rows=True))
    s3 = _write_history(tmp_path, "drip_s3", "val_loss", [(0, 4.5, 2.5)], HistoryParent(s2, missing, repeat_rows=True))
    rows = _read(s3)
    assert [(r["run"], r["epoch"], r["chained_epoch"]) for r in rows] == [
        ("drip_s1", "0", "0"), ("drip_s1", "1", "1"), ("drip_s1", "2", "2"),
        ("drip_s2", "0", "3"), ("drip_s2", "1", "4"), ("drip_s3", "0", "5")]
    assert rows[4]["val_loss"] == "nan" and rows[5]["train_loss"] == "4.5"

    # Without repeat_rows (the face encoder: dvc.yaml draws both phases' files): own rows, chained epochs.
    own = _write_history(tmp_path, "triplet_finetune", "val_eer", [(0, 0.2, 0.3)], HistoryParent(s1, missing))
    assert _read(own) == [{"epoch": "0", "train_loss": "0.2", "val_eer": "0.3", "chained_epoch": "3",
                           "run": "triplet_finetune"}]


def test_a_history_without_its_parents_csv_goes_on_from_the_parents_checkpoint(tmp_path: Path):
    checkpoint = tmp_path / "models" / "s1" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"epoch": 11, "global_step": 120, "state_dict": {}}, checkpoint)  # 12 epochs trained
    rows = chained_history("drip_s2", [(0, 5.0, 3.0)], HistoryParent(tmp_path / "absent.csv", checkpoint, True))
    assert rows == [(0, 5.0, 3.0, 12, "drip_s2")]
    # An older CSV (epoch,train_loss,<metric> only): its epochs are its chained ones, its run its file's name.
    old = tmp_path / "drip_s1.csv"
    old.write_text("epoch,train_loss,val_loss\n0,8.0,4.5\n1,7.0,4.0\n")
    rows = chained_history("drip_s2", [(0, 5.0, 3.0)], HistoryParent(old, checkpoint, True))
    assert [(r[3], r[4]) for r in rows] == [(0, "drip_s1"), (1, "drip_s1"), (2, "drip_s2")]
    assert chained_history("decoder", [(0, 1.0, 0.5)], None) == [(0, 1.0, 0.5, 0, "decoder")]


def _axis(spec: dict, axis: str, key: str) -> set[str]:
    """The ``key`` (title, field) of every ``axis`` encoding of a Vega-Lite spec, its layers' included."""
    titles: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            encoding = node.get("encoding", {})
            if isinstance(encoding.get(axis), dict) and encoding[axis].get(key):
                titles.add(encoding[axis][key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return titles


@pytest.fixture
def plots_repo(tmp_path: Path) -> Path:
    """A git + DVC repo with the project's dvc.yaml, params.yaml and templates, and every plot CSV dvc.yaml
    names (for params.yaml's drip schedule and GeM matrix) written as the stages write them."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        (repo / name).write_text((PROJECT / name).read_text())
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / ".dvc" / "plots").mkdir(exist_ok=True)
    for template in TEMPLATES.glob("*.json"):
        (repo / ".dvc" / "plots" / template.name).write_text(template.read_text())

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    plots = repo / "reports" / "plots"
    curve = "precision,recall,threshold\n1,0.1,0.9\n0.8,0.5,0.6\n0.5,1,0.2\n"
    roc = "fpr,tpr,threshold\n0,0,inf\n0.1,0.6,0.8\n1,1,0.1\n"
    done: dict[str, Path] = {}
    pending = dict(params["drip_schedule"])
    while pending:  # parents first, as DVC runs them
        for step, settings in list(pending.items()):
            parent = settings.get("init_from")
            if parent in pending:
                continue
            history = HistoryParent(done[parent], repo / "absent.ckpt", repeat_rows=True) if parent in done else None
            write_stage_reports(repo / "reports" / "drip" / step, {}, plots, f"drip_{step}",
                                ("history", "val_loss", [(e, 8.0 - e - len(done), 4.0 - e / 2) for e in range(3)]),
                                {}, parent=history)
            done[step] = plots / "history" / f"drip_{step}.csv"
            (plots / "pr_curve").mkdir(exist_ok=True)
            (plots / "pr_curve" / f"drip_{step}.csv").write_text(curve)
            del pending[step]
    for start in params["pipeline"]["gem_starts"]:
        for recipe in params["pipeline"]["gem"]:
            write_stage_reports(repo / "reports" / "gem", {}, plots, f"gem_{start}_{recipe}",
                                ("history", "val_loss", [(0, 12.0, float("nan")), (1, 9.0, float("nan"))]), {})
            (plots / "pr_curve" / f"gem_{start}_{recipe}.csv").write_text(curve)
    pretrain = None
    for phase in ("pretrain", "finetune"):
        parent = HistoryParent(pretrain, repo / "absent.ckpt") if pretrain else None
        write_stage_reports(repo / "reports" / "triplet" / phase, {}, plots, f"triplet_{phase}",
                            ("triplet_history", "val_eer", [(e, 0.2 - e / 100, 0.4 - e / 50) for e in range(4)]),
                            {}, parent=parent)
        pretrain = plots / "triplet_history" / "triplet_pretrain.csv"
        (plots / "roc").mkdir(exist_ok=True)
        (plots / "roc" / f"triplet_{phase}.csv").write_text(roc)
    write_stage_reports(repo / "reports" / "decoder", {}, plots, "decoder",
                        ("decoder_history", "val_cosine_mean", [(e, 3.0 - e / 2, 0.8 + e / 20) for e in range(3)]), {})
    return repo


def test_dvc_plots_show_draws_titled_charts_with_the_drip_steps_chained(plots_repo: Path):
    shown = json.loads(run(["dvc", "plots", "show", "--json"], plots_repo).stdout)
    errors = [e for e in shown.get("errors", []) if not e.get("source", "").endswith(".png")]  # pictures not made
    assert not errors, errors
    charts = {plot_id: rendered[0]["content"] for plot_id, rendered in shown["data"].items()
              if rendered and rendered[0]["type"] == "vega"}
    props = {plot_id: p for _, plot_id, p in _data_plots()}
    assert len(charts) >= 10, sorted(charts)
    for plot_id, spec in charts.items():
        title = spec["title"]["text"]
        assert title and title != plot_id and not title.startswith("reports/"), f"{plot_id}: untitled ({title!r})"
        # DVC's default y title, "y", is the axis of several columns it could not name.
        assert _axis(spec, "y", "title") and "y" not in _axis(spec, "y", "title"), (plot_id, _axis(spec, "y", "title"))
        assert _axis(spec, "x", "title"), plot_id

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    steps = list(params["drip_schedule"])
    last = charts[f"reports/plots/history/drip_{steps[-1]}.csv"]
    assert last["title"]["text"].startswith(f"drip {steps[-1]}:")
    assert _axis(last, "x", "title") == {"epoch, drip steps chained"}
    rows = last["data"]["values"]
    assert [r["run"] for r in rows] == [f"drip_{s}" for s in steps for _ in range(3)]  # every step, in order
    assert [int(r["chained_epoch"]) for r in rows] == list(range(3 * len(steps)))  # one after another

    # The face encoder: the loss and the EER in charts of their own, both phases in each, chained.
    eer, loss = charts["triplet_eer"], charts["triplet_loss"]
    assert _axis(eer, "y", "field") == {"val_eer"} and _axis(loss, "y", "field") == {"train_loss"}
    assert _axis(loss, "y", "title") == {props["triplet_loss"]["y_label"]}
    assert {r.get("filename") for r in eer["data"]["values"]} == {"triplet_pretrain.csv", "triplet_finetune.csv"}
    finetune = [int(r["chained_epoch"]) for r in eer["data"]["values"] if r["filename"] == "triplet_finetune.csv"]
    assert finetune == [4, 5, 6, 7]  # after the pre-training's 4 epochs
    assert _axis(charts["decoder_cosine"], "y", "field") == {"val_cosine_mean"}
