"""The speed switches on the CPU. Embedding: bf16 autocast, torch.compile, channels-last and the
batched (GPU) JPEG decode path give the descriptors of the plain fp32 / Pillow path, within tolerance.
Training: a torch.compiled drip step learns what the eager one learns and saves the same weights;
the loader settings reach the stage's DataLoader.

The batched decoder runs on any torch device, so its CPU run checks the code the GPU runs;
without CUDA, ``decode: gpu`` falls back to Pillow with identical output.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from embedlab.config import (
    ConfigError,
    DecoderConfig,
    DripConfig,
    DripStep,
    GemConfig,
    RuntimeConfig,
    TripletConfig,
    apply_overrides,
    load_params,
)
from embedlab.data.decode import decode_resize, gpu_decodable, read_encoded
from embedlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8, resize_square, to_tensor, to_uint8
from embedlab.descriptors import read_descriptors
from embedlab.devices import (
    autocast_dtype,
    available_cpus,
    lightning_precision,
    loader_options,
    loader_workers,
    pin_memory_for,
)
from embedlab.images import BadImageError, list_images, load_rgb
from embedlab.models.backbone import DescriptorModel, DescriptorSpec
from embedlab.models.checkpoints import export_descriptor_model, read_checkpoint
from embedlab.models.compiled import compiled_trunk, is_compiled
from embedlab.evaluation import embed as embed_stage
from embedlab.stages.drip import DripRequest, run_drip
from embedlab.evaluation.embed import embed_folder, embed_paths

from conftest import PROJECT, run

SPEC = DescriptorSpec(backbone="test_resnet", embedding_dim=32, gem_p=3.0, img_size=48)
CPU = torch.device("cpu")
SPEED_SWITCHES = {"precision", "channels_last", "compile", "num_workers", "pin_memory", "prefetch_factor"}


def cpu(**settings) -> RuntimeConfig:
    """A runtime section on the CPU: in-process loading, the model's memory format left alone, unless told."""
    return dataclasses.replace(RuntimeConfig(device="cpu", num_workers=0, channels_last=False), **settings)


@pytest.fixture(scope="module")
def model() -> DescriptorModel:
    torch.manual_seed(0)
    return DescriptorModel(SPEC).eval()


