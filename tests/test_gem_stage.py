"""The GeM stage end to end: a generated set → training → DISC μAP, logged to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import run
from embedlab.cli import main
from embedlab.images import list_images
from embedlab.config import load_params
from embedlab.models.checkpoints import load_descriptor_model, read_checkpoint
from embedlab.stages.gem import plan_gem, run_gem


def _generate(recipe: str = "big") -> Path:
    assert main(["augment", "--recipe", recipe]) == 0
    return Path("data/augmented") / recipe


def _runs(tmp_path: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("embedlab")
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def test_gem_trains_on_a_generated_set_logs_and_exports_without_classifier(tiny_project: Path):
    _generate()
    params = load_params()
    summary = run_gem(params, plan_gem(params, "big"))

    n_classes = len({p.name.rsplit("_", 1)[0] for p in list_images("data/augmented/big")})  # <class>_<i>.jpg
    assert summary["n_classes"] == n_classes and summary["epochs"] == params.gem.epochs
    assert 0.0 <= summary["uAP"] <= 1.0 and "before_uAP" in summary
    assert 0.0 <= summary["neck_uAP"] <= 1.0 and "before_neck_uAP" not in summary  # the 64-d feature it distils
    assert json.loads(Path("reports/gem/imagenet/big/metrics.json").read_text())["uAP"] == summary["uAP"]

    client, runs = _runs(tiny_project)
    (logged,) = runs
    assert logged.data.tags["embedlab.stage"] == "gem" and logged.data.tags["embedlab.gem_recipe"] == "big"
    assert logged.data.tags["embedlab.gem_start"] == "imagenet" and logged.info.run_name == "gem/imagenet/big"
    assert logged.data.metrics["neck_uAP"] == pytest.approx(summary["neck_uAP"])
    assert logged.data.params["gem.n_classes"] == str(n_classes)
    assert logged.data.params["gem.batch_size"] == str(params.gem.p * params.gem.k)
    assert logged.data.metrics["uAP"] == pytest.approx(summary["uAP"])
    assert len(client.get_metric_history(logged.info.run_id, "train_loss_epoch")) == params.gem.epochs
    assert "checkpoints/last.ckpt" in {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoints")}

    # The checkpoint holds the whole classifier (any device count resumes from it);
    # the exported descriptor model holds none of it and embeds like the trained model.
    ckpt = read_checkpoint("models/gem/imagenet/big/checkpoints/last.ckpt")
    assert ckpt["state_dict"]["classifier.weight"].shape == (n_classes, params.gem.proj_dim)
    exported = load_descriptor_model("models/gem/imagenet/big/descriptor_model.safetensors")
    from safetensors.torch import load_file
    assert not any("classifier" in k for k in load_file("models/gem/imagenet/big/descriptor_model.safetensors"))
    from_ckpt = load_descriptor_model("models/gem/imagenet/big/checkpoints/last.ckpt")
    x = torch.randn(2, 3, params.gem.img_size, params.gem.img_size)
    with torch.no_grad():
        a, b = exported(x), from_ckpt(x)
    assert a.shape == (2, params.gem.descriptor_dim)  # the distilled head's descriptor
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    np.testing.assert_allclose(a.norm(dim=1).numpy(), 1.0, atol=1e-5)

    # Same settings again: the finished run is only re-evaluated, into the same MLflow run.
    again = run_gem(load_params(), plan_gem(params, "big"))
    assert again["uAP"] == pytest.approx(summary["uAP"])
    _, runs = _runs(tiny_project)
    assert len(runs) == 1


def test_gem_refuses_a_folder_that_is_not_a_generated_set(tiny_project: Path, capsys):
    Path("data/augmented/nothing/a").mkdir(parents=True)
    assert main(["gem", "--recipe", "nothing"]) == 2
    err = capsys.readouterr().err
    assert "data/augmented/nothing" in err and "manifest.json" in err


@pytest.mark.slow
def test_gem_ddp_on_two_cpu_ranks_with_an_odd_class_count(tiny_project: Path):
    """Two DDP ranks, each holding one classifier shard of an odd class count (5 → 3 + 2)."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["augment"]["classes"] = 5
    Path("params.yaml").write_text(yaml.safe_dump(params))
    _generate()
    run(["embedlab", "gem", "--recipe", "big", "--devices", "2", "--epochs", "1", "--iters", "2"], tiny_project,
        MLFLOW_TRACKING_URI=f"sqlite:///{tiny_project / 'mlflow.db'}")
    ckpt = read_checkpoint("models/gem/imagenet/big/checkpoints/last.ckpt")
    assert ckpt["state_dict"]["classifier.weight"].shape == (5, params["gem"]["proj_dim"])
    assert not torch.isnan(ckpt["state_dict"]["classifier.weight"]).any()
    _, runs = _runs(tiny_project)
    assert len(runs) == 1, "only rank 0 opens an MLflow run"
    assert 0.0 <= runs[0].data.metrics["uAP"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("resume_devices", [2, 1])
def test_a_killed_two_rank_run_resumes_on_two_ranks_or_one_into_the_same_run(tiny_project: Path, resume_devices):
    """A 2-rank run killed mid-way resumes on 2 ranks and on 1 (the optimizer state of the classifier shards is
    saved whole: before, resuming crashed on the shard sizes), into the same MLflow run, to the same epoch count."""
    from conftest import kill_after_first_checkpoint

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["augment"]["classes"] = 5  # 3 + 2 classes on 2 ranks
    Path("params.yaml").write_text(yaml.safe_dump(params))
    _generate()
    uri = f"sqlite:///{tiny_project / 'mlflow.db'}"
    cmd = ["embedlab", "gem", "--recipe", "big", "--epochs", "6", "--iters", "2"]
    last = tiny_project / "models/gem/imagenet/big/checkpoints/last.ckpt"
    kill_after_first_checkpoint([*cmd, "--devices", "2"], tiny_project, last, MLFLOW_TRACKING_URI=uri)
    done_before = read_checkpoint(last)["epoch"] + 1
    assert done_before < 6
    _, runs = _runs(tiny_project)
    run_id = runs[0].info.run_id

    run([*cmd, "--devices", str(resume_devices)], tiny_project, MLFLOW_TRACKING_URI=uri)

    assert read_checkpoint(last)["epoch"] + 1 == 6
    _, runs = _runs(tiny_project)
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert 0.0 <= runs[0].data.metrics["uAP"] <= 1.0
