"""The augmented-set generator: deterministic for any worker count, resumable
after a kill, strict about stale output and bad settings, tolerant of bad
images (``embedlab augment``)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import PROJECT, cli_env
from embedlab.cli import main
from embedlab.config import ConfigError, load_params
from embedlab.data.augmented import AugmentedSet
from embedlab.images import BadImageError, list_images, load_rgb, read_image_bytes
from embedlab.stages.augment import run_augment

SMALL = {"classes": 6, "per_class": 4, "size": 64, "every": 1, "jpeg_quality": 90, "seed": 3}


def _write_params(root: Path, source: Path, faces: Path | None = None, **augment) -> Path:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["augment"].update(source=str(source), faces=str(faces or root / "faces"), out=str(root / "augmented"),
                          **{**SMALL, **augment})
    raw["runtime"]["augment_workers"] = 1
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def params_file(tmp_path, tiny_demo) -> Path:
    return _write_params(tmp_path, tiny_demo / "disc" / "training")


def _generate(params_file: Path, recipe: str = "big", out: Path | None = None, workers: int | None = None, **kw):
    """``workers``: runtime.augment_workers instead of the params file's."""
    params = load_params(params_file)
    if workers is not None:
        params = dataclasses.replace(params, runtime=dataclasses.replace(params.runtime, augment_workers=workers))
    return run_augment(params, recipe, kw.pop("overrides", None), out=out, progress=False,
                       params_file=str(params_file), **kw)


def _files(root: Path) -> dict[str, bytes]:
    """Every image of a set by name (the manifest records run times, so it is left out)."""
    return {p.name: read_image_bytes(p) for p in list_images(root)}


def _shards(root: Path) -> dict[str, bytes]:
    """The files of the set's store."""
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*"))} | {"index.npz": (root / "index.npz").read_bytes()}


def _hidden(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".")]


def test_output_is_byte_identical_for_one_and_two_workers(params_file, tmp_path):
    one, _ = _generate(params_file, out=tmp_path / "one", workers=1)
    two, _ = _generate(params_file, out=tmp_path / "two", workers=2)
    assert two["run"]["workers"] == 2
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(a) == 6 * 4 and a == b
    assert _shards(tmp_path / "one") == _shards(tmp_path / "two")  # the store itself, byte for byte
    assert (tmp_path / "one/fingerprint.json").read_bytes() == (tmp_path / "two/fingerprint.json").read_bytes()
    assert sorted(a)[:4] == [f"T000000_{i}.jpg" for i in range(4)]
    # Another seed gives other augmentations but the same anchors.
    _generate(params_file, out=tmp_path / "seed4", overrides={"seed": 4})
    c = _files(tmp_path / "seed4")
    assert c["T000000_0.jpg"] == a["T000000_0.jpg"]
    assert c["T000000_1.jpg"] != a["T000000_1.jpg"]


def test_manifest_counts_and_a_rerun_only_counts(params_file, tmp_path):
    manifest, out = _generate(params_file)
    assert out == tmp_path / "augmented" / "big"
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["counts"] == {"classes": 6, "classes_skipped": 0, "images": 24, "images_written": 24,
                                  "images_present": 0, "skipped_inputs": 0}
    assert manifest["recipe"] == "big" and manifest["steps"][-1] == {"op": "resize", "p": 1.0, "args": {"size": 64}}
    assert manifest["seed"] == 3 and manifest["parameters"]["per_class"] == 4
    assert {"pillow", "albumentations", "numpy"} <= set(manifest["versions"])
    again, _ = _generate(params_file)
    assert again["counts"]["images_written"] == 0 and again["counts"]["images_present"] == 24
    assert again["run"]["resumed"]


