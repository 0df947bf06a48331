"""Which files each stage runs (code_deps): what its fingerprint and its DVC dependency cover."""

from __future__ import annotations

import yaml

from embedlab.code_deps import STAGE_MODULES, module_closure, stage_code, write_code_deps
from embedlab.digests import PACKAGE

from conftest import PROJECT


def _names(files) -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in files}


def test_a_stage_runs_the_modules_it_imports_lazily_and_not_the_ones_it_does_not():
    drip = _names(stage_code("embedlab.stages.drip"))
    # Imported inside functions (evaluation), by parent packages' __init__, and by the command line.
    assert {"evaluation/disc_model.py", "evaluation/__init__.py", "models/arcface.py", "cli.py",
            "__init__.py", "config.py"} <= drip
    assert "report.py" not in drip and "models/gem_module.py" not in drip and "stages/gem.py" not in drip
    assert "models/gem_module.py" in _names(stage_code("embedlab.stages.gem"))
    # Only the command line's module-level imports: its functions import every stage.
    assert "stages/decoder.py" not in drip


def test_relative_imports_and_from_package_import_module_are_followed(tmp_path, monkeypatch):
    package = tmp_path / "embedlab"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("def f():\n    from ..other import g\n")
    (package / "other.py").write_text("import os\n")
    (package / "unused.py").write_text("")
    monkeypatch.setattr("embedlab.code_deps.PACKAGE", package)
    assert _names_in(package, module_closure(["embedlab.sub"])) == {
        "__init__.py", "sub/__init__.py", "sub/leaf.py", "other.py"}


def _names_in(package, files) -> set[str]:
    return {str(p.relative_to(package)) for p in files}


def test_every_dvc_stage_depends_on_its_own_code_listing_and_nothing_of_the_package_else():
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    listed = [next(iter(o)) for o in stages["code_deps"]["outs"]]
    assert listed == [f"reports/code/{name}.txt" for name in STAGE_MODULES]
    for name, stage in stages.items():
        if name == "code_deps":
            continue
        deps = (stage.get("do") or stage)["deps"]
        code = [d for d in deps if d.startswith("reports/code/")]
        assert len(code) == 1 and code[0].removeprefix("reports/code/").removesuffix(".txt") in (
            name, name.split("_")[0]), (name, deps)
        assert not any(d.startswith("src/") for d in deps), name


def test_code_listings_are_rewritten_only_when_the_code_they_list_changes(tmp_path):
    first = {p.name: p.stat().st_mtime_ns for p in write_code_deps(tmp_path)}
    assert set(first) == {f"{name}.txt" for name in STAGE_MODULES}
    text = (tmp_path / "drip.txt").read_text()
    assert "embedlab.stages.drip" in text.splitlines()[0] and "embedlab/stages/drip.py" in text
    (tmp_path / "gem.txt").write_text("stale\n")
    again = {p.name: p.stat().st_mtime_ns for p in write_code_deps(tmp_path)}
    assert again["drip.txt"] == first["drip.txt"] and again["gem.txt"] != first["gem.txt"]
