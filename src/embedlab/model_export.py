"""ONNX and TorchScript copies of a descriptor model (drip, GeM with or without its head, the face encoder),
checked against PyTorch before they are written.

    embedlab export --checkpoint models/drip/s2/descriptor_model.safetensors --out drip.onnx

The copy is the PyTorch model's own forward in eval mode: input ``images``,
float32 (batch, 3, S, S), ImageNet-normalised at the model's size S (what
embedding feeds it, :mod:`embedlab.evaluation.embed`); output ``descriptor``
(batch, dim), L2-normalised (the face encoder's as its spec says); the
batch size is free. Decoding and resizing stay outside the graph.
(``embedlab export-onnx`` writes a face encoder in insightface's input
convention instead, for the decoder.)

Before the file appears, the copy runs beside PyTorch on a random batch
(onnxruntime, or TorchScript's loader): a copy that disagrees by more than
:data:`TOLERANCE` is refused, never written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from embedlab.atomic import atomic_path
from embedlab.models.checkpoints import load_descriptor_model
from embedlab.models.decoder import DECODER_KIND

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
TOLERANCE = 1e-4  # max |difference| of L2-normalised descriptors (float32 kernels differ ~1e-7)
OPSET = 17


def export_model(checkpoint: str | Path, out: str | Path, fmt: str | None = None) -> dict:
    """Write ``checkpoint``'s descriptor model to ``out`` as ``fmt`` (onnx | torchscript; default: by the
    suffix, .onnx / .pt / .ts), after checking it against PyTorch; returns what was written."""
    out = Path(out)
    fmt = fmt or FORMATS.get(out.suffix)
    if fmt not in FORMATS.values():
        raise ValueError(f"{out}: give --format onnx or torchscript (or a .onnx / .pt file name)")
    model = load_descriptor_model(checkpoint)
    if getattr(model.spec, "kind", None) == DECODER_KIND:
        raise ValueError(f"{checkpoint}: a template decoder, not a descriptor model")
    model.use_channels_last(False)  # a plain NCHW graph
    size = model.spec.img_size
    example = torch.zeros(1, 3, size, size)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's and its ONNX exporter's deprecation notices
        if fmt == "onnx":
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["descriptor"],
                              dynamic_axes={"images": {0: "batch"}, "descriptor": {0: "batch"}}, dynamo=False,
                              opset_version=OPSET)
        else:
            torch.jit.trace(model, example).save(str(tmp))
        difference = max_difference(model, tmp, fmt)
        if not difference <= TOLERANCE:  # NaN too
            raise ValueError(f"{out}: the {fmt} copy differs from PyTorch by {difference:.3g} (> {TOLERANCE}); "
                             "not written")
    return {"out": str(out), "format": fmt, "img_size": size, "dim": int(model.descriptor_dim),
            "max_abs_diff": difference}


def run_exported(path: str | Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """Descriptors of float32 ``images`` (batch, 3, S, S) by an exported copy."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images})[0]
    with torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(torch.from_numpy(images)).numpy()


def max_difference(model: torch.nn.Module, path: str | Path, fmt: str, batch: int = 3, seed: int = 0) -> float:
    """Largest |descriptor difference| between ``model`` and its copy on a random batch (a batch size other
    than the one traced, so the free batch dimension is checked too)."""
    size = model.spec.img_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    return float(np.abs(run_exported(path, fmt, images.numpy()) - expected).max())
