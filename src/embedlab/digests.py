"""Short sha256 digests (16 hex digits) of settings, files and source code: what tells runs apart."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import embedlab

PACKAGE = Path(embedlab.__file__).resolve().parent


def _jsonable(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)


def settings_digest(settings: Any) -> str:
    """Digest of JSON-able ``settings`` (dataclasses as dicts, other objects as text), key order ignored."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=_jsonable).encode()).hexdigest()[:16]


def update_with_file(h, path: str | Path) -> None:
    """Feed a file's bytes to hash ``h`` a MiB at a time (files of any size, flat memory)."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def file_digest(path: str | Path) -> str:
    """Digest of a file's bytes, e.g. to tell whether a model file changed."""
    h = hashlib.sha256()
    update_with_file(h, path)
    return h.hexdigest()[:16]


def source_digest(files: Iterable[Path] | None = None) -> str:
    """Digest of source files (names relative to the package, and bytes); default: the whole package.

    A code change is a new model (the stages' fingerprints) or other image bytes (the generator's).
    """
    h = hashlib.sha256()
    for path in sorted(files) if files is not None else sorted(PACKAGE.rglob("*.py")):
        h.update(str(Path(path).resolve().relative_to(PACKAGE)).encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def fingerprint(settings: Any, files: Iterable[Path | None] = (), code: Iterable[Path] | None = None) -> str:
    """Digest of ``settings``, the source ``code`` (default: the whole package) and the bytes of ``files``
    (None entries skipped)."""
    h = hashlib.sha256(settings_digest(settings).encode())
    h.update(source_digest(code).encode())
    for path in files:
        if path is not None:
            update_with_file(h, path)
    return h.hexdigest()[:16]
