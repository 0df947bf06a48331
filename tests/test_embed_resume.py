"""Embedding into h5 chunk by chunk: a killed or failed run resumes, and the file equals an uninterrupted run's."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlab.config import RuntimeConfig
from embedlab.descriptors import DescriptorFileError, read_descriptors
from embedlab.evaluation.embed import embed_folder, embed_to_file
from embedlab.models.backbone import DescriptorModel, DescriptorSpec
from embedlab.models.checkpoints import export_descriptor_model

from conftest import PROJECT, cli_env

SPEC = DescriptorSpec(backbone="test_resnet", embedding_dim=32, gem_p=3.0, img_size=48)
# Batches of 2: a chunk (16 batches) is 32 images.
RUNTIME = RuntimeConfig(device="cpu", num_workers=0, inference_batch_size=2)


def _model_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return export_descriptor_model(DescriptorModel(SPEC), path)


def _image_folder(tiny_demo: Path, folder: Path, count: int) -> Path:
    """``count`` JPEG files named I00000..., cycling through the demo's real query photos."""
    photos = sorted((tiny_demo / "disc" / "query").glob("*.jpg"))
    folder.mkdir()
    for i in range(count):
        shutil.copyfile(photos[i % len(photos)], folder / f"I{i:05d}.jpg")
    return folder


def test_a_killed_embedding_resumes_after_its_last_chunk_and_equals_an_uninterrupted_run(tmp_path, tiny_demo):
    images = _image_folder(tiny_demo, tmp_path / "images", 640)
    model = _model_file(tmp_path / "model.safetensors", 0)
    out, parts = tmp_path / "killed.h5", tmp_path / "killed.h5.parts"
    cmd = ["embedlab", "embed", "--checkpoint", str(model), "--images", str(images), "--out", str(out),
           "--params", str(PROJECT / "params.yaml"), "--device", "cpu", "--num-workers", "0", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(parts.glob("chunk_*.npz")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the embedding ended before it could be killed"
    assert not out.exists(), "a killed run leaves no descriptor file"
    chunks_left = len(list(parts.glob("chunk_*.npz")))
    assert 1 <= chunks_left < 20

    resumed = embed_folder(model, images, out, runtime=RUNTIME, progress=False)
    whole = embed_folder(model, images, tmp_path / "whole.h5", runtime=RUNTIME, progress=False)

    assert resumed["resumed_after"] >= 32 and resumed["resumed_after"] % 32 == 0
    assert whole["resumed_after"] == 0
    assert not parts.exists(), "the parts go once the file is written"
    names, vectors = read_descriptors(out)
    whole_names, whole_vectors = read_descriptors(tmp_path / "whole.h5")
    assert names == whole_names == [f"I{i:05d}" for i in range(640)]
    np.testing.assert_array_equal(vectors, whole_vectors)


def test_a_failed_embedding_resumes_once_the_image_is_fixed_and_other_weights_start_afresh(tmp_path, tiny_demo):
    images = _image_folder(tiny_demo, tmp_path / "images", 100)
    paths = sorted(images.glob("*.jpg"))
    good = paths[70].read_bytes()
    paths[70].write_bytes(good[:200])  # truncated: the run fails there, after two complete chunks
    torch.manual_seed(0)
    model_a, model_b = DescriptorModel(SPEC), DescriptorModel(SPEC)
    out = tmp_path / "q.h5"

    with pytest.raises(Exception, match="I00070"):
        embed_to_file(model_a, paths, out, runtime=RUNTIME, progress=False)
    assert not out.exists()

    paths[70].write_bytes(good)
    # Other weights: the parts of model A are not theirs, so nothing of A's is kept.
    other = embed_to_file(model_b, paths, out, runtime=RUNTIME, progress=False)
    assert other.settings["resumed_after"] == 0
    np.testing.assert_array_equal(read_descriptors(out)[1], _vectors(model_b, paths, tmp_path / "b.h5"))

    out.unlink()
    paths[70].write_bytes(good[:200])
    with pytest.raises(Exception, match="I00070"):
        embed_to_file(model_a, paths, out, runtime=RUNTIME, progress=False)
    paths[70].write_bytes(good)
    same = embed_to_file(model_a, paths, out, runtime=RUNTIME, progress=False)
    assert same.settings["resumed_after"] == 64
    np.testing.assert_array_equal(read_descriptors(out)[1], _vectors(model_a, paths, tmp_path / "a.h5"))


def _vectors(model, paths, out: Path) -> np.ndarray:
    embed_to_file(model, paths, out, runtime=RUNTIME, progress=False)
    return read_descriptors(out)[1]


def test_names_the_h5_cannot_hold_are_refused_before_any_image_is_embedded(tmp_path, tiny_demo):
    images = _image_folder(tiny_demo, tmp_path / "images", 4)
    (images / "sub").mkdir()
    shutil.copyfile(images / "I00000.jpg", images / "sub" / "I00000.jpg")
    paths = sorted(images.rglob("*.jpg"))
    with pytest.raises(DescriptorFileError, match="I00000") as err:
        embed_to_file(DescriptorModel(SPEC), paths, tmp_path / "q.h5", runtime=RUNTIME, progress=False)
    assert "more than once" in str(err.value)
    assert not (tmp_path / "q.h5.parts").exists()


def test_precision_is_part_of_what_a_resume_must_match(tmp_path, tiny_demo):
    images = _image_folder(tiny_demo, tmp_path / "images", 40)
    paths = sorted(images.glob("*.jpg"))
    model = DescriptorModel(SPEC)
    out = tmp_path / "q.h5"
    bad = paths[36].read_bytes()
    paths[36].write_bytes(bad[:200])
    with pytest.raises(Exception, match="I00036"):
        embed_to_file(model, paths, out, runtime=RUNTIME, progress=False)  # one chunk of 32 kept, in fp32
    paths[36].write_bytes(bad)
    bf16 = embed_to_file(model, paths, out, runtime=dataclasses.replace(RUNTIME, precision="bf16"), progress=False)
    assert bf16.settings["resumed_after"] == 0 and bf16.settings["precision"] == "bf16"


def test_two_processes_write_the_file_one_writes_and_a_failed_range_resumes(tmp_path, tiny_demo):
    """`embedlab embed --devices 2` (a process per GPU; CPU processes here): each embeds half of the images into
    the shared chunks, which chain into the one-process file. A range that failed resumes after its last chunk."""
    images = _image_folder(tiny_demo, tmp_path / "images", 150)
    paths = sorted(images.glob("*.jpg"))
    torch.manual_seed(0)
    model = DescriptorModel(SPEC)
    one = tmp_path / "one.h5"
    embed_to_file(model, paths, one, runtime=RUNTIME, progress=False)

    good = paths[140].read_bytes()
    paths[140].write_bytes(good[:200])  # in the second process's range (75-149), after its second chunk
    two = tmp_path / "two.h5"
    with pytest.raises(Exception, match="I00140"):
        embed_to_file(model, paths, two, runtime=RUNTIME, progress=False, processes=2)
    assert not two.exists()
    paths[140].write_bytes(good)
    resumed = embed_to_file(model, paths, two, runtime=RUNTIME, progress=False, processes=2)
    assert resumed.settings["resumed_after"] == 75 + 64  # the first range whole, two chunks of the second

    names, vectors = read_descriptors(two)
    one_names, one_vectors = read_descriptors(one)
    assert names == one_names == [f"I{i:05d}" for i in range(150)]
    np.testing.assert_allclose(vectors, one_vectors, atol=1e-5)
