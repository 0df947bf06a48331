"""Which source files a stage runs: the static closure of its embedlab imports.

A stage's model depends on the code it runs, not on every module of the
package: editing the report printer must not retrain the drip steps. The
closure follows every ``import embedlab...`` and ``from embedlab... import``
in a module, at module level and inside functions (the stages import
lazily), plus the parent packages' ``__init__`` files, which run on import.
The command line (``embedlab.cli``) runs too, but only its module-level
imports: its functions import the other stages.

The same file lists feed the stages' fingerprints (:func:`stage_code`) and
the DVC pipeline (``embedlab code-deps`` writes one file per stage, which
each training stage depends on instead of ``src/embedlab``).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

from embedlab.atomic import write_text_atomic
from embedlab.digests import PACKAGE, source_digest

# The DVC stages (dvc.yaml's names, foreach groups once) and the module each runs.
STAGE_MODULES = {
    "drip_init": "embedlab.stages.init_weights",
    "drip_cache": "embedlab.data.image_cache",
    "drip": "embedlab.stages.drip",
    "augment": "embedlab.stages.augment",
    "gem": "embedlab.stages.gem",
    "baseline": "embedlab.stages.baseline",
    "robustness_set": "embedlab.data.robustness",
    "robustness": "embedlab.evaluation.robustness",
    "ensemble": "embedlab.stages.ensemble",
    "face_data": "embedlab.stages.face_data",
    "triplet": "embedlab.stages.triplet",
    "templates": "embedlab.stages.templates",
    "decoder": "embedlab.stages.decoder",
}


def module_file(name: str) -> Path | None:
    """The source file of an embedlab module or package, None for anything else (a class, a function)."""
    if name != "embedlab" and not name.startswith("embedlab."):
        return None
    base = PACKAGE.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path, name: str, lazy: bool) -> Iterator[str]:
    """Module names imported by the module ``name`` at ``path`` (with function-level imports when ``lazy``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = ast.walk(tree) if lazy else iter(tree.body)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, up node.level - 1 levels
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`


def module_closure(names: Iterable[str], lazy: bool = True) -> set[Path]:
    """Source files of ``names`` and of every embedlab module they import, transitively."""
    files: set[Path] = set()
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        files.add(path)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run their __init__
        todo.extend(_imported(path, name, lazy))
    return files


@lru_cache(maxsize=None)
def stage_code(module: str) -> tuple[Path, ...]:
    """The files a stage module runs when started from the command line, sorted."""
    cli = {PACKAGE / "cli.py"} | module_closure(_imported(PACKAGE / "cli.py", "embedlab.cli", lazy=False),
                                                 lazy=False)
    return tuple(sorted(module_closure([module]) | cli))


def stage_code_report(module: str) -> str:
    """A stage's code digest and its files, one per line with their own digests: what DVC depends on."""
    files = stage_code(module)
    lines = [f"{source_digest(files)}  {module}: {len(files)} files"]
    lines += [f"{source_digest([path])}  {path.relative_to(PACKAGE.parent)}" for path in files]
    return "\n".join(lines) + "\n"


def write_code_deps(out_dir: Path) -> list[Path]:
    """``<out_dir>/<stage>.txt`` for every DVC stage; a file is rewritten only when its content changes."""
    written = []
    for stage, module in STAGE_MODULES.items():
        path = Path(out_dir) / f"{stage}.txt"
        text = stage_code_report(module)
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
        written.append(path)
    return written