_KILLED = r"""
import sys
from embedlab.config import load_params
from embedlab.stages.augment import run_augment
run_augment(load_params(sys.argv[1]), "big", out=sys.argv[2], progress=False, shard_size=50)
"""


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_demo):
    params = _write_params(tmp_path, tiny_demo / "disc" / "training", classes=0, per_class=12, size=128)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(params), str(out)], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "shard-000002.keys.npy").exists():  # two complete shards, the third being written
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the generator wrote no shard"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (out / "manifest.json").exists() and not (out / "store.json").exists()
    # A shard the kill interrupted, as its temporary file.
    (out / ".shard-000003.tar.x1y2z3").write_bytes(b"half a shard")

    resumed, _ = run_augment(load_params(params), "big", out=out, progress=False, shard_size=50)
    assert resumed["counts"]["images_present"] >= 150 and resumed["run"]["resumed"]
    assert resumed["counts"]["images"] == 32 * 12
    _generate(params, out=tmp_path / "whole", workers=2, shard_size=50)
    assert _shards(out) == _shards(tmp_path / "whole")
    assert _hidden(out) == []


def test_black_and_white_sets_are_grayscale_on_disk(params_file, tiny_demo):
    _, out = _generate(params_file, "bw")
    for path in list_images(out):
        rgb = np.asarray(load_rgb(path))
        assert rgb.shape == (64, 64, 3) and (rgb == rgb[..., :1]).all(), path
    anchor = np.asarray(load_rgb(out / "T000002_0.jpg")).astype(float)
    source = Image.open(tiny_demo / "disc" / "training" / "T000002.jpg").convert("L")
    expected = np.asarray(source.resize((64, 64), Image.BICUBIC)).astype(float)
    assert np.abs(anchor[..., 0] - expected).mean() < 3  # k_0: the original, resized, in grey


def test_faces_join_as_extra_classes(tmp_path, tiny_demo):
    faces = tmp_path / "faces"
    faces.mkdir()
    for path in sorted((tiny_demo / "imagenet").glob("*.jpg"))[:3]:
        shutil.copy(path, faces / path.name.replace("I", "F"))
    params = _write_params(tmp_path, tiny_demo / "disc" / "training", faces=faces, classes=2)
    manifest, out = _generate(params, "ff_bw")
    assert AugmentedSet(out, 32).classes == ["T000000", "T000001", "face_F000000", "face_F000001", "face_F000002"]
    assert manifest["counts"]["classes"] == 5 and "face_F000001_3.jpg" in _files(out)
    shutil.rmtree(faces)
    with pytest.raises(FileNotFoundError, match="face folder .*faces does not exist"):
        _generate(params, "ff", out=tmp_path / "noface")
    assert not (tmp_path / "noface").exists()


def _edited(params_file: Path, edit) -> Path:
    raw = yaml.safe_load(params_file.read_text())
    edit(raw["augment"])
    path = params_file.with_name("edited.yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("recipe,edit,message", [
    ("bigg", lambda a: None, "unknown recipe 'bigg'; known: big, blur"),
    ("big", lambda a: a["base"][2].update(op="pixelisation"), r"augment.base\[2\].op: unknown op 'pixelisation'"),
    ("big", lambda a: a["base"][2]["args"].update(ratoi=0.5), r"augment.base\[2\].args.ratoi: pixelization has no"),
    ("blur", lambda a: a["recipes"]["blur"]["replace"]["blur"].update(p=1.5),
     r"augment.recipes.blur.replace.blur.p: 1.5 is outside \[0, 1\]"),
    ("big", lambda a: a["base"][0]["args"].update(scale=[1.0, 0.2]), r"range \[1.0, 0.2\] has low > high"),
])
def test_bad_settings_fail_before_any_file_is_written(params_file, tmp_path, recipe, edit, message, capsys):
    bad = _edited(params_file, edit)
    with pytest.raises(ConfigError, match=message):
        _generate(bad, recipe)
    assert main(["augment", "--params", str(bad), "--recipe", recipe]) == 2
    assert "edited.yaml: augment" in capsys.readouterr().err
    assert not (tmp_path / "augmented").exists()


