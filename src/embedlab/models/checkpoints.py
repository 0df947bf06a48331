"""Checkpoints: atomic saving, safe loading, weight restoring and export.

Lightning checkpoints are read with ``torch.load(weights_only=True)``. The
descriptor model is exported as safetensors + a JSON spec, the format that
crosses machines (no pickle).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from safetensors.torch import load_file, save_file

from embedlab.atomic import atomic_path, write_json_atomic
from embedlab.models.backbone import DescriptorModel, DescriptorSpec


class CheckpointError(ValueError):
    """A checkpoint that cannot be used where it was given."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary name, then renames."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            try:
                torch.save(checkpoint, tmp)
            except RuntimeError as exc:  # torch's zip writer says "unexpected pos", not ENOSPC, on a full disk
                if shutil.disk_usage(tmp.parent).free < 2**20:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
                raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken or foreign file, whatever the reason
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def checkpoint_epoch(path: str | Path) -> int:
    """The epoch index a Lightning checkpoint was saved at (tensors memory-mapped, not read)."""
    return checkpoint_progress(path)[0]


def checkpoint_progress(path: str | Path) -> tuple[int, int]:
    """(epoch, global step) of a Lightning checkpoint, tensors memory-mapped; an unreadable file is a
    :class:`CheckpointError` naming it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["epoch"]), int(ckpt["global_step"])
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or not a checkpoint at all
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc}); delete it to start the run "
                              "afresh") from exc


def checkpoint_spec(ckpt: dict[str, Any], path: Path) -> DescriptorSpec:
    try:
        return DescriptorSpec(**ckpt["hyper_parameters"]["spec"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: no descriptor spec in its hyper-parameters (not an embedlab drip checkpoint)") from exc


def restore_matching_weights(module: torch.nn.Module, path: str | Path, spec: DescriptorSpec) -> list[str]:
    """Copy every same-named, same-shaped tensor of checkpoint ``path`` into ``module``.

    The ArcFace kernel of another class count is skipped by its shape; a
    checkpoint of another backbone or embedding size is an error, not a
    silent partial restore.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    old = checkpoint_spec(ckpt, path)
    if (old.backbone, old.embedding_dim) != (spec.backbone, spec.embedding_dim):
        raise CheckpointError(
            f"{path}: checkpoint of backbone {old.backbone} ({old.embedding_dim}-d); "
            f"this stage uses {spec.backbone} ({spec.embedding_dim}-d)"
        )
    own = module.state_dict()
    restored = {k: v for k, v in ckpt["state_dict"].items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k.startswith("model.") and k not in restored]
    if missing:
        raise CheckpointError(f"{path}: descriptor weights missing or of another shape: {missing[:5]}")
    module.load_state_dict(restored, strict=False)
    return sorted(restored)


def _model_from_spec(spec: dict[str, Any], path: Path) -> torch.nn.Module:
    """The untrained model a spec describes, by its ``kind``: a drip DescriptorModel (no kind),
    a GemNet (``gem_net``), a FaceEncoder (``face_encoder``) or a TemplateDecoder (``template_decoder``)."""
    from embedlab.models.decoder import DECODER_KIND, DecoderSpec, TemplateDecoder
    from embedlab.models.face_encoder import FACE_ENCODER_KIND, FaceEncoder, FaceEncoderSpec
    from embedlab.models.gem_net import GEM_NET_KIND, GemNet, GemNetSpec  # they build on this package

    kinds = {GEM_NET_KIND: (GemNet, GemNetSpec), FACE_ENCODER_KIND: (FaceEncoder, FaceEncoderSpec),
             DECODER_KIND: (TemplateDecoder, DecoderSpec), None: (DescriptorModel, DescriptorSpec)}
    kind = spec.get("kind")
    if kind not in kinds:
        raise CheckpointError(f"{path}: unknown model kind {kind!r}; known: {sorted(k for k in kinds if k)}")
    model_cls, spec_cls = kinds[kind]
    try:
        return model_cls(spec_cls(**spec))
    except (TypeError, ValueError) as exc:  # a field it lacks, a backbone timm does not know (never fetched)
        raise CheckpointError(f"{path}: not a {spec_cls.__name__} ({exc})") from exc


def load_descriptor_model(path: str | Path) -> torch.nn.Module:
    """A project model (drip, GeM, face encoder or decoder) from a Lightning .ckpt or an exported .safetensors
    (+ .json): the checkpoint's ``model.*`` weights, built by the spec's ``kind``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        spec_path = path.with_suffix(".json")
        if not spec_path.is_file():
            raise CheckpointError(f"{path}: missing its spec file {spec_path.name}")
        try:
            spec = json.loads(spec_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{spec_path}: not a model spec (invalid JSON: {exc})") from exc
        if not isinstance(spec, dict):
            raise CheckpointError(f"{spec_path}: not a model spec (expected a JSON object)")
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for any broken file
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        ckpt = read_checkpoint(path)
        try:
            spec = dict(ckpt["hyper_parameters"]["spec"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: no descriptor spec in its hyper-parameters "
                                  f"(not an embedlab model checkpoint)") from exc
        # The classifier / ArcFace head is training-only; the descriptor model is "model.*".
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model = _model_from_spec(spec, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {spec.get('backbone')}: {exc}") from exc
    return model.eval()


def export_descriptor_model(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``path`` (.safetensors) and its spec beside it (.json); the classifier is not part of it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json_atomic(path.with_suffix(".json"), dataclasses.asdict(model.spec))
    return path


class StepCheckpoints(pl.Callback):
    """Keep a checkpoint at each of ``steps`` (``checkpoints/step-<n>.ckpt``): how the model looked after
    100, 1,000, 10,000 training steps, which last.ckpt overwrites."""

    def __init__(self, folder: Path, steps: list[int]) -> None:
        self.folder, self.steps = Path(folder), set(steps)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step in self.steps:
            trainer.save_checkpoint(self.folder / f"step-{trainer.global_step}.ckpt")