@pytest.fixture(scope="module")
def references(tiny_demo: Path) -> list[Path]:
    return list_images(tiny_demo / "disc" / "reference")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def mixed_folder(tmp_path: Path, references: list[Path]) -> Path:
    """JPEGs the batched decoder takes, plus files it must leave to Pillow."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in references[:6]:
        shutil.copy(p, folder / p.name)
    photo = load_rgb(references[6])
    photo.save(folder / "R_png.png")
    photo.convert("L").save(folder / "R_grey.jpg", quality=90)
    photo.convert("CMYK").save(folder / "R_cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    photo.save(folder / "R_rotated.jpg", quality=90, exif=exif)
    return folder


def test_device_normalisation_is_bit_identical_to_to_tensor(references: list[Path]):
    img = resize_square(load_rgb(references[0]), 48)
    # The workers' float arithmetic before batches went to the device as uint8: (x - 255·mean) / (255·std).
    mean = np.asarray(IMAGENET_MEAN, np.float32) * 255.0
    std = np.asarray(IMAGENET_STD, np.float32) * 255.0
    cpu = torch.from_numpy(((np.asarray(img, np.float32) - mean) / std).transpose(2, 0, 1).copy())
    assert torch.equal(normalize_uint8(to_uint8(img)[None])[0], cpu)
    assert torch.equal(to_tensor(img), cpu)


def test_bf16_autocast_gives_descriptors_close_to_fp32(model: DescriptorModel, references: list[Path]):
    fp32 = embed_paths(model, references, runtime=cpu(inference_batch_size=16, precision="fp32"), progress=False)
    bf16 = embed_paths(model, references, runtime=cpu(inference_batch_size=16, precision="bf16"), progress=False)
    assert fp32.names == bf16.names and bf16.vectors.shape == fp32.vectors.shape == (len(references), 32)
    assert bf16.settings["precision"] == "bf16"
    assert not np.array_equal(bf16.vectors, fp32.vectors), "bf16 autocast was not applied"
    assert _cosines(bf16.vectors, fp32.vectors).min() > 0.995


def test_channels_last_gives_the_same_descriptors_and_leaves_the_model_as_it_was(model, references):
    plain = embed_paths(model, references[:8], runtime=cpu(precision="fp32"), progress=False)
    nhwc = embed_paths(model, references[:8], runtime=cpu(precision="fp32", channels_last=True), progress=False)
    np.testing.assert_allclose(nhwc.vectors, plain.vectors, atol=1e-5)
    assert model.channels_last is False


@pytest.mark.slow
def test_compile_gives_descriptors_close_to_eager(model: DescriptorModel, references: list[Path]):
    # 24 images in batches of 16: the short last batch is padded, not compiled a second time.
    eager = embed_paths(model, references, runtime=cpu(inference_batch_size=16, precision="fp32"), progress=False)
    compiled = embed_paths(model, references, runtime=cpu(inference_batch_size=16, precision="fp32", compile=True),
                           progress=False)
    assert compiled.names == eager.names and compiled.vectors.shape == eager.vectors.shape
    np.testing.assert_allclose(compiled.vectors, eager.vectors, atol=1e-4)


@pytest.mark.parametrize("size", [48, 96])  # reduction (antialiased) and enlargement
def test_batched_decode_on_cpu_matches_pillow(references: list[Path], size: int):
    encoded = [read_encoded(p) for p in references[:8]]
    assert all(e is not None for e in encoded)
    batched = decode_resize(encoded, size, CPU)
    pillow = [to_uint8(resize_square(load_rgb(p), size)) for p in references[:8]]
    for a, b in zip(batched, pillow):
        assert a.shape == b.shape == (3, size, size) and a.dtype == torch.uint8
        diff = (a.int() - b.int()).abs()
        assert diff.max() <= 2 and diff.float().mean() < 0.5  # rounding once instead of per pass


def test_files_the_batched_decoder_cannot_reproduce_go_to_pillow(mixed_folder: Path, references: list[Path]):
    assert gpu_decodable((mixed_folder / references[0].name).read_bytes())
    assert gpu_decodable((mixed_folder / "R_grey.jpg").read_bytes())
    for name in ("R_png.png", "R_cmyk.jpg", "R_rotated.jpg"):
        assert read_encoded(mixed_folder / name) is None, name
    truncated = (mixed_folder / "R_grey.jpg").read_bytes()[:300]
    assert not gpu_decodable(truncated)


def test_decode_gpu_without_cuda_falls_back_to_pillow(model, references, caplog):
    with caplog.at_level(logging.INFO, logger="embedlab.data.decode"):
        gpu = embed_paths(model, references, runtime=cpu(precision="fp32", decode="gpu"), progress=False)
    assert "decoding with Pillow" in caplog.text and gpu.settings["decode"] == "cpu"
    pillow = embed_paths(model, references, runtime=cpu(precision="fp32", decode="cpu"), progress=False)
    assert gpu.names == pillow.names and np.array_equal(gpu.vectors, pillow.vectors)


def test_batched_decode_path_end_to_end_on_cpu(model, mixed_folder: Path, monkeypatch):
    """The GPU path's code with the decoder on the CPU: same files, same order, close descriptors."""
    (mixed_folder / "R_truncated.jpg").write_bytes((mixed_folder / "R_grey.jpg").read_bytes()[:300])
    paths = list_images(mixed_folder)
    pillow = embed_paths(model, paths, runtime=cpu(inference_batch_size=4, precision="fp32", decode="cpu"),
                         on_bad_image="skip", progress=False)
    monkeypatch.setattr(embed_stage, "resolve_decode", lambda decode, dev: CPU)
    batched = embed_paths(model, paths, runtime=cpu(inference_batch_size=4, precision="fp32", num_workers=1),
                          on_bad_image="skip", progress=False)
    assert batched.settings["decode"] == "gpu"
    assert batched.names == pillow.names and batched.kept == pillow.kept
    assert [p.name for p in batched.skipped] == ["R_truncated.jpg"]
    assert _cosines(batched.vectors, pillow.vectors).min() > 0.999
    with pytest.raises(BadImageError, match="R_truncated.jpg"):
        embed_paths(model, paths, runtime=cpu(inference_batch_size=4, precision="fp32"), progress=False)


def test_embed_cli_bf16_channels_last_matches_fp32(tmp_path: Path, references: list[Path]):
    torch.manual_seed(0)
    checkpoint = export_descriptor_model(DescriptorModel(SPEC), tmp_path / "model.safetensors")
    folder = references[0].parent
    fp32 = embed_folder(checkpoint, folder, tmp_path / "fp32.h5",
                        runtime=cpu(inference_batch_size=16, precision="fp32"), progress=False)
    assert fp32["precision"] == "fp32"
    result = run(["embedlab", "embed", "--checkpoint", str(checkpoint), "--images", str(folder), "--out",
                  str(tmp_path / "bf16.h5"), "--params", str(PROJECT / "params.yaml"), "--device", "cpu",
                  "--precision", "bf16", "--channels-last", "true", "--batch-size", "16", "--num-workers", "1"],
                 tmp_path)
    assert '"precision": "bf16"' in result.stdout
    names, vectors = read_descriptors(tmp_path / "bf16.h5")
    ref_names, ref_vectors = read_descriptors(tmp_path / "fp32.h5")
    assert list(names) == list(ref_names) and vectors.shape == ref_vectors.shape == (len(references), 32)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert _cosines(vectors, ref_vectors).min() > 0.995


