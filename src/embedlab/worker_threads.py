"""One compute thread per worker process: with a process per core, OpenCV's and torch's own thread pools
(both used by the image ops, e.g. :mod:`embedlab.resize`) would only compete for the same cores.

OpenCV's thread count must be set in the parent, before it forks the workers: a forked child that
changes it waits forever on the parent's thread pool, which it inherited without its threads. The
children inherit the setting; torch's count is per process, so each child sets its own.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


def opencv_single_threaded() -> int:
    """OpenCV on one thread in this process (and the processes it forks from now on); returns the old count."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return before


def torch_single_threaded() -> None:
    """torch on one thread in this process (a forked worker's first step; safe after a fork)."""
    import torch

    torch.set_num_threads(1)


@contextmanager
def one_thread() -> Iterator[None]:
    """OpenCV and torch on one thread each for a block of work in this process (or in the workers it
    forks inside the block), the previous counts restored after it."""
    import cv2
    import torch

    cv_threads, torch_threads = opencv_single_threaded(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(cv_threads)
        torch.set_num_threads(torch_threads)
