"""One writer per output folder: a second run of the same stage folder is refused while the first runs.

Two runs writing one folder would mix their files: ``run.json`` naming one
run beside the other's checkpoint, and the next step starting from the wrong
weights. The lock is an ``flock`` on a file beside the folder (it survives
the folder being moved aside); the kernel releases it when the holder dies,
so a killed run never leaves a stale lock. The file names the holder (PID,
host, start time) for the refusal's message.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator


class OutputBusyError(RuntimeError):
    """Another process is writing the output folder."""


def lock_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock for the block; raise :class:`OutputBusyError` naming the holder if another has it."""
    path = lock_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputBusyError(f"{out_dir}: another run is writing this folder ({holder}; lock {path}); wait "
                                  "for it to finish or stop it, or give this run another name") from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}, since {started}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
