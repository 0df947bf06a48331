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
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import embedlab
from embedlab.atomic import write_json_atomic


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


def code_digest() -> str:
    """Digest of the embedlab package source: a code change is a new model."""
    h = hashlib.sha256()
    root = Path(embedlab.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(settings: Any, files: Iterable[Path | None] = ()) -> str:
    """sha256 of JSON-able ``settings``, the code, and the bytes of ``files``."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(code_digest().encode())
    for path in files:
        if path is None:
            continue
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
