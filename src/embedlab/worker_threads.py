"""One compute thread per worker process: with a process per core, OpenCV's and torch's own thread pools
(both used by the image ops, e.g. :mod:`embedlab.resize`) would only compete for the same cores."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


def use_one_thread() -> tuple[int, int]:
    """Limit OpenCV and torch to one thread each in this process; returns the previous (OpenCV, torch) counts."""
    import cv2
    import torch

    before = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    return before


@contextmanager
def one_thread() -> Iterator[None]:
    """:func:`use_one_thread` for a block of work in this process, the previous counts restored after it."""
    import cv2
    import torch

    cv_threads, torch_threads = use_one_thread()
    try:
        yield
    finally:
        cv2.setNumThreads(cv_threads)
        torch.set_num_threads(torch_threads)


def loader_worker_init(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: one thread (torch sets its own in workers, OpenCV does not),
    then Lightning's worker seeding, which Lightning adds itself only to loaders without an init function."""
    use_one_thread()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