def test_auto_settings_follow_the_hardware():
    assert autocast_dtype("auto", CPU) is None and autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("fp16", CPU) is torch.float16 and autocast_dtype("fp32", CPU) is None
    assert loader_workers("auto", CPU) == min(8, available_cpus() // 2)
    assert loader_workers("auto", torch.device("cuda")) == max(1, min(32, available_cpus() - 1))
    assert loader_workers("auto", torch.device("cuda"), processes=available_cpus()) == 1
    assert loader_workers(3, CPU) == 3 and pin_memory_for("auto", CPU) is False
    assert pin_memory_for("auto", torch.device("cuda")) is True
    with pytest.raises(ValueError):
        autocast_dtype("int8", CPU)
    with pytest.raises(ConfigError, match="runtime.precision"):
        RuntimeConfig(precision="bf16-mixed")
    with pytest.raises(ConfigError, match="runtime.num_workers"):
        RuntimeConfig(num_workers="many")


def test_loader_options_resolve_the_auto_settings():
    workers = min(8, available_cpus() // 2)
    assert loader_options("auto", "auto", 4, CPU) == {
        "num_workers": workers, "pin_memory": False, "prefetch_factor": 4 if workers else None,
        "persistent_workers": workers > 0}
    # In-process loading takes no prefetch factor (torch refuses one); a loader read once keeps no workers.
    assert loader_options(0, True, 4, CPU) == {"num_workers": 0, "pin_memory": True, "prefetch_factor": None,
                                               "persistent_workers": False}
    assert loader_options(2, "auto", None, torch.device("cuda"), keep_workers=False)["persistent_workers"] is False
    assert loader_options(2, "auto", None, torch.device("cuda"))["pin_memory"] is True


@pytest.mark.parametrize("setting, message", [
    ({"num_workers": "many"}, "runtime.num_workers must be a number >= 0 or 'auto'"),
    ({"num_workers": -1}, "runtime.num_workers: must not be negative"),
    ({"pin_memory": "yes"}, "runtime.pin_memory must be true, false or 'auto'"),
    ({"prefetch_factor": 0}, "runtime.prefetch_factor: must be at least 1"),
    ({"precision": "16-mixed"}, "runtime.precision"),  # Lightning's spelling is not a setting
    ({"device": "banana"}, "runtime.device: 'banana' is not a device"),
])
def test_training_speed_settings_are_checked_naming_the_setting(setting, message):
    with pytest.raises(ConfigError, match=message):  # as params.yaml and the command-line flags set them
        apply_overrides(RuntimeConfig(), setting)


def test_precision_settings_map_to_lightning():
    assert lightning_precision("fp32") == "32-true" and lightning_precision("bf16") == "bf16-mixed"
    assert lightning_precision("fp16") == "16-mixed"  # fp16 trains with a loss scaler
    if not torch.cuda.is_available():
        assert lightning_precision("auto") == "32-true"
    with pytest.raises(ValueError):
        lightning_precision("16-mixed")


def test_the_runtime_section_holds_every_speed_switch_and_no_stage_section_does(tmp_path: Path):
    """One runtime section drives every training stage; params.yaml sets each switch there, and a
    stage section that still names one (the old layout) is an error, not a silently ignored setting."""
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    assert SPEED_SWITCHES <= set(raw["runtime"])
    params = load_params(PROJECT / "params.yaml")
    assert SPEED_SWITCHES <= set(vars(params.runtime))
    assert params.runtime.compile is False and params.runtime.pin_memory == "auto"
    runtime = {f.name for f in dataclasses.fields(RuntimeConfig)}
    for cls in (DripConfig, GemConfig, TripletConfig, DecoderConfig):
        assert not runtime & {f.name for f in dataclasses.fields(cls)}, cls.__name__
    for section in ("drip", "gem", "triplet", "decoder"):
        assert not SPEED_SWITCHES & set(raw[section]), section
        old = yaml.safe_load((PROJECT / "params.yaml").read_text())
        old[section]["num_workers"] = 2
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
        with pytest.raises(ConfigError, match=rf"{section}.*num_workers"):
            load_params(tmp_path / "params.yaml")
    # Never a DVC param of a stage: changing a speed switch reruns nothing.
    for name, stage in yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"].items():
        stage = stage.get("do", stage)
        assert not any(str(p) == "runtime" or str(p).startswith("runtime.") for p in stage.get("params", [])), name


class LoaderSettings(pl.Callback):
    """What the Trainer actually iterates: the train DataLoader's settings."""

    def on_train_start(self, trainer, module) -> None:
        loader = trainer.train_dataloader
        self.seen = {"num_workers": loader.num_workers, "pin_memory": loader.pin_memory,
                     "prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}


@pytest.mark.slow
def test_compiled_drip_step_trains_like_the_eager_one_and_saves_plain_weights(tiny_project: Path):
    from torch._dynamo.utils import counters

    params = load_params("params.yaml")
    params.drip = dataclasses.replace(params.drip, evaluate=False)
    params.runtime = dataclasses.replace(params.runtime, num_workers="auto", prefetch_factor=3,
                                         pin_memory=False)
    settings = LoaderSettings()
    eager = run_drip(params, DripRequest(name="eager", step=DripStep(12, epochs=1)), callbacks=[settings])
    workers = loader_workers("auto", CPU)
    assert settings.seen == {"num_workers": workers, "pin_memory": False,
                             "prefetch_factor": 3 if workers else None, "persistent_workers": workers > 0}

    torch._dynamo.reset()
    counters.clear()
    params.runtime = dataclasses.replace(params.runtime, compile=True)
    compiled = run_drip(params, DripRequest(name="compiled", step=DripStep(12, epochs=1)))
    assert counters["stats"]["unique_graphs"] >= 1, "the training steps did not run through torch.compile"
    # Speed settings are tags as this machine resolved them (params stay those that shape the model).
    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_project / 'mlflow.db'}")
    runs = {r.data.tags["embedlab.drip_step"]: r for r in client.search_runs(
        [client.get_experiment_by_name("embedlab").experiment_id])}
    assert runs["compiled"].data.tags["embedlab.compile"] == "true"
    assert runs["eager"].data.tags["embedlab.compile"] == "false"
    assert runs["compiled"].data.tags["embedlab.num_workers"] == str(workers)
    assert runs["compiled"].data.tags["embedlab.precision"] == "32-true"
    assert not any(k.split(".")[-1] in SPEED_SWITCHES or k.startswith("runtime.")
                   for k in runs["compiled"].data.params)
    # Same data, same start (W matrix from the eager model): only kernel rounding differs.
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-3)
    a = read_checkpoint("models/drip/eager/checkpoints/last.ckpt")["state_dict"]
    b = read_checkpoint("models/drip/compiled/checkpoints/last.ckpt")["state_dict"]
    assert list(b) == list(a)  # no "_orig_mod." keys: checkpoints and exports load as usual
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)


