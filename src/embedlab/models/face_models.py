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
only) returns intermediate activations and the embedding, with gradients:
evenly spaced blocks of a project encoder; for an ONNX perceptor the graph
nodes the user names, else the ends of its last stages (:func:`_stage_ends`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

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
    """An ONNX face model converted to PyTorch (onnx2torch), so gradients reach the decoder.

    Its features are the outputs of graph nodes and, last, the embedding: the nodes named in ``nodes`` (as the
    file calls them, as Netron shows them, or their output tensors), else the ends of its last ``n_layers``
    stages (:func:`_stage_ends`).
    """

    def __init__(self, path: Path, n_layers: int = 0, nodes: Sequence[str] = ()) -> None:
        super().__init__()
        import onnx
        import onnxruntime as ort
        from onnx2torch import convert

        self.source = str(path)
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise FaceModelError(f"{path}: not a readable ONNX model ({exc})") from None
        _, self.input_size, self.embedding_dim = _check_onnx_signature(session, path)
        proto = _inline_shared_initializers(onnx.load(str(path)))
        # onnx2torch renames nodes ('.' -> '/'); users know the file's names, so keep them by output tensor.
        file_names = {out: node.name for node in proto.graph.node for out in node.output}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.model = convert(proto, attach_onnx_mapping=True).eval()
            except Exception as exc:  # NotImplementedError for an unknown operator, KeyError and others too
                raise FaceModelError(f"{path}: cannot be converted to PyTorch for the perceptual loss ({exc!r}); "
                                     "use it as template model, or a project encoder as perceptor") from None
            with torch.no_grad():  # one probe gives every node's output shape (node.meta["tensor_meta"])
                ShapeProp(self.model).propagate(torch.zeros(2, 3, self.input_size, self.input_size))
        names = _node_names(self.model, file_names)
        display = {node: name for name, node in reversed(names.items())}  # a node's first alias: the file's name
        trunk = _trunk(self.model.graph)
        if nodes:
            taps = [_named_node(name, names, display, trunk, path) for name in dict.fromkeys(nodes)]
        else:
            taps = _stage_ends(trunk, self.input_size)[-n_layers:] if n_layers else []
            if len(taps) < n_layers:
                log.warning("%s: found %d of the %d stage ends asked for (decoder.perceptor_layers); name the nodes "
                            "in decoder.perceptor_nodes to take others", path, len(taps), n_layers)
        self.feature_nodes = [display[node] for node in taps]
        log.info("%s: perceptual features from %s and the embedding", path, self.feature_nodes or "no node")
        # The graph itself also returns the tapped nodes' outputs: no hooks to add and remove on every call.
        output = next(n for n in self.model.graph.nodes if n.op == "output")
        embedding = output.args[0]
        if isinstance(embedding, (tuple, list)):
            embedding = embedding[0]  # the first output is the embedding (_check_onnx_signature checked it)
        output.args = ((*taps, embedding),)
        self.model.recompile()

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model((_resize(images, self.input_size) - ONNX_MEAN) / ONNX_STD))


def _inline_shared_initializers(proto):
    """Equal weights (e.g. the biases of freshly initialised BatchNorms folded into convolutions) are stored once
    by torch's exporter and passed on by Identity nodes; onnx2torch wants a convolution's weights as initializers."""
    import onnx

    initializers = {t.name: t for t in proto.graph.initializer}
    for node in [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in initializers]:
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[node.input[0]])
        copy.name = node.output[0]
        proto.graph.initializer.append(copy)
        proto.graph.node.remove(node)
    return proto


def _floating(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, TensorMetadata) and meta.dtype.is_floating_point


def _node_names(model: fx.GraphModule, file_names: dict[str, str]) -> dict[str, fx.Node]:
    """Every name a user may give a node with a float output: the file's node name, onnx2torch's module name
    and the node's output tensor name."""
    names: dict[str, fx.Node] = {}
    for node in model.graph.nodes:
        if node.op == "call_module" and _floating(node):  # a node of several outputs is a tuple: not offered
            outputs = model.get_submodule(node.target).onnx_mapping.outputs
            for name in (file_names.get(outputs[0]), node.target, *outputs):
                if name:
                    names.setdefault(name, node)
    return names


