"""A stage's run state: what lets a re-run resume, re-evaluate or start afresh.

``run.json`` in the stage's output folder holds the settings fingerprint, the
MLflow run id and whether the run finished. A re-run with the same
fingerprint resumes an unfinished run (same MLflow run, its checkpoint, its W
matrix) or, for a finished one, only re-evaluates; any other fingerprint
clears the folder and starts a new run. The fingerprint covers the settings
that shape the model, the data (DVC hash), the code and the parent checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable

from embedlab.const import EVAL_BEFORE, EVAL_BEFORE_JSON, RUN_STATE, last_checkpoint
from embedlab.atomic import write_json_atomic


class OutputFolders:
    """Where one run of a stage writes: ``models_root/<run_name>`` and ``reports_root/<run_name>``.

    Mixed into the stages' request dataclasses, which hold the two roots and
    define ``run_name`` (the field that names the run).
    """

    models_root: Path
    reports_root: Path
    run_name: str

    @property
    def out_dir(self) -> Path:
        return self.models_root / self.run_name

    @property
    def report_dir(self) -> Path:
        return self.reports_root / self.run_name


@dataclasses.dataclass
class RunState:
    fingerprint: str | None = None
    mlflow_run_id: str | None = None
    complete: bool = False

    @classmethod
    def load(cls, path: Path) -> "RunState":
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError:
            return cls()  # unreadable state: start afresh rather than guess
        return cls(**{k: raw.get(k) for k in ("fingerprint", "mlflow_run_id", "complete")})

    def save(self, path: Path) -> None:
        write_json_atomic(path, dataclasses.asdict(self))


def open_run_dir(out_dir: Path, key: str) -> tuple[RunState, str]:
    """The stage's state in ``out_dir`` and what this run does: "start", "resume" or "evaluate".

    A folder left by other settings is cleared first: never mix its output
    into this run. "resume" needs ``checkpoints/last.ckpt``; "evaluate" means
    the same settings already finished (the weights stand, only scores are redone).
    """
    state = RunState.load(out_dir / RUN_STATE)
    same = state.fingerprint == key
    if not same and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if same and state.complete:
        return state, "evaluate"
    if same and last_checkpoint(out_dir).is_file():
        return state, "resume"
    return state, "start"


def scores_before(out_dir: Path, compute: bool, score: Callable[[Path], dict]) -> dict | None:
    """The starting model's scores (the tables' "before"): ``score(out_dir / "eval_before")``,
    computed once and kept in ``eval_before.json``, so a resumed or re-evaluated run reuses them."""
    saved = out_dir / EVAL_BEFORE_JSON
    if saved.is_file():
        return json.loads(saved.read_text())
    if not compute:
        return None
    before = score(out_dir / EVAL_BEFORE)
    write_json_atomic(saved, before)
    return before
