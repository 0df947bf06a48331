"""The data sets a run reads, logged as MLflow dataset inputs: the run page's "Datasets".

Each training stage names what it trains on and is scored on
(:meth:`~embedlab.stages.lifecycle.TrainingStage.training_data`, ``evaluation_data``);
here each becomes an MLflow dataset with its context ("training", "evaluation"):
its name, its source path, its digest (the data's version,
:mod:`embedlab.data_version`: DVC's hash where DVC records one) and its size as
the profile (images, classes, pairs), which the UI's dataset panel lists.

MLflow keeps one dataset per name and digest in an experiment, profile included:
a run that reads part of a set (a drip step's first 16 classes, a fixed scoring
subset), or a set made of more than one path (a list file and the images it
names), gets a digest of its own, and its profile shows the source's version.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import mlflow
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.tracking import MlflowClient

from embedlab.data_version import data_version
from embedlab.digests import settings_digest

TRAINING, EVALUATION = "training", "evaluation"


@dataclasses.dataclass(frozen=True)
class DataInput:
    """One data set a run reads."""

    name: str  # how the UI lists it: "augmented/big", "disc21/query"
    source: Path  # the folder or file it is read from
    size: Mapping[str, int]  # the run's share of it: {"images": 1920, "classes": 240}
    part: Any = None  # which part of ``source`` the run reads (JSON-able, e.g. {"first": 16}); None: all of it
    also: tuple[Path, ...] = ()  # other data it is made of (the images a list file names)

    def as_mlflow(self) -> "SizedDataset":
        version = data_version(self.source)
        digest = version
        profile: dict[str, Any] = dict(self.size)
        if self.part is not None or self.also:
            digest = settings_digest([version, [data_version(p) for p in self.also], self.part])
            profile.update({"part": self.part} if self.part is not None else {}, source_version=version)
        source = get_dataset_source_from_json(json.dumps({"uri": _shown(self.source)}), "local")
        return SizedDataset(source, self.name, digest, profile)


class SizedDataset(MetaDataset):
    """MLflow's metadata-only dataset with a profile: the UI shows its entries (images: 1920)."""

    def __init__(self, source, name: str, digest: str, profile: Mapping[str, Any]) -> None:
        self._profile = dict(profile)
        super().__init__(source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def first(count: int, total: int) -> dict[str, int] | None:
    """The ``part`` of a set whose first ``count`` of ``total`` items a run reads (None: all of them)."""
    return {"first": count} if count < total else None


def log_data_inputs(by_context: Mapping[str, Sequence[DataInput]]) -> None:
    """Log each data set into the active run with its context. Those the run holds already (a resumed or
    re-evaluated run: same name and digest) are not logged again."""
    run_id = mlflow.active_run().info.run_id
    held = {(i.dataset.name, i.dataset.digest) for i in MlflowClient().get_run(run_id).inputs.dataset_inputs}
    datasets, contexts = [], []
    for context, inputs in by_context.items():
        for data in inputs:
            dataset = data.as_mlflow()
            if (dataset.name, dataset.digest) not in held:
                held.add((dataset.name, dataset.digest))
                datasets.append(dataset)
                contexts.append(context)
    if datasets:
        mlflow.log_inputs(datasets, contexts, [None] * len(datasets))


def _shown(path: Path) -> str:
    """The path as the project names it (relative to the working folder where it lies inside it)."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(absolute)
