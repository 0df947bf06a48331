"""The ``embedlab sweep`` sub-command (registered by :mod:`embedlab.cli`)."""

from __future__ import annotations

import argparse
import os

EXAMPLE = ("embedlab sweep drip_stage --n-trials 20 [--study NAME] [--storage postgresql://user@host/db] "
           "[--workers 2]")
HELP = "Optuna sweep of a stage's settings (sweep.<stage>.space in params.yaml), tracked in MLflow"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sweep`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("sweep", help=HELP, description=HELP, epilog=f"example:\n  {EXAMPLE}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", help="drip_stage, gem_stage, triplet_stage, ... (a section of sweep in params.yaml)")
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.add_argument("--n-trials", type=lambda t: None if t == "" else int(t), help="the study's total trials, over all workers and restarts "
                   "(default: sweep.n_trials)")
    p.add_argument("--study", default=None, help="study name; the same name and storage resume a sweep "
                   "(default: <stage>-<step/recipe/phase>)")
    p.add_argument("--storage", default=None, help="Optuna RDB URL (default: sweep.storage, else "
                   "sqlite:///<repo>/optuna.db; postgresql://... shares a study across machines)")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine sharing the study")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)  # set by the launcher
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> dict:
    from embedlab.config import load_params
    from embedlab.sweep.runner import STORAGE_ENV, SweepRequest, format_summary, run_sweep

    storage = args.storage or None  # "" (MLproject's default): params.yaml's / the default
    if args.worker_index > 0:
        storage = os.environ.get(STORAGE_ENV, storage)
    request = SweepRequest(args.stage, args.n_trials, args.study or None, storage, args.workers, args.params,
                           args.worker_index)
    result = run_sweep(load_params(args.params), request)
    if args.worker_index == 0:
        print(format_summary(result))
        if result["failed"] and not result["complete"] and not result["pruned"]:
            raise SweepFailedError(f"every trial of study {result['study']} failed ({result['failed']}): each "
                                   f"trial's error is in its MLflow run, under the parent run {result['parent_run_id']}")
    return result


class SweepFailedError(RuntimeError):
    """A sweep none of whose trials finished: nothing was learnt, and the exit code says so."""
