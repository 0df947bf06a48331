"""Careless and hostile input: each case refused with one line naming the setting or file, nothing lost.

A table of commands with their exit code and a fragment of the message, then
the data-loss cases as real runs: a failed re-run keeps the finished model, a
second writer is refused, a kill between the two checkpoint writes of an
epoch resumes without training that epoch again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import cli_env, run
from embedlab.models.checkpoints import read_checkpoint

STEP = ["embedlab", "drip", "--n-facebook-samples", "8", "--epochs", "1", "--name", "k"]


def _refused(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def _edit_params(project: Path, edit) -> None:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    edit(raw)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))


def _set(section: str, key: str, value):
    return lambda raw: raw[section].__setitem__(key, value)


PARAMS_CASES = [  # (what is wrong, how params.yaml is edited, fragment of the message)
    ("a typo'd section", lambda raw: raw.__setitem__("dirp", raw.pop("drip")),
     "unknown section(s) ['dirp'] (did you mean 'dirp' → 'drip'?)"),
    ("a typo'd key", _set("drip", "plateau_patiance", 3), "'plateau_patiance' → 'plateau_patience'"),
    ("epochs -1 (Lightning's forever)", _set("drip", "epochs", -1), "drip.epochs: must be at least 1, got -1"),
    ("epochs 0 (no model)", _set("drip", "epochs", 0), "drip.epochs: must be at least 1, got 0"),
    ("a 0-d descriptor", _set("drip", "embedding_dim", 0), "drip.embedding_dim: must be at least 1"),
    ("NaN learning rate", _set("drip", "lr", float("nan")), "drip.lr: nan is not a finite number"),
    ("a negative learning rate", _set("drip", "lr", -0.1), "drip.lr: must be above 0, got -0.1"),
    ("0 px images", _set("drip", "img_size", 0), "drip.img_size: must be at least 1"),
    ("batch size 0", _set("drip", "batch_size", 0), "drip.batch_size: must be at least 1"),
    ("an unknown timm backbone", _set("drip", "backbone", "resnet5o"),
     "backbone 'resnet5o' is not a timm model (did you mean 'resnet50'?)"),
    ("a hub backbone (the network)", _set("drip", "backbone", "hf-hub:timm/resnet50.a1_in1k"),
     "backbone 'hf-hub:timm/resnet50.a1_in1k' is not a timm model"),
    ("sweep choices no run can take", lambda raw: raw["sweep"]["drip_stage"]["space"].__setitem__(
        "batch_size", {"choices": [0, -4]}), "sweep.drip_stage.space.batch_size: 0 is not a usable value"),
    ("a NaN sweep bound", lambda raw: raw["sweep"]["drip_stage"]["space"].__setitem__(
        "lr", {"low": float("nan"), "high": 0.1}), "sweep.drip_stage.space.lr: nan is not a usable value"),
    ("a list where a section goes", lambda raw: raw.__setitem__("drip", [1, 2]), "params.yaml.drip: expected a mapping, got list"),
]


@pytest.mark.parametrize("edit,message", [case[1:] for case in PARAMS_CASES], ids=[c[0] for c in PARAMS_CASES])
def test_a_bad_setting_is_refused_naming_it(tiny_project: Path, edit, message):
    _edit_params(tiny_project, edit)
    command = ["embedlab", "sweep", "drip_stage", "--n-trials", "1"] if "sweep" in message else STEP
    assert message in _refused(command, tiny_project).stderr
    assert not (tiny_project / "models" / "drip" / "k" / "checkpoints").exists()


@pytest.mark.parametrize("text,message", [
    ("", "the parameter file is empty"),
    ("drip:\n  lr: 0.1\n  lr: 0.2\n", "line 3: duplicate key 'lr' (first at line 2)"),
    ("- drip\n", "expected a mapping of sections, got list"),
], ids=["empty", "duplicate key", "a list"])
def test_a_broken_params_file_is_refused_naming_it(tmp_path: Path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    assert f"params.yaml: {message}" in _refused(STEP, tmp_path).stderr


@pytest.mark.parametrize("flags,message", [
    (["--n-facebook-samples", "-3"], "n_facebook_samples: must not be negative, got -3"),
    (["--step", "s1", "--n-facebook-samples", "4"], "give one or the other"),
    (["--devices", "0"], "runtime.devices: must be at least 1"),
], ids=["negative class count", "--step with a step of one's own", "0 devices"])
def test_a_bad_flag_is_refused_naming_it(tiny_project: Path, flags, message):
    cmd = ["embedlab", "drip", *flags] if "--step" in flags or "-3" in flags else [*STEP, *flags]
    assert message in _refused(cmd, tiny_project).stderr


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_failed_rerun_with_other_settings_keeps_the_finished_model(tiny_project: Path):
    run(STEP, tiny_project)
    out = tiny_project / "models" / "drip" / "k"
    kept = {p.relative_to(out): _digest(p) for p in out.rglob("*") if p.is_file()}

    _refused([*STEP[:-2], "--batch-size", "0", "--name", "k"], tiny_project)  # refused before any work
    _edit_params(tiny_project, _set("drip", "backbone", "resnet5o"))  # refused once the folder was set aside
    _refused(STEP, tiny_project)

    assert {p.relative_to(out): _digest(p) for p in out.rglob("*") if p.is_file()} == kept
    assert not list(out.parent.glob(".k.*previous*")), "the finished run is back in its folder"


@pytest.mark.slow
def test_a_finished_model_stays_until_the_run_replacing_it_completes(tiny_project: Path):
    """Other settings move the finished run aside; it is deleted only when the new run has finished, and a
    run of the old settings before that brings it back (re-evaluated, not retrained)."""
    run(STEP, tiny_project)
    out = tiny_project / "models" / "drip" / "k"
    first = _digest(out / "checkpoints" / "last.ckpt")
    run([*STEP, "--batch-size", "4"], tiny_project)
    assert _digest(out / "checkpoints" / "last.ckpt") != first
    assert not (out.parent / ".k.previous").exists()


def test_a_second_writer_of_one_output_folder_is_refused_naming_the_first(tiny_project: Path):
    from embedlab.stages.output_lock import output_lock

    with output_lock(tiny_project / "models" / "drip" / "k"):  # a run of this step in progress
        message = _refused(STEP, tiny_project).stderr
    assert f"models/drip/k: another run is writing this folder (PID {os.getpid()} on" in message
    assert not (tiny_project / "models" / "drip" / "k" / "run.json").exists()


@pytest.mark.slow
def test_a_kill_between_the_epochs_two_checkpoint_writes_resumes_without_training_that_epoch_again(
        tiny_project: Path):
    """best.ckpt is written before last.ckpt at an epoch's end; killed between the two (and mid-write of a
    third file), the re-run takes the newer checkpoint: the planned epoch count, each epoch's metrics once,
    no temporary file left or uploaded."""
    from conftest import kill_after_first_checkpoint

    cmd = ["embedlab", "drip", "--n-facebook-samples", "8", "--epochs", "3", "--name", "k"]
    checkpoints = tiny_project / "models" / "drip" / "k" / "checkpoints"
    kill_after_first_checkpoint(cmd, tiny_project, checkpoints / "last.ckpt")
    first_epoch = checkpoints.parent / "epoch0.ckpt"
    shutil.copyfile(checkpoints / "last.ckpt", first_epoch)
    run(cmd, tiny_project)
    client = MlflowClient()
    logged = [m.step for m in client.get_metric_history(json.loads(
        (checkpoints.parent / "run.json").read_text())["mlflow_run_id"], "val_loss")]
    # The state a kill leaves after the last epoch's best.ckpt, before its last.ckpt: last is epochs behind.
    shutil.copyfile(checkpoints / "last.ckpt", checkpoints / "best.ckpt")
    shutil.move(first_epoch, checkpoints / "last.ckpt")
    state = json.loads((checkpoints.parent / "run.json").read_text())
    (checkpoints.parent / "run.json").write_text(json.dumps({**state, "complete": False}))
    (checkpoints / ".last.ckpt.k2j4h5g6.ckpt").write_bytes(b"half a checkpoint")

    run(cmd, tiny_project)

    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] + 1 == 3
    assert not (checkpoints / ".last.ckpt.k2j4h5g6.ckpt").exists()
    run_id = state["mlflow_run_id"]
    finished = client.get_run(run_id)
    assert finished.data.metrics["epochs"] == 3
    # No epoch trained again: the re-run logged no validation point. (Only this re-run is checked: the first
    # kill may fall between an epoch's logging and its checkpoint, which trains that epoch again.)
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert steps == logged, (steps, logged)
    assert not any(a.path.startswith("checkpoints/.") for a in client.list_artifacts(run_id, "checkpoints"))


def test_a_sweep_whose_every_trial_failed_exits_non_zero(monkeypatch, capsys):
    import embedlab.sweep.runner as runner
    from embedlab.cli import main

    summary = {"study": "s", "storage": "sqlite:///o.db", "stage": "drip_stage", "metric": "uAP",
               "direction": "maximize", "n_trials": 2, "complete": 0, "pruned": 0, "failed": 2, "killed": 0,
               "running": 0, "parent_run_id": "p1"}
    monkeypatch.setattr(runner, "run_sweep", lambda params, request: summary)
    assert main(["sweep", "drip_stage", "--params", str(Path(__file__).parents[1] / "params.yaml")]) == 2
    assert "every trial of study s failed (2)" in capsys.readouterr().err


def _descriptor_files(folder: Path, reference_vectors) -> list[str]:
    import h5py
    import numpy as np

    from embedlab.descriptors import write_descriptors

    rng = np.random.default_rng(0)
    write_descriptors(folder / "q.h5", ["Q0", "Q1"], rng.standard_normal((2, 4)).astype(np.float32))
    with h5py.File(folder / "r.h5", "w") as f:  # written by hand, as another tool might
        f["vectors"] = reference_vectors
        f["image_names"] = np.array([b"R0", b"R1", b"R2"])
    (folder / "gt.csv").write_text("query_id,reference_id\nQ0,R1\n")
    return ["embedlab", "evaluate-disc", "--query", str(folder / "q.h5"), "--reference", str(folder / "r.h5"),
            "--ground-truth", str(folder / "gt.csv"), "--out", str(folder / "eval"),
            "--params", str(Path(__file__).parents[1] / "params.yaml")]


@pytest.mark.parametrize("vectors,message", [
    ("zeros", "r.h5: all 3 reference vectors are zeros: nothing to score"),
    ("integers", "r.h5: vectors must be floating point"),
])
def test_descriptors_that_cannot_be_scored_are_refused_naming_the_file(tmp_path: Path, vectors, message):
    import numpy as np

    array = np.zeros((3, 4), np.float32) if vectors == "zeros" else np.arange(12, dtype=np.int64).reshape(3, 4)
    assert message in _refused(_descriptor_files(tmp_path, array), tmp_path).stderr
    assert not (tmp_path / "eval").exists()


def test_an_unreachable_tracking_server_fails_fast_without_printing_its_password(tiny_project: Path):
    import time

    start = time.monotonic()
    done = subprocess.run(STEP, cwd=tiny_project, capture_output=True, text=True, timeout=300,
                          env=cli_env(MLFLOW_TRACKING_URI="http://ann:s3cr@t@127.0.0.1:1"))
    assert done.returncode == 2 and time.monotonic() - start < 120, (done.returncode, done.stderr[-2000:])
    assert "s3cr" not in done.stdout + done.stderr
    assert "http://ann:***@127.0.0.1:1" in done.stderr and "Traceback" not in done.stderr
    assert not (tiny_project / "models" / "drip" / "k" / "checkpoints").exists()


def test_passwords_are_hidden_in_every_uri_of_a_message():
    from embedlab.credentials import hide_passwords

    assert hide_passwords("to http://u:p@ss@host:5000/api and postgresql://a:b@db/x, not sqlite:///m.db") == \
        "to http://u:***@host:5000/api and postgresql://a:***@db/x, not sqlite:///m.db"
    assert hide_passwords("a storage URL no parser took: //u:p@ss@host/db") == \
        "a storage URL no parser took: //u:***@host/db"


@pytest.mark.parametrize("link", ["dangling", "looping"])
def test_a_broken_image_link_is_an_unreadable_image_not_a_silent_gap(tmp_path: Path, tiny_demo: Path, link):
    import torch

    from embedlab.models.backbone import DescriptorModel, DescriptorSpec
    from embedlab.models.checkpoints import export_descriptor_model

    torch.manual_seed(0)
    model = export_descriptor_model(DescriptorModel(DescriptorSpec("test_resnet", 32, 3.0, 48)),
                                    tmp_path / "model.safetensors")
    folder = tmp_path / "images"
    folder.mkdir()
    for source in sorted((tiny_demo / "disc" / "query").glob("*.jpg"))[:3]:
        shutil.copy(source, folder)
    broken = folder / "Q_broken.jpg"
    broken.symlink_to(folder / ("gone.jpg" if link == "dangling" else "Q_broken.jpg"))
    cmd = ["embedlab", "embed", "--checkpoint", str(model), "--images", str(folder), "--out", str(tmp_path / "o.h5"),
           "--params", str(Path(__file__).parents[1] / "params.yaml")]
    assert "Q_broken.jpg" in _refused(cmd, tmp_path).stderr  # on_bad_image: fail (params.yaml's)
    assert not (tmp_path / "o.h5").exists()
    broken.unlink()
    assert "img_size (--img-size) must be at least 1 pixel, got -8" in _refused([*cmd, "--img-size", "-8"],
                                                                              tmp_path).stderr
    one_image = [*cmd]
    one_image[cmd.index("--images") + 1] = str(next(folder.glob("*.jpg")))  # a file where a folder goes
    assert "is not a folder" in _refused(one_image, tmp_path).stderr


@pytest.mark.slow
def test_a_truncated_checkpoint_is_refused_on_resume_naming_it(tiny_project: Path):
    from conftest import kill_after_first_checkpoint

    cmd = ["embedlab", "drip", "--n-facebook-samples", "8", "--epochs", "3", "--name", "k"]
    last = tiny_project / "models" / "drip" / "k" / "checkpoints" / "last.ckpt"
    kill_after_first_checkpoint(cmd, tiny_project, last)
    last.write_bytes(last.read_bytes()[:100])  # a copy cut short, a disk that failed
    message = _refused(cmd, tiny_project).stderr
    assert "models/drip/k/checkpoints/last.ckpt: not a readable checkpoint" in message
    assert "delete it to start the run afresh" in message


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs: a disk that fills up (root, and a kernel that lets this process mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}); the disk-full "
                    "case needs one")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_leaves_the_last_evaluation_whole_and_names_the_file(tmp_path: Path, small_disk: Path):
    import numpy as np

    from embedlab.descriptors import write_descriptors

    rng = np.random.default_rng(0)
    names = [f"Q{i:05d}" for i in range(2000)]
    write_descriptors(tmp_path / "q.h5", names, rng.standard_normal((2000, 8)).astype(np.float32))
    write_descriptors(tmp_path / "r.h5", [f"R{i:05d}" for i in range(2000)],
                      rng.standard_normal((2000, 8)).astype(np.float32))
    (tmp_path / "gt.csv").write_text("query_id,reference_id\n" + "".join(f"Q{i:05d},R{i:05d}\n" for i in range(50)))
    cmd = ["embedlab", "evaluate-disc", "--query", str(tmp_path / "q.h5"), "--reference", str(tmp_path / "r.h5"),
           "--ground-truth", str(tmp_path / "gt.csv"), "--out", str(small_disk / "eval"),
           "--params", str(Path(__file__).parents[1] / "params.yaml")]
    run([*cmd, "--k", "1"], tmp_path)  # the last evaluation: 2,000 predictions
    before = {p.name: p.read_bytes() for p in (small_disk / "eval").iterdir()}
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - 64 * 1024))  # 64 KiB left: 20,000 rows do not fit

    message = _refused([*cmd, "--k", "10"], tmp_path).stderr

    assert "disk full while writing" in message and str(small_disk / "eval") in message
    assert {p.name: p.read_bytes() for p in (small_disk / "eval").iterdir()} == before


@pytest.mark.parametrize("broken,message", [
    ("weights", "model.safetensors: not a readable safetensors file"),
    ("spec", "model.json: not a model spec (invalid JSON"),
    ("hub backbone", "model.safetensors: not a DescriptorSpec (backbone 'hf-hub:timm/resnet50.a1_in1k' is not"),
])
def test_a_broken_exported_model_is_refused_naming_its_file(tmp_path: Path, tiny_demo: Path, broken, message):
    from embedlab.models.backbone import DescriptorModel, DescriptorSpec
    from embedlab.models.checkpoints import export_descriptor_model

    model = export_descriptor_model(DescriptorModel(DescriptorSpec("test_resnet", 32, 3.0, 48)),
                                    tmp_path / "model.safetensors")
    spec = model.with_suffix(".json")
    if broken == "weights":
        model.write_bytes(b"garbage")
    elif broken == "spec":
        spec.write_text("{not json")
    else:  # a spec edited to name a hub model: timm would download it
        spec.write_text(json.dumps({**json.loads(spec.read_text()), "backbone": "hf-hub:timm/resnet50.a1_in1k"}))
    cmd = ["embedlab", "embed", "--checkpoint", str(model), "--images", str(tiny_demo / "disc" / "query"),
           "--out", str(tmp_path / "o.h5"), "--params", str(Path(__file__).parents[1] / "params.yaml")]
    assert message in _refused(cmd, tmp_path).stderr


def test_a_symlinked_step_folder_is_refused_before_anything_moves(tiny_project: Path):
    elsewhere = tiny_project / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (tiny_project / "models" / "drip").mkdir(parents=True)
    (tiny_project / "models" / "drip" / "k").symlink_to(elsewhere)
    assert "models/drip/k: the stage's output folder is a symbolic link" in _refused(STEP, tiny_project).stderr
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def test_timm_weights_offline_fail_at_once_naming_the_file_to_provide(tiny_project: Path):
    import time

    _edit_params(tiny_project, _set("drip", "pretrained", "timm"))
    start = time.monotonic()
    done = subprocess.run(STEP, cwd=tiny_project, capture_output=True, text=True, timeout=300,
                          env=cli_env(HF_HUB_OFFLINE="1"))
    assert done.returncode == 2 and time.monotonic() - start < 60, done.stderr[-2000:]
    assert "pretrained: timm: timm could not provide test_resnet's weights" in done.stderr
    assert "save timm.create_model('test_resnet', pretrained=True).state_dict() with torch.save" in done.stderr


def test_atomically_written_files_are_readable_by_the_team_as_plain_writes_are(tmp_path: Path):
    """mkstemp creates 0600 files: reports, models and mlruns written through it were unreadable to the other
    users of a shared store. They now get the mode a plain open() gives."""
    import os
    import stat

    from embedlab.atomic import write_json_atomic, write_text_atomic

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text_atomic(tmp_path / "atomic.txt", "x")
    write_json_atomic(tmp_path / "report" / "metrics.json", {"uAP": 0.5})
    expected = stat.S_IMODE(os.stat(plain).st_mode)
    assert expected & 0o044  # group / others may read (the usual umask)
    for path in (tmp_path / "atomic.txt", tmp_path / "report" / "metrics.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path
