"""Logged models: a descriptor stage logs a pyfunc model that embeds like `embedlab embed`; the best run of a
stage is registered with a version and an alias; `mlflow models serve` answers with the same descriptors;
ONNX and TorchScript copies of every descriptor model equal PyTorch."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import BIN, cli_env
from servers import free_port, process_group, wait_http
from embedlab.cli import main
from embedlab.config import load_params
from embedlab.descriptors import read_descriptors
from embedlab.evaluation.embed import embed_paths
from embedlab.mlflow_model import image_frame, log_descriptor_model
from embedlab.model_export import export_model, run_exported
from embedlab.model_registry import register_best
from embedlab.models.backbone import DescriptorModel, DescriptorSpec
from embedlab.models.checkpoints import export_descriptor_model, load_descriptor_model
from embedlab.models.face_encoder import FaceEncoder, FaceEncoderSpec
from embedlab.models.gem_net import GemNet, GemNetSpec
from embedlab.stages.gem import plan_gem, run_gem
from embedlab.tracking import ensure_experiment, tracking_uri

SPEC = DescriptorSpec(backbone="test_resnet", embedding_dim=32, gem_p=3.0, img_size=48)


@pytest.fixture
def images(tmp_path: Path, tiny_demo: Path) -> list[Path]:
    """Demo photos (JPEG) and a transparent PNG of another size: every decoding path must agree."""
    photos = sorted((tiny_demo / "disc" / "query").glob("*.jpg"))[:4]
    png = tmp_path / "images" / "odd.png"
    png.parent.mkdir()
    Image.open(photos[0]).convert("RGBA").resize((37, 53)).save(png)
    for photo in photos:
        shutil.copy(photo, png.parent)
    return [png.parent / p.name for p in photos] + [png]


def _experiment() -> tuple[MlflowClient, str]:
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(), ensure_experiment("embedlab")


def _logged_run(stage: str, metrics: dict, seed: int, with_model: bool = True, tags: dict | None = None,
                status: str = "FINISHED") -> tuple[str, str | None]:
    """A run of ``stage`` holding ``metrics`` and (``with_model``) the logged model of a tiny descriptor model
    seeded ``seed``: (run id, model id)."""
    client, experiment = _experiment()
    torch.manual_seed(seed)
    path = export_descriptor_model(DescriptorModel(SPEC), Path(f"exports/{seed}/descriptor_model.safetensors"))
    with mlflow.start_run(experiment_id=experiment, tags={"embedlab.stage": stage, **(tags or {})}) as run:
        mlflow.log_metrics(metrics)
        model_id = log_descriptor_model(load_descriptor_model(path), path) if with_model else None
    if status != "FINISHED":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id, model_id


def test_a_stage_logs_a_pyfunc_model_that_embeds_like_embedlab_embed(tiny_project: Path, images: list[Path]):
    assert main(["augment", "--recipe", "big"]) == 0
    params = load_params()
    summary = run_gem(params, plan_gem(params, "big"))

    client, experiment = _experiment()
    (run,) = client.search_runs([experiment])
    (logged,) = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert logged.name == "model" and logged.status == "READY"
    assert {m.key: m.value for m in logged.metrics}["uAP"] == pytest.approx(summary["uAP"])  # the final scores
    info = mlflow.models.get_model_info(f"models:/{logged.model_id}")
    assert info.signature.inputs.to_dict() == [{"type": "binary", "name": "image", "required": True}]
    assert info.signature.outputs.to_dict() == [{"type": "tensor", "tensor-spec": {
        "dtype": "float32", "shape": (-1, params.gem.descriptor_dim)}}]
    assert info.saved_input_example_info is not None

    # The pyfunc model embeds as embedding does, and as `embedlab embed` writes it.
    exported = load_descriptor_model("models/gem/imagenet/big/descriptor_model.safetensors")
    expected = embed_paths(exported, images, progress=False).vectors
    predicted = mlflow.pyfunc.load_model(f"models:/{logged.model_id}").predict(image_frame(images))
    assert predicted.shape == (len(images), params.gem.descriptor_dim) and predicted.dtype == np.float32
    np.testing.assert_allclose(predicted, expected, atol=1e-6)
    assert main(["embed", "--checkpoint", "models/gem/imagenet/big/descriptor_model.safetensors",
                 "--images", str(images[0].parent), "--out", "embedded.h5"]) == 0
    names, vectors = read_descriptors("embedded.h5")
    by_name = dict(zip(names, vectors))
    np.testing.assert_allclose(np.stack([by_name[p.stem] for p in images]), predicted, atol=1e-6)

    # Re-evaluating the finished run logs no second model of the same weights.
    run_gem(load_params(), plan_gem(params, "big"))
    assert len(client.search_logged_models([experiment])) == 1


def test_an_unreadable_image_fails_the_prediction_naming_its_row(tiny_project: Path, images: list[Path]):
    _, model_id = _logged_run("drip", {"uAP": 0.5}, seed=0)
    model = mlflow.pyfunc.load_model(f"models:/{model_id}")
    frame = pd.DataFrame({"image": [images[0].read_bytes(), images[0].read_bytes()[:200]]})
    with pytest.raises(Exception, match="image row 1"):
        model.predict(frame)


def test_register_picks_the_best_finished_run_with_a_model_and_moves_the_alias(tiny_project: Path,
                                                                                images: list[Path], capsys):
    _, weak = _logged_run("drip", {"uAP": 0.4}, seed=1)
    best_run, best = _logged_run("drip", {"uAP": 0.6}, seed=2)
    _logged_run("drip", {"uAP": 0.9}, seed=3, with_model=False)
    _logged_run("drip", {"uAP": 0.95}, seed=4, status="FAILED")
    _logged_run("drip", {"uAP": 0.99}, seed=5, tags={"mlflow.parentRunId": best_run})  # a sweep's trial
    _logged_run("gem", {"uAP": 0.8}, seed=6)
    client = MlflowClient()

    first = register_best("drip", "embedlab")
    assert (first["run_id"], first["model_id"], first["version"], first["new_version"]) == (best_run, best, 1, True)
    assert first["uri"] == "models:/embedlab-drip@champion" and first["uAP"] == 0.6
    version = client.get_model_version_by_alias("embedlab-drip", "champion")
    assert (int(version.version), version.source) == (1, f"models:/{best}")
    assert version.tags["embedlab.stage"] == "drip" and version.tags["uAP"] == "0.6"

    again = register_best("drip", "embedlab")  # the same model: the alias stays, no second version
    assert (again["version"], again["new_version"]) == (1, False)
    assert len(client.search_model_versions("name = 'embedlab-drip'")) == 1

    better_run, better = _logged_run("drip", {"uAP": 0.7}, seed=7)
    third = register_best("drip", "embedlab")
    assert (third["run_id"], third["version"]) == (better_run, 2)
    assert client.get_model_version_by_alias("embedlab-drip", "champion").source == f"models:/{better}"

    # The alias's model embeds as its run's export does.
    expected = embed_paths(load_descriptor_model("exports/7/descriptor_model.safetensors"), images,
                           progress=False).vectors
    loaded = mlflow.pyfunc.load_model("models:/embedlab-drip@champion")
    np.testing.assert_allclose(loaded.predict(image_frame(images)), expected, atol=1e-6)

    # The face encoder's headline is the lowest EER; the command line names the model and the alias.
    _logged_run("triplet", {"valid_eer": 0.2}, seed=8)
    low_run, low = _logged_run("triplet", {"valid_eer": 0.1}, seed=9)
    capsys.readouterr()
    assert main(["register", "--stage", "triplet", "--alias", "candidate", "--name", "faces"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["run_id"], printed["uri"]) == (low_run, "models:/faces@candidate")
    assert client.get_model_version_by_alias("faces", "candidate").source == f"models:/{low}"

    # Another metric needs its direction; a filter nothing matches names what is missing.
    assert main(["register", "--stage", "drip", "--metric", "recall_at_p90"]) == 2
    assert "--mode" in capsys.readouterr().err
    assert main(["register", "--stage", "gem", "--filter", "tags.`embedlab.gem_recipe` = 'bw'"]) == 2
    assert "no finished gem run" in capsys.readouterr().err
    assert register_best("drip", "embedlab", metric="uAP", mode="min")["model_id"] == weak


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_same_descriptors(tiny_project: Path, images: list[Path]):
    _, model_id = _logged_run("drip", {"uAP": 0.5}, seed=0)
    registered = register_best("drip", "embedlab")
    expected = embed_paths(load_descriptor_model("exports/0/descriptor_model.safetensors"), images,
                           progress=False).vectors
    port = free_port()
    log = tiny_project / "serve.log"
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", registered["uri"], "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port)]
    with process_group(cmd, log, cwd=tiny_project, env=cli_env(MLFLOW_DISABLE_TELEMETRY="true")) as server:
        wait_http(f"http://127.0.0.1:{port}/ping", server, log, timeout=180)
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(p.read_bytes()).decode()] for p in images]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    np.testing.assert_allclose(np.asarray(answer["predictions"], np.float32), expected, atol=1e-6)


# --- ONNX and TorchScript ---------------------------------------------------------------------------

MODELS = {
    "drip-resnet": lambda: DescriptorModel(SPEC),
    "drip-convnext": lambda: DescriptorModel(DescriptorSpec("test_convnext", 32, 3.0, 48)),
    "gem-head": lambda: GemNet(GemNetSpec("test_resnet", 48, proj_hidden=32, proj_dim=64, descriptor_dim=16)),
    "gem-neck-convnext": lambda: GemNet(GemNetSpec("test_convnext", 48, proj_hidden=32, proj_dim=64)),
    "face-encoder": lambda: FaceEncoder(FaceEncoderSpec("vit_tiny_patch16_224", 32, patch_size=8, depth=2)),
}


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and GeM exponent, as after training (fresh ones hide mistakes)."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
        if hasattr(module, "p") and isinstance(module.p, torch.nn.Parameter):
            module.p.data.fill_(3.7)
    return model.eval()


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
@pytest.mark.parametrize("kind", MODELS)
def test_exported_copies_equal_pytorch(tmp_path: Path, kind: str, fmt: str, suffix: str):
    model = _trained_looking(MODELS[kind]())
    weights = export_descriptor_model(model, tmp_path / "model.safetensors")
    written = export_model(weights, tmp_path / f"model{suffix}")
    assert written["format"] == fmt and written["max_abs_diff"] <= 1e-4

    size = model.spec.img_size
    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = load_descriptor_model(weights)(images).numpy()
    copy = run_exported(tmp_path / f"model{suffix}", fmt, images.numpy())
    assert copy.shape == (5, model.descriptor_dim)
    np.testing.assert_allclose(copy, expected, atol=1e-5)


def test_a_copy_that_disagrees_with_pytorch_is_not_written(tmp_path: Path, monkeypatch, capsys):
    weights = export_descriptor_model(DescriptorModel(SPEC).eval(), tmp_path / "model.safetensors")
    assert main(["export", "--checkpoint", str(weights), "--out", str(tmp_path / "ok.onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == SPEC.embedding_dim

    import embedlab.model_export as model_export

    real = model_export.run_exported
    monkeypatch.setattr(model_export, "run_exported", lambda *args: real(*args) + 1e-2)
    assert main(["export", "--checkpoint", str(weights), "--out", str(tmp_path / "bad.onnx")]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors", "ok.onnx"]
