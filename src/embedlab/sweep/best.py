"""A sweep's results: the best parameters as a params.yaml overlay, the `dvc exp run` that applies
them, and the study's plots.

``best_params.yaml`` holds only the sampled settings, nested as in
params.yaml (``drip: {lr: 0.003}``); the settings every trial fixed (its
shortened epochs, scoring) are left out, so the pipeline runs them at full
length. The printed command sets each one with ``--set-param``.
"""

from __future__ import annotations

import logging
import shlex
import warnings
from pathlib import Path
from typing import Any, Mapping

import optuna
import yaml

from embedlab.atomic import atomic_path, write_text_atomic
from embedlab.sweep.space import Knob, ParamPath

log = logging.getLogger(__name__)


def nested(values: Mapping[ParamPath, Any]) -> dict:
    """``{("drip", "lr"): 0.003}`` -> ``{"drip": {"lr": 0.003}}``."""
    out: dict = {}
    for path, value in values.items():
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def yaml_scalar(value: Any) -> str:
    """A value as DVC's YAML reads it back with the same type (a float always has a dot)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    return str(value)


def set_param_command(best_file: Path) -> str:
    """``dvc exp run --set-param drip.lr=0.003 ...`` for the settings in ``best_file``."""
    return set_param_command_from(yaml.safe_load(Path(best_file).read_text()) or {})


def write_best_params(path: Path, trial: optuna.trial.FrozenTrial, knobs: Mapping[str, Knob], study: str,
                      metric: str) -> dict:
    """The best trial's sampled values under their params.yaml paths, written atomically."""
    values = {knobs[k].path: v for k, v in trial.params.items() if k in knobs}
    tree = nested(values)
    header = (f"# Best trial {trial.number} of study {study!r}: {metric} {trial.value:.6g}\n"
              f"# Apply: {set_param_command_from(tree)}\n")
    write_text_atomic(path, header + yaml.safe_dump(tree, sort_keys=True))
    return tree


def set_param_command_from(tree: Mapping) -> str:
    args = " ".join(f"--set-param {shlex.quote(f'{k}={yaml_scalar(v)}')}" for k, v in flat(tree).items())
    return f"dvc exp run {args}".rstrip()


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history, parameter importances and parallel coordinates as PNGs (matplotlib).

    A plot the study cannot draw yet (importances need two complete trials
    with varying parameters) is skipped with a log line, never an error.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history": ovm.plot_optimization_history}
    if len(complete) >= 2:
        plots.update(param_importances=ovm.plot_param_importances, parallel_coordinate=ovm.plot_parallel_coordinate)
    written = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's "experimental" notices
                ax = plot(study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.set_size_inches(10, 6)
            path = folder / f"{name}.png"
            with atomic_path(path) as tmp:
                figure.savefig(tmp, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(path)
        except Exception as exc:  # e.g. importances of a parameter that never varied
            log.info("sweep: no %s plot (%s)", name, exc)
            plt.close("all")
    return written
