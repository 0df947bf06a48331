"""Drip, triplet and decoder on two CPU DDP ranks (gloo): one MLflow run, a checkpoint that loads in one process.

(GeM's two-rank runs, with its classifier split over the ranks, are in test_gem_stage.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from conftest import run
from embedlab.models.checkpoints import load_descriptor_model, read_checkpoint
from embedlab.models.sharded_state import OPTIMIZER_KEY
from test_decoder_stage import _decoder_params


def _one_finished_run(project: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])
    assert len(runs) == 1, "only rank 0 opens an MLflow run"
    assert runs[0].info.status == "FINISHED"
    return client, runs[0]


def _drip(project: Path) -> tuple[list[str], str]:
    return ["embedlab", "drip", "--n-facebook-samples", "32", "--batch-size", "4", "--epochs", "2", "--name", "ddp"], \
        "models/drip/ddp"


def _triplet(project: Path) -> tuple[list[str], str]:
    run(["embedlab", "face-data"], project)
    return ["embedlab", "triplet", "--phase", "pretrain"], "models/triplet/pretrain"


def _decoder(project: Path) -> tuple[list[str], str]:
    (project / "params.yaml").write_text(yaml.safe_dump(_decoder_params(project)))
    run(["embedlab", "templates"], project)
    return ["embedlab", "decoder"], "models/decoder"


@pytest.mark.slow
@pytest.mark.parametrize("stage", [_drip, _triplet, _decoder], ids=["drip", "triplet", "decoder"])
def test_a_stage_trains_on_two_cpu_ranks_into_one_run_with_a_checkpoint_one_process_loads(tiny_project: Path,
                                                                                          tiny_faces: Path, stage):
    shutil.copytree(tiny_faces, tiny_project / "data" / "raw" / "faces")
    cmd, out = stage(tiny_project)
    done = run([*cmd, "--devices", "2"], tiny_project, MLFLOW_TRACKING_URI=f"sqlite:///{tiny_project / 'mlflow.db'}")
    assert "Starting with 2 processes" in done.stdout + done.stderr  # Lightning's DDP, not one device

    client, finished = _one_finished_run(tiny_project)
    epochs = read_checkpoint(tiny_project / out / "checkpoints" / "last.ckpt")["epoch"] + 1
    assert finished.data.metrics["epochs"] == epochs >= 1
    # Every epoch's training loss once (rank 0 logs the mean over the ranks), no second copy from rank 1.
    assert len(client.get_metric_history(finished.info.run_id, "train_loss_epoch")) == epochs
    if stage is _drip:  # the ArcFace kernel was split over the ranks; the checkpoint holds it whole
        checkpoint = read_checkpoint(tiny_project / out / "checkpoints" / "last.ckpt")
        kernel = checkpoint["state_dict"]["head.weight"]
        assert kernel.shape[1] == 32  # --n-facebook-samples 32: one class each
        (moments,) = checkpoint[OPTIMIZER_KEY]
        assert moments["exp_avg"].shape == kernel.shape
        # The W matrix was computed by both ranks (each its half of the views), whole and logged once.
        w = load_file(str(tiny_project / out / "w_matrix.safetensors"))["w"]
        assert w.shape == kernel.shape and bool((w.norm(dim=0) > 0.99).all())
        assert [a.path for a in client.list_artifacts(finished.info.run_id, "w_matrix")] == \
            ["w_matrix/w_matrix.safetensors"]
    exported = next(p for p in (tiny_project / out).glob("*.safetensors"))
    assert load_descriptor_model(exported) is not None
    assert json.loads(exported.with_suffix(".json").read_text())


def test_each_process_knows_its_global_rank_from_whichever_launcher_started_it(monkeypatch):
    from embedlab.config import RuntimeConfig
    from embedlab.devices import launched_rank, training_shard

    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    runtime = RuntimeConfig(devices=4, num_nodes=2)
    assert training_shard(runtime) == (0, 8)  # the process the user started: rank 0 of 8
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's launcher on the second node: not rank 1, rank 5
    assert training_shard(runtime) == (5, 8) and launched_rank(4) == 5
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_rank(4) == 4  # the second node's first process logs nothing either
    monkeypatch.setenv("RANK", "6")  # torchrun (and SLURM_PROCID under srun) give the global rank itself
    assert launched_rank(4) == 6


def test_more_gpus_than_the_machine_has_is_refused_naming_the_setting(monkeypatch):
    import torch

    import embedlab.devices as devices
    from embedlab.config import RuntimeConfig

    monkeypatch.setattr(devices, "torch_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="runtime.device is cuda but this machine has no GPU"):
        devices.check_devices(RuntimeConfig(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    devices.check_devices(RuntimeConfig(devices=2))
    with pytest.raises(ValueError, match=r"runtime.devices is 4 but this machine has 2 GPU\(s\)"):
        devices.check_devices(RuntimeConfig(devices=4))


@pytest.mark.slow
def test_a_killed_two_rank_drip_step_resumes_on_one_rank_with_its_split_kernel_whole(tiny_project: Path):
    """The ArcFace kernel split over 2 ranks is saved whole (weights and Adam's moments): the step resumes on
    1 rank into the same MLflow run and finishes its epochs."""
    from conftest import kill_after_first_checkpoint

    uri = f"sqlite:///{tiny_project / 'mlflow.db'}"
    cmd = ["embedlab", "drip", "--n-facebook-samples", "32", "--batch-size", "4", "--epochs", "6", "--name", "k"]
    last = tiny_project / "models/drip/k/checkpoints/last.ckpt"
    kill_after_first_checkpoint([*cmd, "--devices", "2"], tiny_project, last, MLFLOW_TRACKING_URI=uri)
    assert read_checkpoint(last)["epoch"] + 1 < 6
    run_id = json.loads((tiny_project / "models/drip/k/run.json").read_text())["mlflow_run_id"]

    run([*cmd, "--devices", "1"], tiny_project, MLFLOW_TRACKING_URI=uri)

    checkpoint = read_checkpoint(last)
    assert checkpoint["epoch"] + 1 == 6 and checkpoint["state_dict"]["head.weight"].shape[1] == 32
    client, finished = _one_finished_run(tiny_project)
    assert finished.info.run_id == run_id


@pytest.mark.slow
def test_two_drip_ranks_take_the_first_step_of_one_rank_at_the_same_global_batch(tiny_project: Path):
    """2 ranks × batch 4 see the 8 views 1 rank × batch 8 sees (the sampler interleaves one shuffled order), and
    the split head's loss is the CE over the gathered global batch. A backbone without BatchNorm (ConvNeXt's
    LayerNorm): on the CPU, with no SyncBatchNorm kernel for gloo, each rank would normalise by its own 4 images
    (2 % apart here with MobileNetV2); on GPUs SyncBatchNorm spans the ranks."""
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["drip"].update(backbone="test_convnext", pretrained=None, limit_train_batches=1, evaluate=False,
                          w_init="random")
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tiny_project / 'mlflow.db'}"
    first_loss = {}
    for devices, batch in ((1, 8), (2, 4)):
        run(["embedlab", "drip", "--n-facebook-samples", "32", "--batch-size", str(batch), "--epochs", "1",
             "--name", f"r{devices}", "--devices", str(devices)], tiny_project, MLFLOW_TRACKING_URI=uri)
        client = MlflowClient(tracking_uri=uri)
        (found,) = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id],
                                      f"tags.`embedlab.drip_step` = 'r{devices}'")
        (point,) = client.get_metric_history(found.info.run_id, "train_loss_epoch")  # one step: its loss
        first_loss[devices] = point.value
    assert first_loss[2] == pytest.approx(first_loss[1], rel=1e-5), first_loss
