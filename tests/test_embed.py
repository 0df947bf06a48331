"""`embedlab embed` and `evaluate-disc` on real image folders, including unreadable images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from embedlab.descriptors import read_descriptors
from embedlab.models.backbone import DescriptorModel, DescriptorSpec
from embedlab.models.checkpoints import export_descriptor_model, load_descriptor_model
from embedlab.evaluation.disc_search import evaluate_disc

from conftest import PROJECT, cli_env, run

PARAMS = PROJECT / "params.yaml"  # the runtime settings and data.on_bad_image (the default policy: fail)
SPEC = DescriptorSpec(backbone="test_resnet", embedding_dim=32, gem_p=3.0, img_size=48)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return export_descriptor_model(DescriptorModel(SPEC), tmp_path / "model.safetensors")


@pytest.fixture
def folder_with_bad_image(tmp_path: Path, tiny_demo: Path) -> Path:
    folder = tmp_path / "query"
    shutil.copytree(tiny_demo / "disc" / "query", folder)
    good = sorted(folder.glob("*.jpg"))
    (folder / "Q99999.jpg").write_bytes(good[0].read_bytes()[:300])  # truncated JPEG
    return folder


def test_exported_model_round_trips(model_file: Path):
    model = load_descriptor_model(model_file)
    assert model.spec == SPEC
    x = torch.randn(2, 3, 48, 48)
    torch.manual_seed(0)
    reference = DescriptorModel(SPEC).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)


def test_embed_fails_on_a_bad_image_naming_it(tmp_path: Path, model_file: Path, folder_with_bad_image: Path):
    import subprocess

    out = tmp_path / "q.h5"
    result = subprocess.run(["embedlab", "embed", "--checkpoint", str(model_file), "--images",
                             str(folder_with_bad_image), "--out", str(out), "--params", str(PARAMS)],
                            env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Q99999.jpg" in result.stderr
    assert not out.exists(), "no partial descriptor file"


def test_bad_image_in_a_loader_worker_is_still_one_clear_error(tmp_path: Path, model_file: Path,
                                                                folder_with_bad_image: Path):
    import subprocess

    result = subprocess.run(["embedlab", "embed", "--checkpoint", str(model_file), "--images",
                             str(folder_with_bad_image), "--out", str(tmp_path / "q.h5"), "--num-workers", "1",
                             "--params", str(PARAMS)],
                            env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Q99999.jpg" in result.stderr and "Traceback" not in result.stderr


def test_embed_skips_bad_images_when_told_and_counts_them(tmp_path: Path, model_file: Path,
                                                          folder_with_bad_image: Path):
    out = tmp_path / "q.h5"
    result = run(["embedlab", "embed", "--checkpoint", str(model_file), "--images", str(folder_with_bad_image),
                  "--out", str(out), "--on-bad-image", "skip", "--params", str(PARAMS)], tmp_path)
    assert '"skipped": 1' in result.stdout
    names, vectors = read_descriptors(out)
    n_good = len(list(folder_with_bad_image.glob("*.jpg"))) - 1
    assert len(names) == n_good and vectors.shape == (n_good, 32) and "Q99999" not in names


def test_ground_truth_of_skipped_queries_counts_as_missed(tmp_path: Path):
    from embedlab.descriptors import write_descriptors
    import numpy as np

    refs = np.eye(4, dtype=np.float32)
    write_descriptors(tmp_path / "r.h5", ["R0", "R1", "R2", "R3"], refs)
    write_descriptors(tmp_path / "q.h5", ["Q0", "Q1"], refs[:2])  # Q2 was unreadable
    (tmp_path / "gt.csv").write_text("query_id,reference_id\nQ0,R0\nQ1,R1\nQ2,R2\n")
    with pytest.raises(ValueError, match="Q2"):
        evaluate_disc(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "gt.csv", tmp_path / "e", k=2)
    metrics = evaluate_disc(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "gt.csv", tmp_path / "e", k=2,
                            all_query_ids=["Q0", "Q1", "Q2"])
    assert metrics["n_ground_truth"] == 3
    assert metrics["uAP"] == pytest.approx(2 / 3)
    assert metrics["recall_at_rank1"] == pytest.approx(2 / 3)
