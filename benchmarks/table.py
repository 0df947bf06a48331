"""What the growth benchmarks share: a --sizes argument and the head of the markdown table they print."""

from __future__ import annotations

import argparse
import os
import platform
from typing import Sequence

GROWTH = (10_000, 100_000, 1_000_000)


def sizes_parser(doc: str | None, default: Sequence[int] = GROWTH) -> argparse.ArgumentParser:
    """An argument parser with the script's doc as help and ``--sizes`` (the data sizes to measure)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(default))
    return parser


def print_head(title: str, columns: Sequence[str], left: Sequence[str] = (), versions: str = "") -> None:
    """The run's title with this machine (cores, Python and ``versions``), then the table's header rows.

    Numbers align right; the columns named in ``left`` align left.
    """
    print(f"{title}; {os.cpu_count()} CPUs; Python {platform.python_version()}{versions}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if c in left else "---:" for c in columns) + "|")
