"""The templates and decoder stages end to end on a tiny face set (real images, real MLflow store)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import PROJECT, logged_image_keys, run, tiny_params
from embedlab.config import load_params
from embedlab.data.templates import read_template_set, to_unit_tensor
from embedlab.images import load_rgb
from embedlab.models.checkpoints import export_descriptor_model, read_checkpoint
from embedlab.models.face_encoder import FaceEncoder, FaceEncoderSpec
from embedlab.models.face_models import load_face_model
from embedlab.stages.decoder import DecoderRequest, run_decoder, validate_decoder
from embedlab.stages.templates import build_templates


def _encoder(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = FaceEncoder(FaceEncoderSpec(backbone="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2))
    return export_descriptor_model(model.eval(), path)


def _decoder_params(root: Path, **decoder) -> dict:
    """Random encoders stand in for the trained ones: the decoder must invert whatever the model computes."""
    params = tiny_params()
    params["templates"]["model"] = str(_encoder(root / "models" / "template" / "encoder.safetensors", seed=1))
    params["decoder"]["perceptor"] = str(_encoder(root / "models" / "perceptor" / "encoder.safetensors", seed=2))
    params["decoder"].update(decoder)
    return params


@pytest.fixture
def decoder_project(tiny_project: Path, tiny_faces: Path) -> Path:
    shutil.copytree(tiny_faces, tiny_project / "data" / "raw" / "faces")
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(_decoder_params(tiny_project)))
    return tiny_project


def test_templates_are_the_models_embeddings_split_by_person(decoder_project: Path):
    params = load_params()
    manifest = build_templates(params)
    train, test = read_template_set("data/templates", "train"), read_template_set("data/templates", "test", dim=192)
    assert not set(train.persons[train.person]) & set(test.persons[test.person])
    assert manifest["splits"]["test"]["persons"] >= 1 and len(train) + len(test) == 16 * 3  # the real photos only
    assert all(len(p.parts) == 4 and str(p).startswith("train/images/") for p in train.paths)
    model = load_face_model(params.templates.model, "template")
    photos = torch.stack([to_unit_tensor(load_rgb(Path("data/raw/faces") / p), 32) for p in test.paths[:3]])
    with torch.no_grad():
        np.testing.assert_allclose(model.embed(photos).numpy(), test.templates[:3], atol=1e-5)


def test_templates_of_an_imported_photo_list_equal_those_of_the_face_set(decoder_project: Path):
    from embedlab.data.faces import read_face_meta
    from embedlab.data.photo_list import import_photo_table

    build_templates(load_params())
    before = {split: read_template_set("data/templates", split) for split in ("train", "test")}
    meta = read_face_meta("data/raw/faces/train")
    rows = [f"train/images/{key},{key.split('/')[0]}" for key, fake in meta.items() if not fake]
    Path("photos.csv").write_text("\n".join(["path,person", *rows]) + "\n")
    import_photo_table("photos.csv", "data/raw/faces", "data/decoder_photos")
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["templates"]["photos"] = "data/decoder_photos"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    manifest = build_templates(load_params())
    assert manifest["photos"] == "data/decoder_photos"
    for split, earlier in before.items():
        now = read_template_set("data/templates", split)
        assert now.paths == earlier.paths
        assert np.array_equal(now.persons[now.person], earlier.persons[earlier.person])
        np.testing.assert_allclose(now.templates, earlier.templates, atol=1e-6)


def test_a_killed_templates_embedding_resumes_after_its_last_chunk(decoder_project: Path, monkeypatch):
    import embedlab.stages.templates as templates_stage

    params = load_params()
    params = dataclasses.replace(params, runtime=dataclasses.replace(params.runtime, inference_batch_size=4))
    build_templates(params)
    whole = {split: read_template_set("data/templates", split) for split in ("train", "test")}
    shutil.rmtree("data/templates")
    monkeypatch.setattr(templates_stage, "CHUNK", 8)  # a chunk file every 2 batches
    real_load, embedded = templates_stage.load_face_model, []

    def counting_model(path, role, fail_after=None):
        model = real_load(path, role)
        embed = model.embed

        def counted(images):
            if fail_after is not None and len(embedded) >= fail_after:
                raise KeyboardInterrupt  # the kill, in the middle of the train split
            embedded.append(len(images))
            return embed(images)
        model.embed = counted
        return model

    monkeypatch.setattr(templates_stage, "load_face_model", lambda p, r: counting_model(p, r, fail_after=5))
    with pytest.raises(KeyboardInterrupt):
        build_templates(params)
    done = sum(embedded)
    assert len(list(Path("data/templates/train.h5.parts").glob("chunk_*.npz"))) >= 1
    embedded.clear()
    monkeypatch.setattr(templates_stage, "load_face_model", counting_model)
    build_templates(params)
    chunks_done = (done // 8) * 8  # only complete chunks are kept
    assert sum(embedded) == 16 * 3 - chunks_done  # the rerun embeds what the kept chunks do not hold
    for split, earlier in whole.items():
        now = read_template_set("data/templates", split)
        assert now.paths == earlier.paths
        np.testing.assert_allclose(now.templates, earlier.templates, atol=1e-6)
    assert not list(Path("data/templates").glob("*.parts"))


def test_short_training_raises_the_cosine_and_logs_grids_and_checkpoints(decoder_project: Path):
    params = load_params()
    build_templates(params)
    cfg = dataclasses.replace(params.decoder, epochs=20, save_at_steps=[1, 10])
    summary = run_decoder(params, DecoderRequest(cfg=cfg))
    # Untrained, a decoded face shares little with its template; a few epochs make it clearly closer.
    assert summary["cosine_mean"] > summary["before_cosine_mean"] + 0.1, summary
    assert 0.0 <= summary["above_threshold"] <= 1.0 and summary["n_samples"] == len(
        read_template_set("data/templates", "test").paths)

    client = MlflowClient()
    (logged,) = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])
    assert logged.data.params["decoder.perceptual_weight"] == "11.0"
    assert logged.data.metrics["cosine_mean"] == pytest.approx(summary["cosine_mean"])
    assert len(client.get_metric_history(logged.info.run_id, "val_cosine_mean")) == 20
    # What a person would compare, epoch by epoch. (With random encoders as template model and perceptor, as
    # here, the perceptual term may pull the faces away from their photos: the cosine alone would not show it.)
    ssim_history = [m.value for m in client.get_metric_history(logged.info.run_id, "val_ssim")]
    assert len(ssim_history) == 20 and all(-1.0 <= v <= 1.0 for v in ssim_history)
    assert len(client.get_metric_history(logged.info.run_id, "val_psnr")) == 20
    assert -1.0 <= summary["before_ssim_mean"] <= 1.0 and summary["psnr_mean"] > 0
    assert logged.data.metrics["ssim_mean"] == pytest.approx(summary["ssim_mean"])
    grids = {a.path for a in client.list_artifacts(logged.info.run_id, "control")}
    assert "control/final.png" in grids and any(p.startswith("control/step_") for p in grids)
    from PIL import Image
    with Image.open("models/decoder/control/final.png") as grid:  # readable: 3 pairs a row, faces >= 128 px
        assert grid.width >= 3 * 2 * 128 and grid.height >= 128
    assert "control_grid" in logged_image_keys(client, logged.info.run_id)  # an MLflow image the UI compares
    kept = {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoints")}
    assert {"checkpoints/last.ckpt", "checkpoints/step-1.ckpt", "checkpoints/step-10.ckpt"} <= kept
    assert read_checkpoint("models/decoder/checkpoints/step-10.ckpt")["global_step"] == 10

    report = validate_decoder(params, "test")
    assert f"COSINE MEAN:   {summary['cosine_mean']:.4f}" in report
    assert f"ABOVE THRESHOLD {summary['threshold']:.4f} (FMR 0.01)" in report
    # The exported decoder (no Lightning) decodes the same faces.
    assert validate_decoder(params, "test", "models/decoder/decoder.safetensors") == report
    with pytest.raises(ValueError, match=r"encoder\.safetensors: not a decoder"):
        validate_decoder(params, "test", params.templates.model)


def test_bad_templates_fail_before_training_and_keep_earlier_output(decoder_project: Path):
    params = load_params()
    build_templates(params)
    earlier = Path("models/decoder/keep.txt")
    earlier.parent.mkdir(parents=True)
    earlier.write_text("an earlier run's file")
    with h5py.File("data/templates/train.h5", "r+") as f:
        f["vectors"][3, 0] = np.nan
    with pytest.raises(ValueError, match=r"train\.h5.*NaN"):
        run_decoder(params)
    assert earlier.read_text() == "an earlier run's file"


def test_perceptor_of_another_input_size_is_resized_or_refused(decoder_project: Path):
    params = load_params()
    build_templates(params)
    torch.manual_seed(3)
    small = export_descriptor_model(FaceEncoder(FaceEncoderSpec(backbone="vit_tiny_patch16_224", img_size=16,
                                                                patch_size=8, depth=1)).eval(),
                                    decoder_project / "models" / "p16.safetensors")
    assert json.loads(small.with_suffix(".json").read_text())["img_size"] == 16
    cfg = dataclasses.replace(params.decoder, perceptor=str(small), resize_to_perceptor=False)
    with pytest.raises(ValueError, match=r"p16\.safetensors takes 16 px images, the decoder makes 32 px"):
        run_decoder(params, DecoderRequest(cfg=cfg))


def test_templates_made_by_another_model_are_refused(decoder_project: Path):
    params = load_params()
    build_templates(params)
    _encoder(Path(params.templates.model), seed=9)  # the template model was retrained since
    with pytest.raises(ValueError, match=r"encoder\.safetensors: changed since .*manifest\.json was written"):
        run_decoder(params)


@pytest.mark.slow
def test_mlflow_run_decoder_stage(tmp_path: Path, tiny_demo: Path, tiny_faces: Path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT / "MLproject", project)
    shutil.copytree(tiny_faces, project / "data" / "raw" / "faces")
    params = _decoder_params(project)
    params["templates"]["model"] = str(Path(params["templates"]["model"]).relative_to(project))
    params["decoder"]["perceptor"] = str(Path(params["decoder"]["perceptor"]).relative_to(project))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run(["embedlab", "templates"], project)
    run(["mlflow", "run", str(project), "-e", "decoder_stage", "--env-manager", "local", "--experiment-name",
         "decoder", "-P", "perceptual_weight=11", "-P", "laplace_weight=0", "-P", "use_discriminator=true",
         "-P", "epochs=2", "-P", "batch_size=8"], tmp_path, MLFLOW_TRACKING_URI=uri)
    client = MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("decoder").experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["decoder.laplace_weight"] == "0.0"
    assert logged.data.params["decoder.use_discriminator"] == "True"
    for name in ("cosine_min", "cosine_mean", "cosine_median", "cosine_max", "above_threshold"):
        assert -1.0 <= logged.data.metrics[name] <= 1.0
    assert {"train_discriminator_loss", "train_adversarial"} <= set(logged.data.metrics)  # D trained too
    assert "control/final.png" in {a.path for a in client.list_artifacts(logged.info.run_id, "control")}
    assert "checkpoints/last.ckpt" in {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoints")}


@pytest.mark.slow
def test_decoder_sweep_maximises_the_cosine_with_nested_trials(decoder_project: Path):
    import optuna

    from embedlab.cli import main

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["sweep"].update(storage=f"sqlite:///{decoder_project / 'optuna.db'}", pruner="none")
    params["sweep"]["decoder_stage"] = {"epochs": 2, "space": {"perceptual_weight": {"low": 1.0, "high": 20.0,
                                                                                     "log": True}}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    build_templates(load_params())
    assert main(["sweep", "decoder_stage", "--n-trials", "2", "--study", "dec"]) == 0
    study = optuna.load_study(study_name="dec", storage=f"sqlite:///{decoder_project / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient()
    parent = client.get_run(study.user_attrs["mlflow.parent_run_id"])
    assert parent.data.metrics["best_cosine_mean"] == pytest.approx(study.best_value)
    nested = client.search_runs([parent.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(float(r.data.params["perceptual_weight"]) for r in nested) == sorted(
        t.params["perceptual_weight"] for t in study.trials)
    assert yaml.safe_load(Path("reports/sweeps/dec/best_params.yaml").read_text()) == {"decoder": study.best_params}
    assert not Path("models/decoder").exists()  # trials write under models/sweeps/dec