def test_corrupt_source_is_skipped_and_listed_or_fails_naming_it(tmp_path, tiny_demo):
    source = tmp_path / "source"
    source.mkdir()
    for path in sorted((tiny_demo / "disc" / "training").glob("*.jpg"))[:5]:
        shutil.copy(path, source / path.name)
    broken = source / "T000002.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    params = _write_params(tmp_path, source, on_bad_image="skip")
    manifest, out = _generate(params, workers=2)
    assert manifest["counts"]["classes"] == 4 and manifest["counts"]["skipped_inputs"] == 1
    [skipped] = manifest["skipped_inputs"]
    assert skipped["path"] == str(broken) and "truncated" in skipped["reason"]
    assert "T000002_0.jpg" not in _files(out) and len(_files(out)) == 16

    failing = _write_params(tmp_path, source, on_bad_image="fail")
    with pytest.raises(BadImageError, match="T000002.jpg"):
        _generate(failing, out=tmp_path / "failing")


def test_missing_or_empty_source_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        _generate(_write_params(tmp_path, tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no images"):
        _generate(_write_params(tmp_path, tmp_path / "empty"))


def test_output_made_with_other_parameters_needs_restart(params_file, tmp_path):
    _, out = _generate(params_file)
    with pytest.raises(ValueError, match=r"made with other parameters \(changed: per_class\).*--restart"):
        _generate(params_file, overrides={"per_class": 3})
    assert len(_files(out)) == 24  # untouched
    manifest, _ = _generate(params_file, overrides={"per_class": 3}, restart=True)
    assert manifest["counts"]["images_written"] == 18 and len(_files(out)) == 18
    manifest, _ = _generate(params_file, overrides={"size": 48}, if_stale="restart")  # what dvc repro does
    assert manifest["counts"]["images_written"] == 24
    assert load_rgb(out / "T000003_1.jpg").size == (48, 48)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="no fingerprint.json"):
        _generate(params_file, out=foreign, restart=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli_prints_a_summary(params_file, tmp_path, capsys):
    assert main(["augment", "--params", str(params_file), "--recipe", "dark", "--classes", "3", "--per-class", "2",
                 "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "augment dark: 3 classes x 2 images of 64 px" in out and "written 6, already present 0" in out
    assert os.path.isfile(tmp_path / "augmented" / "dark" / "manifest.json")
    # --workers is runtime.augment_workers (params file: 1) for this run
    assert json.loads((tmp_path / "augmented" / "dark" / "manifest.json").read_text())["run"]["workers"] == 2


def test_preview_shows_the_sets_own_images_and_writes_no_set(params_file, tmp_path, capsys):
    preview = tmp_path / "previews" / "bw.png"
    assert main(["augment", "--params", str(params_file), "--recipe", "bw", "--preview", str(preview)]) == 0
    assert capsys.readouterr().out.strip() == str(preview)
    assert not (tmp_path / "augmented").exists()
    picture = np.asarray(Image.open(preview).convert("RGB")).astype(int)
    columns = min(6, load_params(params_file).augment.per_class)
    assert picture.shape[:2] == (680, 150 * columns)  # 4 classes, each its anchor + augmentations
    # The bw recipe's grid is grey: its images are the set's grayscale ones, not a colour re-drawing.
    assert np.abs(picture - picture.mean(axis=2, keepdims=True)).max() <= 3


def test_a_source_name_the_store_cannot_hold_is_refused_before_any_work(tmp_path, tiny_demo):
    from embedlab.data.shards import StoreError

    source = tmp_path / "source"
    source.mkdir()
    for path in sorted((tiny_demo / "disc" / "training").glob("*.jpg"))[:3]:
        shutil.copy(path, source / path.name)
    shutil.copy(source / "T000000.jpg", source / "Zoë.jpg")  # not ASCII: no plain tar member name
    with pytest.raises(StoreError, match=r"Zoë\.jpg: image key 'Zoë_3' must be a short ASCII name"):
        _generate(_write_params(tmp_path, source), out=tmp_path / "set")
    assert not (tmp_path / "set").exists()
