"""Face-recognition models as the decoder uses them: template model and perceptor.

Every model here takes RGB images in [0, 1], shape (B, 3, H, W), resizes them
to its own input size (bilinear, differentiable) and normalises them itself,
so callers never need to know which kind of file they got:

- a project encoder (``.safetensors`` + ``.json`` or a Lightning ``.ckpt``
  of any stage; ImageNet normalisation), run in PyTorch;
- an ONNX face model such as insightface's buffalo_l ``w600k_r50.onnx`` or
  an arcface_torch iresnet exported with its ``torch2onnx.py``: RGB,
  ``(x − 127.5) / 127.5``, the input size its graph declares. As a template
  model it runs in onnxruntime; as a perceptor it is converted to PyTorch
  (onnx2torch) so that gradients reach the decoder.

``embed`` returns L2-normalised float32 templates. ``features`` (perceptor
only) returns intermediate activations and the embedding, with gradients.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from embedlab.models.checkpoints import load_descriptor_model

log = logging.getLogger(__name__)

ONNX_MEAN, ONNX_STD = 0.5, 0.5  # insightface's (x - 127.5) / 127.5 on [0, 1] images


class FaceModelError(ValueError):
    """A file that cannot serve as a face model; the message names it and what is wrong."""


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


class FaceModel(nn.Module):
    """Common interface: ``input_size``, ``embedding_dim``, ``embed(images)``, ``features(images)``."""

    input_size: int
    embedding_dim: int
    source: str

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(images)[-1].float(), dim=-1)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise TypeError(f"{self.source}: this face model gives no features (only templates)")

    def train(self, mode: bool = True) -> "FaceModel":
        """Always in eval mode: a frozen model inside a training module must not update BN or drop out."""
        return super().train(False)


class EncoderFaceModel(FaceModel):
    """A project encoder; ``n_layers`` evenly spaced blocks of its backbone are the features."""

    def __init__(self, model: nn.Module, source: str, n_layers: int = 0) -> None:
        super().__init__()
        self.model, self.source = model.eval(), source
        spec = getattr(model, "spec", None)
        self.input_size = int(getattr(spec, "img_size", 0) or 0)
        if not self.input_size:
            raise FaceModelError(f"{source}: its spec records no img_size; cannot tell the input size")
        self.embedding_dim = int(model.descriptor_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        blocks = _blocks(model)
        if n_layers and not blocks:
            raise FaceModelError(f"{source}: no block sequence to take intermediate features from; "
                                 "set decoder.perceptor_layers: 0 (embedding only)")
        n_layers = min(n_layers, len(blocks))
        picks = sorted({round((i + 1) * len(blocks) / n_layers) - 1 for i in range(n_layers)}) if n_layers else []
        self._taps = [blocks[i] for i in picks]

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        captured: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in self._taps]
        try:
            x = (_resize(images, self.input_size) - self.mean) / self.std
            embedding = self.model(x)
        finally:
            for h in hooks:
                h.remove()
        return [*captured, embedding]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's sequence of blocks: ViT ``blocks``, or the stages of a timm CNN."""
    body = getattr(model, "body", None) or getattr(model, "backbone", None) or model
    for name in ("blocks", "stages", "layers"):
        seq = getattr(body, name, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq):
            return list(seq)
    return [getattr(body, f"layer{i}") for i in range(1, 5) if hasattr(body, f"layer{i}")]


