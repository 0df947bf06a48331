"""The README and docs/ stay true to the code.

- every relative link of README.md and docs/**/*.md points to a file that exists;
- the README stays short and cites only the repository;
- the README's command examples run, or at least parse with the real parsers
  (the commands of docs/ are parsed too);
- the README's results table is generated: ``results_report(markdown=True)``
  shows the metrics.json values, and tools/update_readme_results.py writes it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedlab.cli import build_parser, main
from embedlab.config import load_params
from embedlab.report import results_report

PROJECT = Path(__file__).resolve().parents[1]
README = PROJECT / "README.md"
DOCS = sorted((PROJECT / "docs").rglob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

# Cheap enough to run for real (well under a second each, no data or model
# needed); run in a scratch folder with a copy of params.yaml, never in the repo.
RUN_FOR_REAL = {"report", "use-profile"}
# Everything else is parsed only, by embedlab's own parser, so a renamed or
# removed flag fails here: the training stages (drip, gem, triplet, decoder,
# sweep) take minutes; demo-data builds hundreds of images (tens of seconds);
# init-weights loads torch weights (over 10 s); embed, evaluate-disc,
# postprocess, ensemble, face-submission, templates, validate-decoder and
# export-onnx need trained models or descriptor files; augment without
# --show writes a data set. `augment --show` only prints a recipe: run for real.


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT))


def _prose(text: str) -> str:
    """The page without its fenced code blocks (no links live there)."""
    return FENCE.sub("", text)


def _params() -> dict:
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_point_to_existing_files(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or PROJECT not in path.parents:
            broken.append(target)
    assert not broken, f"{_rel(page)}: links to missing files: {broken}"


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 260, f"README.md has {lines} lines; move details to docs/"


# The team's design and reference notes live outside the repository: a page that cites them sends
# readers to files they do not have. Their facts are restated in docs/ (docs/originals/*.md).
OUTSIDE_NOTES = tuple(f"{stem}.md" for stem in ("DESIGN", "REFERENCE", "STYLE")) + ("../shared",)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_pages_cite_only_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    cited = [name for name in OUTSIDE_NOTES if name in text]
    assert not cited, f"{_rel(page)} cites {cited}: cite docs/originals/*.md instead"


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert re.search(r"^make demo\b", text, re.M) and re.search(r"^make test\b", text, re.M)


# --- command examples ----------------------------------------------------------------------


def bash_commands(page: Path) -> list[list[str]]:
    """argv of every command in the page's ```bash blocks: continuation lines joined,
    comments dropped, ``a && b`` split."""
    commands = []
    for lang, body in FENCE.findall(page.read_text(encoding="utf-8")):
        if lang != "bash":
            continue
        for line in re.sub(r"\\\n", " ", body).splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1 :]
    return [c for c in commands if c]


def _parse_embedlab(argv: list[str]):
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`embedlab {shlex.join(argv)}` does not parse (exit {exc.code})")


def _check_embedlab_values(args, params: dict) -> None:
    """Names an example passes that params.yaml must know."""
    if args.command == "drip" and getattr(args, "step", None):
        assert args.step in params["drip_schedule"], f"drip step {args.step!r} not in params.yaml's drip_schedule"
    if args.command in ("augment", "gem") and getattr(args, "recipe", None):
        assert args.recipe in params["augment"]["recipes"], f"recipe {args.recipe!r} not in augment.recipes"
    if args.command == "sweep":
        assert args.stage in params["sweep"], f"sweep stage {args.stage!r} not in params.yaml's sweep"


def _check_mlflow(argv: list[str]) -> None:
    if argv[0] != "run":
        return  # mlflow ui / server: nothing of ours named
    entry_points = yaml.safe_load((PROJECT / "MLproject").read_text())["entry_points"]
    entry = argv[argv.index("-e") + 1]
    assert entry in entry_points, f"MLproject has no entry point {entry!r}"
    for i, word in enumerate(argv):
        if word == "-P":
            name = argv[i + 1].split("=", 1)[0]
            assert name in entry_points[entry]["parameters"], f"entry point {entry} has no parameter {name!r}"


def _check_make(argv: list[str]) -> None:
    targets = set(re.findall(r"^([\w.-]+):", (PROJECT / "Makefile").read_text(), re.M))
    for target in (w for w in argv if "=" not in w and not w.startswith("-")):
        assert target in targets, f"Makefile has no target {target!r}"


def _check_dvc(argv: list[str], params: dict) -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    if argv[0] == "repro":
        for target in (w for w in argv[1:] if not w.startswith("-")):
            assert target.split("@")[0] in stages, f"dvc.yaml has no stage {target!r}"
    for i, word in enumerate(argv):
        if word in ("-S", "--set-param"):
            node = params
            for key in argv[i + 1].split("=", 1)[0].split("."):
                assert isinstance(node, dict) and key in node, f"params.yaml has no {argv[i + 1]!r}"
                node = node[key]


def _check_tool(argv: list[str]) -> None:
    script = PROJECT / argv[0]
    assert script.is_file(), f"{argv[0]} does not exist"
    if script.name == "update_readme_results.py":
        _load_tool().build_parser().parse_args(argv[1:])  # parsed only: running it rewrites README.md


def _check_optuna_dashboard(argv: list[str]) -> None:
    """A storage URL the sweeps write (sweep.storage) and flags the installed dashboard takes."""
    storage = next(w for w in argv if not w.startswith("-") and "://" in w)
    assert storage.startswith(("sqlite:///", "postgresql://")), f"not a sweep storage: {storage}"
    dashboard = Path(sys.executable).with_name("optuna-dashboard")  # the venv's, installed by `make install`
    usage = subprocess.run([str(dashboard), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in (w for w in argv if w.startswith("--")):
        assert flag in usage, f"optuna-dashboard takes no {flag}"


def _load_tool():
    spec = importlib.util.spec_from_file_location("update_readme_results", PROJECT / "tools/update_readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_command(argv: list[str], params: dict, strict: bool) -> str:
    """Check one example; returns "run" for an embedlab command to run for real."""
    program = Path(argv[0]).name
    if program == "embedlab":
        args = _parse_embedlab(argv[1:])
        _check_embedlab_values(args, params)
        real = args.command in RUN_FOR_REAL or (args.command == "augment" and args.show)
        return "run" if real else "parsed"
    if program == "mlflow":
        _check_mlflow(argv[1:])
    elif program == "make":
        _check_make(argv[1:])
    elif program == "dvc":
        _check_dvc(argv[1:], params)
    elif program == "python" and len(argv) > 1 and argv[1].endswith(".py"):
        _check_tool(argv[1:])
    elif program == "optuna-dashboard":
        _check_optuna_dashboard(argv)
    elif strict:
        pytest.fail(f"README example of an unknown kind: {shlex.join(argv)} (decide in test_readme.py how to check it)")
    return "checked"


def test_readme_examples_run_or_parse(tmp_path: Path, monkeypatch, capsys) -> None:
    params = _params()
    commands = bash_commands(README)
    assert any(c[0] == "embedlab" for c in commands), "no embedlab examples found in README.md"
    to_run = [c for c in commands if _check_command(c, params, strict=True) == "run"]
    assert to_run, "no README example was run for real"

    # Run the cheap ones for real, in a scratch project with the real params.yaml.
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for argv in to_run:
        assert main(argv[1:]) == 0, f"`{shlex.join(argv)}` failed"
        if argv[1] == "use-profile":
            assert main(["use-profile", "demo"]) == 0  # back, so the next example sees the demo values
    out = capsys.readouterr().out
    if any(c[1:3] == ["report", "--markdown"] for c in to_run):
        assert "**Drip training" in out and "no drip results yet" in out  # the scratch project has no reports


@pytest.mark.parametrize("page", DOCS, ids=_rel)
def test_docs_examples_parse(page: Path) -> None:
    params = _params()
    for argv in bash_commands(page):
        _check_command(argv, params, strict=False)


# --- the generated results table -----------------------------------------------------------

DRIP_S1 = {"step": "s1", "n_classes": 160, "epochs": 12, "train_loss": 5.0891, "val_loss": 3.0844,
           "before_uAP": 0.18893, "uAP": 0.22802, "post_uAP": 0.18986, "recall_at_p90": 0.025,
           "recall_at_rank1": 0.5625, "recall_at_rank10": 0.8125}
FINETUNE = {"phase": "finetune", "miner": "hard", "epochs": 8, "train_loss": 0.05143, "before_valid_eer": 0.25221,
            "valid_eer": 0.27504, "valid_eer_fake_same_person": 0.35, "valid_eer_other_person": 0.13749,
            "test_eer": 0.26253, "test_roc_auc": 0.78379}
DECODER = {"epochs": 10, "train_loss": 1.44751, "before_cosine_mean": 0.76469, "cosine_min": 0.83547,
           "cosine_mean": 0.94187, "cosine_median": 0.94783, "cosine_max": 0.98698, "threshold": 0.97492,
           "above_threshold": 0.0625}


@pytest.fixture
def fake_reports(tmp_path: Path, monkeypatch) -> Path:
    """A scratch project: the real params.yaml and a few stages' metrics.json."""
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    for rel, metrics in {"drip/s1": DRIP_S1, "triplet/finetune": FINETUNE, "decoder": DECODER}.items():
        (tmp_path / "reports" / rel).mkdir(parents=True)
        (tmp_path / "reports" / rel / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Each GitHub table of ``text`` as a list of {header: cell} rows."""
    tables = []
    for block in re.findall(r"((?:^\|.*\|\n?)+)", text, re.M):
        lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()]
        header, rule, *body = lines
        assert all(set(c) <= set("-: ") for c in rule), rule
        tables.append([dict(zip(header, row, strict=True)) for row in body])
    return tables


def _close(cell: str, value: float) -> bool:
    """A cell shows ``value`` to its printed precision ("6.2%" is a share)."""
    if cell.endswith("%"):
        cell, value = cell[:-1], value * 100
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return abs(float(cell) - value) <= 0.5 * 10**-decimals + 1e-12


def test_markdown_report_shows_the_metrics(fake_reports: Path) -> None:
    text = results_report(load_params("params.yaml"), markdown=True)
    drip, face, decoder = markdown_tables(text)
    assert len(drip) == len(face) == len(decoder) == 1
    assert "no gem results yet" in text and "no ensemble results yet" in text

    columns = {"drip": [("classes", "n_classes"), ("epochs", "epochs"), ("train loss", "train_loss"),
                        ("val loss", "val_loss"), ("μAP before", "before_uAP"), ("μAP", "uAP"),
                        ("μAP post", "post_uAP"), ("R@P90", "recall_at_p90"), ("R@rank1", "recall_at_rank1"),
                        ("R@rank10", "recall_at_rank10")],
               "face": [("epochs", "epochs"), ("train loss", "train_loss"), ("EER before", "before_valid_eer"),
                        ("EER", "valid_eer"), ("EER real-vs-fake", "valid_eer_fake_same_person"),
                        ("EER other person", "valid_eer_other_person"), ("test EER", "test_eer"),
                        ("test AUC", "test_roc_auc")],
               "decoder": [("epochs", "epochs"), ("train loss", "train_loss"),
                           ("cos mean before", "before_cosine_mean"), ("cos min", "cosine_min"),
                           ("cos mean", "cosine_mean"), ("cos median", "cosine_median"), ("cos max", "cosine_max"),
                           ("threshold", "threshold"), ("share above", "above_threshold")]}
    for (row,), metrics, name in ((drip, DRIP_S1, "drip"), (face, FINETUNE, "face"), (decoder, DECODER, "decoder")):
        for title, key in columns[name]:
            assert _close(row[title], metrics[key]), (name, title, row[title], metrics[key])
    assert drip[0]["step"] == "s1" and face[0]["phase"] == "finetune" and face[0]["miner"] == "hard"


def test_update_readme_results_writes_and_checks(fake_reports: Path) -> None:
    tool = _load_tool()
    readme = fake_reports / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{tool.START}\nold table\n{tool.END}\n\nafter\n")
    assert tool.main(["--readme", str(readme), "--run", "2026-01-01, a test machine"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old table" not in text
    assert "2026-01-01, a test machine" in text and "`embedlab report --markdown`" in text
    section = text[text.index(tool.START) : text.index(tool.END)]
    assert section.count("| step |") == 1 and _close(markdown_tables(section)[0][0]["μAP"], DRIP_S1["uAP"])
    assert tool.main(["--readme", str(readme), "--check"]) == 0

    # A new run changes a metric: --check notices.
    (fake_reports / "reports/drip/s1/metrics.json").write_text(json.dumps({**DRIP_S1, "uAP": 0.5}))
    assert tool.main(["--readme", str(readme), "--check"]) == 1


def test_update_readme_results_refuses_without_reports(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("<!-- results:start -->\n<!-- results:end -->\n")
    assert _load_tool().main(["--readme", "README.md"]) == 2
    assert (tmp_path / "README.md").read_text() == "<!-- results:start -->\n<!-- results:end -->\n"
