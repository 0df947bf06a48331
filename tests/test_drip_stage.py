"""The drip stage end to end on the tiny configuration: outputs, MLflow run, chaining, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from embedlab.config import load_params
from embedlab.stages.drip import plan_scheduled_step, run_drip
from embedlab.stages.init_weights import write_initial_weights

from conftest import cli_env, logged_image_keys, run

pytestmark = pytest.mark.slow


def _client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def test_two_scheduled_steps_write_outputs_log_runs_and_chain(tiny_project: Path):
    params = load_params("params.yaml")
    write_initial_weights(params)
    first = run_drip(params, plan_scheduled_step(params, "s1"))
    second_request = plan_scheduled_step(params, "s2")
    assert second_request.build_w_matrix == Path("models/drip/s1/checkpoints/last.ckpt")
    second = run_drip(params, second_request)

    for summary, classes in ((first, 16), (second, 40)):
        assert summary["n_classes"] == classes and summary["epochs"] == 2
        assert 0.0 <= summary["uAP"] <= 1.0 and 0.0 <= summary["before_uAP"] <= 1.0
    out = Path("models/drip/s2")
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "w_matrix.safetensors",
                 "descriptor_model.safetensors", "eval/predictions.csv", "eval/descriptors/query.h5"):
        assert (out / name).is_file(), name
    report = json.loads(Path("reports/drip/s2/metrics.json").read_text())
    assert report["uAP"] == pytest.approx(second["uAP"])
    # s2's history: s1's epochs first, then its own, counted on along the chain.
    history = Path("reports/plots/history/drip_s2.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,chained_epoch,run" and len(history) == 5
    assert [row.split(",")[3:] for row in history[1:]] == [
        ["0", "drip_s1"], ["1", "drip_s1"], ["2", "drip_s2"], ["3", "drip_s2"]]
    assert Path("reports/plots/pr_curve/drip_s2.csv").read_text().startswith("precision,recall")
    for picture in ("pr_curve.png", "retrieval.png", "worst_queries.png"):
        assert Path("reports/drip/s2", picture).read_bytes()[:4] == b"\x89PNG", picture

    # The W matrix of s2 has one centroid per class of s2, unit columns.
    w = load_file(str(out / "w_matrix.safetensors"))["w"]
    assert w.shape == (32, 40)
    assert torch.allclose(w.norm(dim=0), torch.ones(40), atol=1e-4)

    client = _client(tiny_project)
    runs = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])
    assert {r.data.tags["embedlab.stage"] for r in runs} == {"drip_init", "drip"}
    by_step = {r.data.tags["embedlab.drip_step"]: r for r in runs if r.data.tags["embedlab.stage"] == "drip"}
    assert set(by_step) == {"s1", "s2"}
    run2 = by_step["s2"]
    assert run2.data.params["drip.n_classes"] == "40"
    assert run2.data.params["drip.build_w_matrix"].endswith("s1/checkpoints/last.ckpt")
    assert run2.data.metrics["uAP"] == pytest.approx(second["uAP"])
    assert run2.data.tags["embedlab.stage"] == "drip"
    assert len(client.get_metric_history(run2.info.run_id, "val_loss")) == 2
    # Training images per second, each epoch, in a group of its own (not among the scores, not in metrics.json).
    speed = client.get_metric_history(run2.info.run_id, "speed/train_images_per_s")
    assert len(speed) == 2 and all(p.value > 0 for p in speed)
    assert not [k for k in report if k.endswith("_per_s")]
    for accuracy in ("train_acc", "val_acc"):  # one point per epoch, a share of the batch's rows
        points = client.get_metric_history(run2.info.run_id, accuracy)
        assert len(points) == 2 and all(0.0 <= p.value <= 1.0 for p in points), accuracy
    artifacts = {a.path for a in client.list_artifacts(run2.info.run_id)}
    assert {"checkpoints", "w_matrix", "model", "eval", "reports", "images"} <= artifacts
    # The pictures as keyed MLflow images: the UI's image charts compare them across runs.
    assert {"pr_curve", "retrieval", "worst_queries"} <= logged_image_keys(client, run2.info.run_id)
    evaluated = {a.path for a in client.list_artifacts(run2.info.run_id, "eval/descriptors")}
    # The training descriptors are the post-processing's training set (evaluate.train_descriptors).
    assert evaluated == {"eval/descriptors/query.h5", "eval/descriptors/reference.h5", "eval/descriptors/train.h5"}
    post = {a.path for a in client.list_artifacts(run2.info.run_id, "eval/post")}
    assert "eval/post/metrics.json" in post and 0 <= run2.data.metrics["post_uAP"] <= 1
    assert {a.path for a in client.list_artifacts(run2.info.run_id, "checkpoints")} >= {"checkpoints/last.ckpt"}


def test_build_w_matrix_from_another_backbone_fails_before_training(tiny_project: Path):
    import pytorch_lightning as pl

    from embedlab.models.drip_module import DripModule

    other = DripModule({"backbone": "test_convnext", "embedding_dim": 32, "gem_p": 3.0, "img_size": 48}, n_classes=4)
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(other)
    trainer.save_checkpoint(tiny_project / "convnext.ckpt")
    (tiny_project / "garbage.ckpt").write_bytes(b"\x00" * 10)
    for name, message in (("convnext.ckpt", "test_convnext"), ("garbage.ckpt", "not a readable checkpoint")):
        result = subprocess.run(
            ["embedlab", "drip", "--n-facebook-samples", "8", "--build-w-matrix", name, "--epochs", "1"],
            cwd=tiny_project, env=cli_env(), capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 2
        assert name in result.stderr and message in result.stderr and "Traceback" not in result.stderr
    assert not (tiny_project / "models/drip/8cls/checkpoints").exists(), "no training started"


def _epochs_in_checkpoint(path: Path) -> int:
    """Completed epochs: last.ckpt is written at the end of the epoch whose index it holds."""
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"] + 1


def test_killed_step_resumes_into_the_same_run_and_finishes_its_epochs(tiny_project: Path):
    cmd = ["embedlab", "drip", "--n-facebook-samples", "32", "--batch-size", "2", "--epochs", "6", "--name", "k"]
    last = tiny_project / "models/drip/k/checkpoints/last.ckpt"
    proc = subprocess.Popen(cmd, cwd=tiny_project, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not last.is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert last.is_file(), "no checkpoint after the first epoch"
        time.sleep(0.2)  # into the second epoch
        assert proc.poll() is None, "the step finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    epochs_before = _epochs_in_checkpoint(last)
    assert epochs_before < 6
    run_id = json.loads((tiny_project / "models/drip/k/run.json").read_text())["mlflow_run_id"]

    run(cmd, tiny_project)

    assert _epochs_in_checkpoint(last) == 6
    client = _client(tiny_project)
    runs = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    summary = json.loads((tiny_project / "reports/drip/k/metrics.json").read_text())
    assert summary["epochs"] == 6
    # One validation point per epoch. A kill between an epoch's logging and its checkpoint runs that epoch
    # again, and MLflow keeps both points at the same step: the history counts steps.
    assert len({m.step for m in client.get_metric_history(run_id, "val_loss")}) == 6


def test_finished_or_changed_steps_start_afresh_instead_of_resuming(tiny_project: Path):
    base = ["embedlab", "drip", "--n-facebook-samples", "8", "--epochs", "1", "--name", "x"]
    state = tiny_project / "models/drip/x/run.json"
    run(base, tiny_project)
    first = json.loads(state.read_text())
    assert first["complete"] is True
    run(base + ["--qry-augs-intensity", "0.9"], tiny_project)
    second = json.loads(state.read_text())
    assert second["mlflow_run_id"] != first["mlflow_run_id"] and second["fingerprint"] != first["fingerprint"]
    # The same settings again: that run finished, so its weights stand and only the evaluation reruns.
    last = tiny_project / "models/drip/x/checkpoints/last.ckpt"
    trained = last.read_bytes()
    run(base + ["--qry-augs-intensity", "0.9"], tiny_project)
    third = json.loads(state.read_text())
    assert third == second
    assert last.read_bytes() == trained
    assert json.loads((tiny_project / "reports/drip/x/metrics.json").read_text())["epochs"] == 1


def test_stop_rule_ends_the_step_once_the_loss_is_low_enough(tiny_project: Path):
    """The original's advance rule (train loss < 2 or val loss < 1), here with
    thresholds the first epoch meets, ends a 5-epoch step after one epoch."""
    import dataclasses

    from embedlab.config import DripStep
    from embedlab.stages.drip import DripRequest

    params = load_params("params.yaml")
    params.drip = dataclasses.replace(params.drip, stop_rule=True, stop_train_loss=1e6, evaluate=False)
    summary = run_drip(params, DripRequest(name="early", step=DripStep(8, epochs=5)))
    assert summary["epochs"] == 1
    # Without an evaluation the PR-curve out DVC expects still exists, holding only its header.
    assert Path("reports/plots/pr_curve/drip_early.csv").read_text() == "precision,recall,threshold\n"


def test_unreadable_training_image_fails_naming_it_or_is_skipped_and_counted(tiny_project: Path):
    import yaml

    victim = sorted((tiny_project / "data/raw/disc/training").glob("*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    cmd = ["embedlab", "drip", "--n-facebook-samples", "8", "--epochs", "1", "--name", "bad"]
    failed = subprocess.run(cmd, cwd=tiny_project, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and victim.name in failed.stderr and "Traceback" not in failed.stderr

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["data"]["on_bad_image"] = "skip"
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    run(cmd, tiny_project)
    summary = json.loads((tiny_project / "reports/drip/bad/metrics.json").read_text())
    assert summary["skipped_training_images"] == 1
    assert summary["epochs"] == 1


def test_step_interrupted_before_its_first_checkpoint_reuses_its_run_and_w_matrix(tiny_project: Path):
    """Killed while computing W or the "before" scores: the re-run continues the same
    MLflow run and loads the saved W matrix instead of computing it again."""
    import mlflow
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from embedlab import tracking
    from embedlab.config import DripStep
    from embedlab.stages.drip import DripRequest
    from embedlab.stages.lifecycle import stage_fingerprint
    from embedlab.stages.run_state import RunState

    params = load_params("params.yaml")
    request = DripRequest(name="w", step=DripStep(8, epochs=1))
    request.setup(params)
    key = stage_fingerprint(request, params)
    request.out_dir.mkdir(parents=True)
    mlflow.set_tracking_uri(tracking.tracking_uri())
    earlier = MlflowClient().create_run(tracking.ensure_experiment("embedlab")).info.run_id
    RunState(key, earlier).save(request.out_dir / "run.json")
    saved_w = F.normalize(torch.randn(32, 8, generator=torch.Generator().manual_seed(5)), dim=0)
    save_file({"w": saved_w}, str(request.out_dir / "w_matrix.safetensors"))

    run_drip(params, request)

    state = RunState.load(request.out_dir / "run.json")
    assert state.mlflow_run_id == earlier and state.complete
    assert torch.equal(load_file(str(request.out_dir / "w_matrix.safetensors"))["w"], saved_w)
    assert MlflowClient().get_run(earlier).info.status == "FINISHED"


def test_runs_of_one_model_classes_and_views_share_one_w_matrix(tiny_project: Path, monkeypatch):
    """A sweep's trials that tune the learning rate start from the same W matrix: it is computed once."""
    import dataclasses

    import embedlab.stages.w_matrix as w_matrix
    from embedlab.config import DripStep
    from embedlab.stages.drip import DripRequest

    params = load_params("params.yaml")
    params = dataclasses.replace(params, drip=dataclasses.replace(params.drip, evaluate=False, w_init="centroids"))
    run_drip(params, DripRequest(name="a", step=DripStep(8, epochs=1)))
    computed, real = [], w_matrix.class_centroids
    monkeypatch.setattr(w_matrix, "class_centroids", lambda *args, **kw: computed.append(1) or real(*args, **kw))

    faster = dataclasses.replace(params, drip=dataclasses.replace(params.drip, lr=params.drip.lr * 3))
    run_drip(faster, DripRequest(name="b", step=DripStep(8, epochs=1)))
    assert computed == []
    w = {name: load_file(str(tiny_project / f"models/drip/{name}/w_matrix.safetensors"))["w"] for name in "ab"}
    assert torch.equal(w["a"], w["b"])

    more_views = dataclasses.replace(params, drip=dataclasses.replace(
        params.drip, w_matrix_augmentations=params.drip.w_matrix_augmentations + 1))
    run_drip(more_views, DripRequest(name="c", step=DripStep(8, epochs=1)))
    assert computed == [1]  # other views: another W matrix


