"""The real tools around the stages: `dvc repro` in a temporary git repo and `mlflow run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import PROJECT, run, tiny_params
from embedlab.images import list_images, load_rgb

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_repo(tmp_path: Path, tiny_demo: Path, tiny_faces: Path) -> Path:
    """A git repo holding the project's dvc.yaml, the package source and the tiny params."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(PROJECT / "dvc.yaml", repo)
    shutil.copytree(PROJECT / "src" / "embedlab", repo / "src" / "embedlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tiny_demo, repo / "data" / "raw")
    shutil.copytree(tiny_faces, repo / "data" / "raw" / "faces")
    # The DISC parts and the class folders as image stores (as `embedlab import disc21` writes them):
    # every stage reads them through the same paths.
    run(["embedlab", "pack", *(f"data/raw/{part}" for part in ("disc/training", "disc/reference", "disc/query",
                                                                "imagenet", "frm_faces"))], repo)
    params = tiny_params()
    params["pipeline"]["gem_starts"] = ["imagenet", "scratch"]  # the demo_full profile's matrix: 2 starts × 1 set
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("mlflow.db\nmlruns/\n__pycache__/\n")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    shutil.copy(PROJECT / ".dvcignore", repo)
    shutil.copytree(PROJECT / ".dvc" / "plots", repo / ".dvc" / "plots")  # dvc.yaml's custom plot templates
    run(["dvc", "config", "--local", "core.site_cache_dir", str(tmp_path / "site_cache")], repo)
    run(["dvc", "add", "-q", "data/raw"], repo)
    # The project's layout: data.dvc at the top tracks data/raw.
    dvc_file = (repo / "data" / "raw.dvc").read_text().replace("path: raw", "path: data/raw")
    (repo / "data.dvc").write_text(dvc_file)
    (repo / "data" / "raw.dvc").unlink()
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)
    return repo