def _named_node(name: str, names: dict[str, fx.Node], display: dict[fx.Node, str], trunk: list[fx.Node],
                path: Path) -> fx.Node:
    if name in names:
        return names[name]
    # Suggest the nodes every path goes through (block outputs, not their insides), with their output shapes.
    offered = [n for n in trunk if n in display]
    some = [offered[round(i * (len(offered) - 1) / 9)] for i in range(10)] if len(offered) > 10 else offered
    listed = ", ".join(f"{display[n]!r} {tuple(n.meta['tensor_meta'].shape)[1:]}" for n in some)
    raise FaceModelError(f"{path}: has no node {name!r} (decoder.perceptor_nodes); name a node as the file calls it "
                         f"or its output tensor, e.g. {listed or 'none: the graph has no float nodes'}")


def _trunk(graph: fx.Graph) -> list[fx.Node]:
    """The float nodes every path from the image to the output goes through, in graph order.

    A residual block's output lies on it; the layers inside the block do not (its shortcut bypasses them), so
    "the last node at a resolution" is a stage's last block, not the first layers of the next stage.
    """
    data = [n for n in graph.nodes if _floating(n)]  # shape arithmetic (int tensors) is no path for the image
    fed: set[fx.Node] = set()
    for n in data:
        if n.op == "placeholder" or any(a in fed for a in n.all_input_nodes):
            fed.add(n)
    live: set[fx.Node] = set()
    for n in reversed(data):
        if n in fed and any(u.op == "output" or u in live for u in n.users):
            live.add(n)
    order = [n for n in data if n in live]  # graph order is topological
    position = {n: i for i, n in enumerate(order)}
    trunk, reach = [], 0
    for i, n in enumerate(order):
        if reach <= i:  # no edge from an earlier node jumps over this one
            trunk.append(n)
        reach = max([reach, *(position[u] for u in n.users if u in position)])
    return trunk


def _stage_ends(trunk: list[fx.Node], input_size: int) -> list[fx.Node]:
    """The ends of a CNN's stages: along the trunk, the last node at each spatial size.

    Only (B, C, H, W) maps count, from 2×2 px up to below the input's size (not the normalised image itself).
    For an iresnet at 112 px: the ends of layer1-3 (56, 28, 14 px) and layer4 after its closing BatchNorm
    (7 px). A transformer's tokens are no maps: name its block outputs instead.
    """
    ends: list[fx.Node] = []
    sizes: list[tuple[int, int]] = []
    for n in trunk:
        shape = tuple(n.meta["tensor_meta"].shape)
        if len(shape) != 4 or min(shape[2:]) < 2 or shape[2] * shape[3] >= input_size**2:
            continue
        if sizes and sizes[-1] == shape[2:]:
            ends[-1] = n
        else:
            ends.append(n)
            sizes.append(shape[2:])
    return ends


def load_face_model(path: str | Path, role: str = "template", n_layers: int = 0,
                    nodes: Sequence[str] = ()) -> FaceModel:
    """The face model in ``path`` for ``role`` "template" (embeddings only) or "perceptor" (features too).

    A perceptor's features: ``n_layers`` intermediate layers and the embedding; for an ONNX perceptor the graph
    nodes named in ``nodes`` instead, when given. Its parameters are frozen: neither role trains it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: face model file not found (a project encoder .safetensors/.ckpt "
                                "or an ONNX face model)")
    if path.suffix == ".onnx":
        model = OnnxPerceptor(path, n_layers, nodes) if role == "perceptor" else OnnxTemplateModel(path)
    elif nodes:
        raise FaceModelError(f"{path}: decoder.perceptor_nodes names nodes of an ONNX perceptor; a project "
                             "encoder's features are chosen by decoder.perceptor_layers (leave the nodes empty)")
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