class OnnxTemplateModel(FaceModel):
    """An ONNX face model run by onnxruntime (no gradients): the template model."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.source = str(path)
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise FaceModelError(f"{path}: not a readable ONNX model ({exc})") from None
        self.input_name, self.input_size, self.embedding_dim = _check_onnx_signature(self.session, path)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = ((_resize(images.float(), self.input_size) - ONNX_MEAN) / ONNX_STD).detach().cpu().numpy()
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return F.normalize(torch.from_numpy(np.asarray(out, dtype=np.float32)), dim=-1).to(images.device)


def _check_onnx_signature(session, path: Path) -> tuple[str, int, int]:
    """(input name, square input size, embedding size) of a face model, else a FaceModelError."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise FaceModelError(f"{path}: a face model has one image input, this graph has {len(inputs)}")
    shape = inputs[0].shape
    if len(shape) != 4 or shape[1] != 3 or not (isinstance(shape[2], int) and shape[2] == shape[3]):
        raise FaceModelError(f"{path}: input {inputs[0].name!r} has shape {shape}; a face model takes "
                             "(batch, 3, size, size) with a fixed square size")
    size = int(shape[2])
    probe = np.zeros((2, 3, size, size), dtype=np.float32)
    try:
        out = session.run(None, {inputs[0].name: probe})[0]
    except Exception as exc:
        raise FaceModelError(f"{path}: fails on a (2, 3, {size}, {size}) batch ({exc})") from None
    if out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        raise FaceModelError(f"{path}: output {outputs[0].name!r} has shape {tuple(out.shape)} for a batch of 2; "
                             "a face model outputs one embedding per image (batch, dim): not a face model?")
    return inputs[0].name, size, int(out.shape[1])


class OnnxPerceptor(FaceModel):
    """An ONNX face model converted to PyTorch (onnx2torch): differentiable, embedding as its one feature."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort
        from onnx2torch import convert

        self.source = str(path)
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise FaceModelError(f"{path}: not a readable ONNX model ({exc})") from None
        _, self.input_size, self.embedding_dim = _check_onnx_signature(session, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.model = convert(str(path)).eval()
            except NotImplementedError as exc:  # an operator onnx2torch cannot translate
                raise FaceModelError(f"{path}: cannot be converted to PyTorch for the perceptual loss ({exc}); "
                                     "use it as template model, or a project encoder as perceptor") from None

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.model((_resize(images, self.input_size) - ONNX_MEAN) / ONNX_STD)]


def load_face_model(path: str | Path, role: str = "template", n_layers: int = 0) -> FaceModel:
    """The face model in ``path`` for ``role`` "template" (embeddings only) or "perceptor" (features too).

    Its parameters are frozen: neither role trains it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: face model file not found (a project encoder .safetensors/.ckpt "
                                "or an ONNX face model)")
    if path.suffix == ".onnx":
        model = OnnxPerceptor(path) if role == "perceptor" else OnnxTemplateModel(path)
        if role == "perceptor" and n_layers:
            log.info("%s: an ONNX perceptor contributes its embedding only (no intermediate layers)", path)
    else:
        model = EncoderFaceModel(load_descriptor_model(path), str(path), n_layers if role == "perceptor" else 0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class _OnnxInputAdapter(nn.Module):
    """A project encoder taking the ONNX face-model input: RGB, (x − 127.5) / 127.5."""

    def __init__(self, encoder: EncoderFaceModel) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x * ONNX_STD + ONNX_MEAN
        model = self.encoder.model
        # Face models output the raw embedding and leave normalising to the consumer (as embed() does);
        # it also keeps F.normalize's clamp, which onnx2torch cannot convert, out of the graph.
        forward = getattr(model, "raw_embedding", model)
        return forward((images - self.encoder.mean) / self.encoder.std)


def export_onnx_face_model(encoder_path: str | Path, out: str | Path) -> Path:
    """A project encoder as an ONNX face model (the convention above, dynamic batch), written atomically."""
    from embedlab.atomic import atomic_path

    encoder = EncoderFaceModel(load_descriptor_model(encoder_path), str(encoder_path))
    size = encoder.input_size
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_OnnxInputAdapter(encoder).eval(), (torch.zeros(1, 3, size, size),), str(tmp),
                          input_names=["images"], output_names=["embedding"],
                          dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False,
                          opset_version=17)  # onnx2torch (perceptors) converts opsets up to 17
    return Path(out)