def test_dvc_repro_is_incremental_and_tracks_metrics_and_plots(tiny_repo: Path, tmp_path: Path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first = run(["dvc", "repro"], tiny_repo, **env)
    for stage in ("code_deps", "baseline", "robustness_set", "robustness", "drip@s2", "augment@big", "gem@imagenet-big",
                  "gem@scratch-big", "ensemble",
                  "face_data", "triplet_pretrain", "triplet_finetune", "templates", "decoder"):
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((tiny_repo / "reports/drip/s2/metrics.json").read_text())
    assert metrics["n_classes"] == 40 and 0 <= metrics["uAP"] <= 1
    assert 0 <= metrics["post_uAP"] <= 1  # after whitening + score normalisation
    gem = json.loads((tiny_repo / "reports/gem/imagenet/big/metrics.json").read_text())
    assert gem["n_classes"] == 8 and 0 <= gem["uAP"] <= 1
    ensemble = json.loads((tiny_repo / "reports/ensemble/metrics.json").read_text())
    assert ensemble["members"] == ["drip/s2", "gem/imagenet/big"] and 0 <= ensemble["post_uAP"] <= 1
    faces = json.loads((tiny_repo / "reports/triplet/finetune/metrics.json").read_text())
    assert 0 <= faces["test_eer"] <= 1 and "valid_eer_fake_same_person" in faces
    decoder = json.loads((tiny_repo / "reports/decoder/metrics.json").read_text())
    assert -1 <= decoder["cosine_mean"] <= 1 and 0 <= decoder["above_threshold"] <= 1
    templates = json.loads((tiny_repo / "data/templates/manifest.json").read_text())
    assert templates["template_model"] == "models/triplet/finetune/encoder.safetensors"  # the face encoder
    table = run(["embedlab", "report"], tiny_repo, **env).stdout
    assert "gem/imagenet/big" in table and "gem/scratch/big" in table  # the matrix: 2 starts × 1 set
    assert "baseline: perceptual hash (64 bit)" in table
    robustness = json.loads((tiny_repo / "reports/robustness/metrics.json").read_text())
    assert list(robustness) == ["baseline/phash", "drip/pretrained", "drip/s2", "gem/imagenet/big"]
    assert "Robustness set" in table
    assert "ensemble: drip/s2 + gem/imagenet/big" in table and "finetune" in table
    assert "Decoder: cosine" in table and f"{decoder['cosine_mean']:.4f}" in table

    # Running the code writes bytecode next to it: not a change of the code.
    (tiny_repo / "src/embedlab/__pycache__").mkdir(exist_ok=True)
    (tiny_repo / "src/embedlab/__pycache__/cli.cpython-311.pyc").write_bytes(b"\x00bytecode")
    second = run(["dvc", "repro"], tiny_repo, **env)
    assert "Running stage" not in second.stdout
    assert "up to date" in run(["dvc", "status"], tiny_repo).stdout
    # The runtime section (speed, never results) is no stage's DVC param: changing it reruns nothing.
    tiny_params_text = (tiny_repo / "params.yaml").read_text()
    faster = yaml.safe_load(tiny_params_text)
    faster["runtime"].update(num_workers=2, precision="bf16", inference_batch_size=7, compile=True)
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(faster))
    assert "up to date" in run(["dvc", "status"], tiny_repo).stdout
    (tiny_repo / "params.yaml").write_text(tiny_params_text)

    # Editing a module no training stage runs (the report printer) reruns the code listing alone.
    # (PYTHONPATH: the stages run this repo's copy of the package, as a project's own checkout does.)
    code_env = {**env, "PYTHONPATH": str(tiny_repo / "src")}
    report_py = tiny_repo / "src/embedlab/report.py"
    report_py.write_text(report_py.read_text() + "\n# an edit\n")
    edited = run(["dvc", "repro"], tiny_repo, **code_env)
    assert "Running stage 'code_deps'" in edited.stdout and edited.stdout.count("Running stage") == 1
    # A module the GeM trainer runs and the drip steps do not: its listing changes, and GeM's alone.
    gem_module = tiny_repo / "src/embedlab/models/gem_module.py"
    gem_module.write_text(gem_module.read_text() + "\n# an edit\n")
    run(["dvc", "repro", "code_deps"], tiny_repo, **code_env)
    stale = run(["dvc", "status"], tiny_repo).stdout
    assert "gem@imagenet-big:" in stale and "reports/code/gem.txt" in stale
    assert "drip@s1:" not in stale and "triplet_pretrain:" not in stale and "decoder:" not in stale
    gem_module.write_text(gem_module.read_text().removesuffix("\n# an edit\n"))
    run(["dvc", "repro", "code_deps"], tiny_repo, **code_env)
    assert "up to date" in run(["dvc", "status"], tiny_repo).stdout

    # Each stage depends on the parts of data/raw it reads: a new face photo makes the face stages stale alone.
    extra = tiny_repo / "data/raw/faces/train/extra.jpg"
    shutil.copy(next((tiny_repo / "data/raw/faces/test_public").rglob("*.jpg")), extra)
    stale = run(["dvc", "status"], tiny_repo).stdout
    assert all(f"{stage}:" in stale for stage in ("face_data", "triplet_pretrain", "templates", "decoder"))
    assert "drip@s1:" not in stale and "augment@big:" not in stale and "gem@imagenet-big:" not in stale, stale
    extra.unlink()
    assert "up to date" in run(["dvc", "status"], tiny_repo).stdout

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], tiny_repo).stdout)
    workspace = next(iter(shown.values()))["data"]  # the workspace (keyed "" by DVC 3.67)
    assert workspace["reports/drip/s1/metrics.json"]["data"]["uAP"] == pytest.approx(
        json.loads((tiny_repo / "reports/drip/s1/metrics.json").read_text())["uAP"])
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], tiny_repo)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert 'id = "reports_plots_history_drip_s2_csv"' in html and 'id = "reports_plots_pr_curve_drip_s2_csv"' in html
    for title in ("drip s2: ArcFace loss per epoch", "Face encoder: validation EER per epoch", "Decoder: template cosine"):
        assert title in html, title

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])
    stages = sorted(r.data.tags["embedlab.stage"] for r in runs)
    assert stages == ["baseline", "decoder", "drip", "drip", "drip_init", "ensemble", "gem", "gem", "robustness",
                      "triplet", "triplet"]
    assert sorted(r.data.tags["embedlab.drip_step"] for r in runs if "embedlab.drip_step" in r.data.tags) == ["s1", "s2"]
    data_hash = yaml.safe_load((tiny_repo / "data.dvc").read_text())["outs"][0]["md5"]
    head = run(["git", "rev-parse", "HEAD"], tiny_repo).stdout.strip()
    assert all(r.data.tags["dvc.data_hash"] == data_hash for r in runs)
    assert all(r.data.tags["mlflow.source.git.commit"] == head for r in runs)
    # Each training run's datasets carry DVC's hashes: GeM's set as the augment stage recorded it (dvc repro
    # writes a stage's lock entry before the next stage runs), DISC's query as DVC hashes data/raw/disc/query.
    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]
    augmented = next(o["md5"] for o in lock["augment@big"]["outs"] if o["path"] == "data/augmented/big")
    for r in runs:
        inputs = {i.dataset.name: i.dataset.digest for i in client.get_run(r.info.run_id).inputs.dataset_inputs}
        stage = r.data.tags["embedlab.stage"]
        assert bool(inputs) == (stage in ("drip", "gem", "triplet", "decoder")), stage
        if stage == "gem":
            assert inputs["augmented/big"] == augmented and inputs["disc21/query"].endswith(".dir")

    # Changing the intensity re-runs the drip steps, not the weights they start from.
    run(["git", "add", "-A"], tiny_repo)
    run(["git", "commit", "-qm", "results"], tiny_repo)
    exp = run(["dvc", "exp", "run", "-S", "drip.qry_augs_intensity=0.6"], tiny_repo, **env)
    assert "Running stage 'drip@s1'" in exp.stdout and "Running stage 'drip@s2'" in exp.stdout
    for untouched in ("drip_init", "augment@big", "gem@imagenet-big", "triplet_pretrain", "templates", "decoder"):
        assert f"Running stage '{untouched}'" not in exp.stdout
    assert yaml.safe_load((tiny_repo / "params.yaml").read_text())["drip"]["qry_augs_intensity"] == 0.6


