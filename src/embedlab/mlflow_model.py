"""An exported descriptor model as an MLflow pyfunc model: images in, ``embedlab embed``'s descriptors out.

    model = mlflow.pyfunc.load_model("models:/embedlab-drip@champion")
    vectors = model.predict(image_frame(["a.jpg", "b.png"]))  # float32 [2, dim], one row per image

The input is a DataFrame with one column, ``image``: each row an image file's
bytes (JPEG, PNG ...). Over REST (``mlflow models serve``) the column holds
base64 text, which MLflow's scoring server decodes because the signature
types the column ``binary``. The bytes take embedding's own path
(:func:`embedlab.evaluation.embed.embed_paths`: decoding, resizing to the
model's size, ImageNet normalisation, the runtime defaults), so the
descriptors equal ``embedlab embed``'s for the same files.

A stage logs its exported model (drip, GeM, the face encoder; the decoder
maps templates to images and is not one) with :func:`log_descriptor_model`:
the ``.safetensors`` + ``.json`` as artifacts, embedlab's own source as
code (the model loads where embedlab is not installed) and pinned
requirements, so MLflow never infers them.
"""

from __future__ import annotations

import importlib.metadata
import io
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from PIL import Image

from embedlab.config import RuntimeConfig
from embedlab.const import LOGGED_MODEL
from embedlab.digests import PACKAGE, file_digest
from embedlab.images import BadImageError
from embedlab.log_noise import artifact_copy_bars_off

IMAGE_COLUMN = "image"
WEIGHTS_DIGEST_TAG = "embedlab.weights_digest"  # the logged model's weights: a re-evaluated run logs no second copy
# What loading and embedding import (transitive packages follow from these), pinned to the versions installed.
INFERENCE_PACKAGES = ("mlflow", "torch", "torchvision", "timm", "safetensors", "pytorch-lightning", "pillow",
                      "numpy", "pandas", "pyyaml", "tqdm")
# No loader worker processes for a request's few images; the worker count never changes the descriptors.
_RUNTIME = RuntimeConfig(num_workers=0)


# The model as code, not a pickle (MLflow's "models from code"): it loads whatever the Python and cloudpickle
# versions, importing the embedlab copy logged beside it.
_MODEL_CODE = """import mlflow
from embedlab.mlflow_model import DescriptorPyfunc

mlflow.models.set_model(DescriptorPyfunc())
"""


class DescriptorPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc model: artifacts ``weights`` (.safetensors) and ``spec`` (.json, the same stem)."""

    def load_context(self, context) -> None:
        from embedlab.models.checkpoints import load_descriptor_model

        self.model = load_descriptor_model(context.artifacts["weights"])

    # A DataFrame hint: MLflow checks the input against the logged signature, not a schema of its own inference.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return embed_image_bytes(self.model, list(pd.DataFrame(model_input)[IMAGE_COLUMN]))


def embed_image_bytes(model: torch.nn.Module, images: Sequence[bytes]) -> np.ndarray:
    """Descriptors [n, dim] of encoded images, row by row, through ``embed_paths`` as files: the same decoding
    and resizing as ``embedlab embed``. An unreadable image fails the call naming its row."""
    from embedlab.evaluation.embed import embed_paths

    with tempfile.TemporaryDirectory(prefix="embedlab-predict-") as tmp:
        paths = [Path(tmp) / f"row-{i}" for i in range(len(images))]
        for path, data in zip(paths, images):
            path.write_bytes(bytes(data))
        try:
            return embed_paths(model, paths, runtime=_RUNTIME, progress=False).vectors
        except BadImageError as exc:
            raise ValueError(f"{IMAGE_COLUMN} row {exc.path.name.removeprefix('row-')}: {exc.reason}") from None


def image_frame(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The model's input for image files: their bytes in the ``image`` column."""
    return pd.DataFrame({IMAGE_COLUMN: [Path(p).read_bytes() for p in paths]})


def signature(descriptor_dim: int) -> ModelSignature:
    return ModelSignature(inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, descriptor_dim))]))


def input_example(img_size: int) -> pd.DataFrame:
    """One small grey-gradient JPEG: what the UI shows and MLflow's serving check predicts."""
    ramp = np.linspace(0, 255, img_size, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([np.tile(ramp, (img_size, 1))] * 3, axis=-1)).save(buffer, format="JPEG")
    return pd.DataFrame({IMAGE_COLUMN: [buffer.getvalue()]})


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in INFERENCE_PACKAGES]


def logged_model_of(run_id: str, name: str, weights: str) -> str | None:
    """The id of run ``run_id``'s logged model ``name`` holding these weights, if it has one."""
    experiment = mlflow.get_run(run_id).info.experiment_id
    found = mlflow.search_logged_models(
        experiment_ids=[experiment], output_format="list",
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}' AND tags.`{WEIGHTS_DIGEST_TAG}` = '{weights}'")
    return next((m.model_id for m in found if m.status == "READY"), None)


def log_descriptor_model(model: torch.nn.Module, model_path: Path, name: str = LOGGED_MODEL) -> str:
    """Log the exported ``model_path`` (.safetensors beside its .json; ``model`` is what it holds) as a logged
    model of the active run; returns its model id. The run's logged model of the same weights is reused."""
    from embedlab.models.decoder import DECODER_KIND

    if getattr(model.spec, "kind", None) == DECODER_KIND:
        raise ValueError(f"{model_path}: a template decoder maps templates to images; only descriptor models "
                         "are logged as pyfunc models")
    run_id = mlflow.active_run().info.run_id
    weights = file_digest(model_path)
    existing = logged_model_of(run_id, name, weights)
    if existing:
        return existing
    saved_path = list(sys.path)
    with tempfile.TemporaryDirectory(prefix="embedlab-code-") as tmp:
        code = Path(shutil.copytree(PACKAGE, Path(tmp) / "embedlab", ignore=shutil.ignore_patterns("__pycache__")))
        entry = Path(tmp) / "descriptor_pyfunc.py"
        entry.write_text(_MODEL_CODE)
        try:
            with artifact_copy_bars_off():  # a "Downloading artifacts" bar per file copied into the model
                info = mlflow.pyfunc.log_model(
                    name=name, python_model=str(entry),
                    artifacts={"weights": str(model_path), "spec": str(model_path.with_suffix(".json"))},
                    code_paths=[str(code)], pip_requirements=pip_requirements(),
                    signature=signature(int(model.descriptor_dim)),
                    input_example=input_example(model.spec.img_size), tags={WEIGHTS_DIGEST_TAG: weights})
        finally:
            # MLflow's check of the input example loads the model here, putting its (temporary) code first on
            # sys.path; this process keeps importing its own embedlab.
            sys.path[:] = saved_path
    return info.model_id
