"""A stage's run state: what lets a re-run resume, re-evaluate or start afresh.

``run.json`` in the stage's output folder holds the settings fingerprint, the
MLflow run id and whether the run finished. A re-run with the same
fingerprint resumes an unfinished run (same MLflow run, its checkpoint, its W
matrix) or, for a finished one, only re-evaluates; any other fingerprint
starts a new run. The fingerprint covers the settings that shape the model,
the data (DVC hash), the code and the parent checkpoint.

A finished run is never deleted by a run that has not finished: other
settings move it aside (``.<name>.previous`` beside the folder) until the new
run completes; a re-run with its settings brings it back.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable

from embedlab.atomic import atomic_path, write_json_atomic
from embedlab.const import BEST_CKPT, CHECKPOINTS, EVAL_BEFORE, EVAL_BEFORE_JSON, RUN_STATE, last_checkpoint
from embedlab.models.checkpoints import checkpoint_progress


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


def previous_dir(out_dir: Path) -> Path:
    """Where a finished run waits while a run of other settings replaces it."""
    return out_dir.parent / f".{out_dir.name}.previous"


def _set_aside(folder: Path, out_dir: Path) -> None:
    """Keep ``folder`` as the previous run when it finished; drop unfinished work of other settings."""
    if RunState.load(folder / RUN_STATE).complete:
        kept = previous_dir(out_dir)
        if kept.exists():
            shutil.rmtree(kept)
        folder.rename(kept)
    else:
        shutil.rmtree(folder)


def open_run_dir(out_dir: Path, key: str) -> tuple[RunState, str]:
    """The stage's state in ``out_dir`` and what this run does: "start", "resume" or "evaluate".

    A folder left by other settings never mixes its output into this run: a
    finished one is moved aside until this run completes (``drop_previous``),
    an unfinished one is cleared; a finished run of these settings that was
    moved aside comes back. "resume" needs ``checkpoints/last.ckpt``;
    "evaluate" means the same settings already finished (the weights stand,
    only scores are redone).
    """
    if out_dir.is_symlink():
        raise ValueError(f"{out_dir}: the stage's output folder is a symbolic link; link its parent folder "
                         "instead (a re-run moves and replaces this folder)")
    state = RunState.load(out_dir / RUN_STATE)
    if state.fingerprint != key:
        kept = previous_dir(out_dir)
        if RunState.load(kept / RUN_STATE).fingerprint == key:  # back to the settings of the run set aside
            trash = out_dir.parent / f".{out_dir.name}.replaced"
            if trash.exists():  # left by a run killed mid-swap
                shutil.rmtree(trash)
            if out_dir.exists():
                out_dir.rename(trash)
            kept.rename(out_dir)
            if trash.exists():
                _set_aside(trash, out_dir)
            state = RunState.load(out_dir / RUN_STATE)
        elif out_dir.exists():
            _set_aside(out_dir, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    same = state.fingerprint == key
    if same and not state.complete:
        newest_as_last(out_dir)
    if same and state.complete:
        return state, "evaluate"
    if same and last_checkpoint(out_dir).is_file():
        return state, "resume"
    return state, "start"


def newest_as_last(out_dir: Path) -> None:
    """Make ``last.ckpt`` the newest checkpoint. At an epoch's end ``best.ckpt`` is written before
    ``last.ckpt``: a kill between the two leaves ``last.ckpt`` an epoch behind, and a resume from it would
    train (and log) that epoch twice, and the next step would start from the older weights."""
    best, last = out_dir / CHECKPOINTS / BEST_CKPT, last_checkpoint(out_dir)
    last_at = checkpoint_progress(last) if last.is_file() else None  # an unreadable one is refused, named
    if best.is_file() and (last_at is None or checkpoint_progress(best) > last_at):
        with atomic_path(last) as tmp:
            shutil.copyfile(best, tmp)


def restore_previous(out_dir: Path) -> bool:
    """A run that failed before its first checkpoint gives the folder back to the finished run it was
    replacing; returns whether it did. (With a checkpoint, the failed run stays, to be resumed.)"""
    kept = previous_dir(out_dir)
    if not kept.is_dir() or last_checkpoint(out_dir).is_file():
        return False
    if out_dir.exists():
        shutil.rmtree(out_dir)
    kept.rename(out_dir)
    return True


def drop_previous(out_dir: Path) -> None:
    """The run in ``out_dir`` completed: the finished run it replaced is no longer needed."""
    kept = previous_dir(out_dir)
    if kept.exists():
        shutil.rmtree(kept)


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