@pytest.mark.slow
def test_a_step_that_never_met_the_advance_rule_stops_the_chain_when_asked(tiny_project: Path):
    """Whether a step met the advance rule (train loss < 2 or val loss < 1) is logged; with
    drip.require_advance_rule the next step refuses to start from one that did not."""
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["drip"].update(epochs=1, evaluate=False, require_advance_rule=True)
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(raw))
    write_initial_weights(load_params("params.yaml"))
    s1_run = run(["embedlab", "drip", "--step", "s1"], tiny_project)  # one epoch of a random head: loss far above 2
    said = s1_run.stdout + s1_run.stderr
    for noise in ("💡 Tip", "litlogger", "LeafSpec", "weights_only", "smaller than the logging interval"):
        assert noise not in said, f"third-party noise in the stage's output: {noise!r}"
    client = _client(tiny_project)
    (s1,) = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id],
                               "tags.`embedlab.drip_step` = 's1'")
    assert s1.data.tags["embedlab.advance_rule_met"] == "false" and s1.data.metrics["advance_rule_met"] == 0.0

    done = subprocess.run(["embedlab", "drip", "--step", "s2"], cwd=tiny_project, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2
    assert "the parent step s1 never met the advance rule (train loss below 2.0" in done.stderr
    assert not (tiny_project / "models/drip/s2").exists()


def test_overlays_come_from_images_outside_the_steps_classes(tiny_project: Path):
    """A class's image never becomes another class's background: the overlay pool is the source images the
    step does not train on, or drip.overlay_pool's folder."""
    import dataclasses

    from embedlab.config import DripStep
    from embedlab.stages.drip import DripRequest

    params = load_params("params.yaml")
    request = DripRequest(name="o", step=DripStep(8, n_imagenet_samples=2))
    request.setup(params)
    classes = {str(p) for p in request.classes}
    pool = {str(p) for p in request.overlay_paths}
    assert len(classes) == 10 and pool and not pool & classes
    # Both sources' unchosen images (read from the drip cache, where params.yaml keeps one).
    assert any("/imagenet/" in p for p in pool) and any("/training/" in p or "/facebook/" in p for p in pool)

    own = dataclasses.replace(params, drip=dataclasses.replace(params.drip, overlay_pool="data/raw/disc/reference"))
    request.setup(own)
    assert {p.parent.name for p in request.overlay_paths} == {"reference"}