def test_compiled_trunk_is_undone_on_the_way_out_even_after_an_error(model: DescriptorModel):
    with pytest.raises(RuntimeError, match="stop"):
        with compiled_trunk(model, True):
            assert is_compiled(model) and model.body._compiled_call_impl is not None
            raise RuntimeError("stop")
    assert not is_compiled(model)
    with compiled_trunk(model, False):
        assert not is_compiled(model)


def test_params_runtime_section_drives_embed_paths(model, references):
    """params.yaml's ``runtime:`` keys as the stages pass them (a RuntimeConfig)."""
    cfg = RuntimeConfig(device="cpu", inference_batch_size=8, num_workers="auto", precision="bf16", decode="gpu",
                        prefetch_factor=2)
    result = embed_paths(model, references[:8], runtime=cfg, progress=False)
    assert result.vectors.shape == (8, 32)
    assert result.settings == {"device": "cpu", "img_size": 48, "precision": "bf16", "decode": "cpu",
                               "num_workers": loader_workers("auto", CPU), "compile": False}


def test_a_failed_embedding_gives_the_model_back_in_its_own_mode(model: DescriptorModel, mixed_folder: Path):
    """A model embedded mid-training keeps training mode (BatchNorm statistics), errors included."""
    (mixed_folder / "R_truncated.jpg").write_bytes((mixed_folder / "R_grey.jpg").read_bytes()[:300])
    model.train()
    try:
        with pytest.raises(BadImageError, match="R_truncated.jpg"):
            embed_paths(model, list_images(mixed_folder), runtime=cpu(precision="fp32", channels_last=True),
                        progress=False)
        assert model.training and model.channels_last is False
    finally:
        model.eval()