def test_mlflow_run_drip_stage_logs_into_the_run_mlflow_opened(tmp_path: Path, tiny_demo: Path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT / "MLproject", project)
    shutil.copytree(tiny_demo, project / "data" / "raw")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run(["mlflow", "run", str(project), "-e", "drip_stage", "--env-manager", "local", "--experiment-name", "drip",
         "-P", "n_facebook_samples=12", "-P", "n_imagenet_samples=0", "-P", "n_frm_face_samples=0",
         "-P", "batch_size=8", "-P", "qry_augs_intensity=0.5", "-P", "epochs=2"],
        tmp_path, MLFLOW_TRACKING_URI=uri)

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("drip").experiment_id])
    assert len(runs) == 1, "the stage must log into MLflow's run, not open a second one"
    logged = runs[0]
    assert logged.info.status == "FINISHED"
    assert logged.data.params["n_facebook_samples"] == "12"  # MLproject parameter
    assert logged.data.params["drip.n_classes"] == "12"  # the stage's own parameters
    assert logged.data.params["drip.qry_augs_intensity"] == "0.5"
    assert 0.0 <= logged.data.metrics["uAP"] <= 1.0
    assert len(client.get_metric_history(logged.info.run_id, "train_loss_epoch")) == 2
    checkpoints = {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoints")}
    assert "checkpoints/last.ckpt" in checkpoints
    assert (project / "models/drip/12cls/checkpoints/last.ckpt").is_file()


def test_a_changed_recipe_reruns_its_set_and_model_only(tiny_repo: Path, tmp_path: Path):
    """DVC's view of the augment/gem chain: what a parameter change makes stale."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run(["dvc", "repro", "gem@imagenet-big", "face_data"], tiny_repo, **env)
    images = list_images(tiny_repo / "data/augmented/big")  # an image store, read through its paths
    assert len(images) == 8 * 4  # 8 classes x (anchor + 3 augmentations)
    assert "up to date" in run(["dvc", "status", "gem@imagenet-big"], tiny_repo).stdout

    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["augment"]["recipes"]["big"] = {"last": [{"op": "grayscale", "p": 1.0}]}
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert "augment@big" in run(["dvc", "status", "--with-deps", "gem@imagenet-big"], tiny_repo).stdout
    assert "up to date" in run(["dvc", "status", "face_data"], tiny_repo).stdout
    rerun = run(["dvc", "repro", "gem@imagenet-big"], tiny_repo, **env)
    assert "Running stage 'augment@big'" in rerun.stdout and "Running stage 'gem@imagenet-big'" in rerun.stdout
    import numpy as np
    sample = np.asarray(load_rgb(images[5])).astype(int)
    assert np.abs(sample[..., 0] - sample[..., 1]).max() <= 3  # the regenerated set is grayscale


def test_a_fresh_clone_pulls_data_and_results_from_the_dvc_remote_and_reruns_nothing(tiny_repo: Path,
                                                                                      tmp_path: Path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run(["dvc", "repro", "drip_init", "face_data"], tiny_repo, **env)
    # What `make dvc-remote DVC_REMOTE=...` runs: the team's default remote, in .dvc/config (committed).
    run(["dvc", "remote", "add", "--default", "--force", "storage", str(tmp_path / "remote")], tiny_repo)
    run(["dvc", "push"], tiny_repo)
    run(["git", "add", "-A"], tiny_repo)
    run(["git", "commit", "-qm", "results, and the remote"], tiny_repo)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(tiny_repo), str(clone)], tmp_path)
    run(["dvc", "config", "--local", "core.site_cache_dir", str(tmp_path / "clone_site_cache")], clone)
    assert not (clone / "data/raw").exists() and not (clone / "models/drip/pretrained").exists()
    run(["dvc", "pull", "data.dvc", "drip_init", "face_data"], clone)  # what ran (a whole pipeline: `dvc pull`)
    assert (clone / "models/drip/pretrained").is_dir()
    assert sorted(p.name for p in (clone / "data/raw/disc").iterdir()) == sorted(
        p.name for p in (tiny_repo / "data/raw/disc").iterdir())
    assert "up to date" in run(["dvc", "status", "drip_init", "face_data"], clone).stdout
    again = run(["dvc", "repro", "drip_init", "face_data"], clone, **env)
    assert "Running stage" not in again.stdout
