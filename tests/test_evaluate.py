"""Ground-truth CSV, kNN search and the evaluate stage end to end on real files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from embedlab.data.disc import DiscLayout, GroundTruthError, read_ground_truth
from embedlab.descriptors import DescriptorFileError, write_descriptors
from embedlab.retrieval import knn_search, predictions_from_knn
from embedlab.evaluation.disc_search import evaluate_disc, format_metrics


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_read_ground_truth(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("query_id,reference_id\nQ00000,R000003\nQ00001,\nQ00000,R000003\n\n")
    assert read_ground_truth(path) == [("Q00000", "R000003")]  # de-duplicated, no-match row skipped


@pytest.mark.parametrize(
    "content, problem",
    [
        ("query,ref\nQ0,R0\n", "expected columns query_id,reference_id"),
        ("", "empty file"),
        ("query_id,reference_id\n,R0\n", "line 2: empty query_id"),
        ("query_id,reference_id\nQ0,R0,0.5\n", "line 2: expected 2 fields"),
        ("query_id,reference_id\nQ0,R0\nQ1,R7\nQ2,R8\n", "2 reference ids are not among the reference images: R7, R8"),
        ("query_id,reference_id\nQ9,R0\n", "1 query ids are not among the query images: Q9"),
    ],
)
def test_ground_truth_errors_name_the_file(tmp_path, content, problem):
    path = tmp_path / "gt.csv"
    path.write_text(content)
    with pytest.raises(GroundTruthError, match=problem) as err:
        read_ground_truth(path, query_ids=["Q0", "Q1", "Q2"], reference_ids={"R0"})
    assert str(path) in str(err.value)


def test_disc_layout_validate_names_missing_path(tmp_path):
    for d in ("training", "reference"):
        (tmp_path / d).mkdir()
    with pytest.raises(FileNotFoundError, match="query"):
        DiscLayout(tmp_path).validate()
    (tmp_path / "query").mkdir()
    with pytest.raises(FileNotFoundError, match="ground_truth.csv"):
        DiscLayout(tmp_path).validate()
    (tmp_path / "ground_truth.csv").write_text("query_id,reference_id\n")
    assert DiscLayout(str(tmp_path)).validate().query_dir == tmp_path / "query"


def test_knn_search_clips_k_and_sorts():
    ref = _unit(np.random.default_rng(0).standard_normal((5, 16)))
    scores, idx = knn_search(ref[[3, 1]], ref, k=50, device="cpu")
    assert scores.shape == idx.shape == (2, 5)
    assert idx[:, 0].tolist() == [3, 1]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    with pytest.raises(ValueError, match="dim"):
        knn_search(ref[:, :8], ref, k=1, device="cpu")


def test_knn_search_cuda_without_gpu_is_a_clear_error():
    import faiss
    import torch

    if faiss.get_num_gpus() > 0 or torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    with pytest.raises(RuntimeError, match="no GPU to search on"):
        knn_search(np.ones((1, 4)), np.ones((2, 4)), k=1, device="cuda")


def test_predictions_from_knn_drops_missing_neighbours():
    preds = predictions_from_knn(["Q0", "Q1"], ["R0", "R1"], np.array([[0.9, 0.1], [0.8, -1]]), np.array([[1, 0], [0, -1]]))
    assert list(zip(preds.query_ids, preds.reference_ids)) == [("Q0", "R1"), ("Q0", "R0"), ("Q1", "R0")]
    np.testing.assert_allclose(preds.scores, [0.9, 0.1, 0.8])


def _make_disc(tmp_path, noise, n_ref=200, n_match=30, n_distractor=10, d=32, shift=0):
    """Query i (i < n_match) is reference i + shift plus noise; GT says reference i."""
    rng = np.random.default_rng(0)
    ref = _unit(rng.standard_normal((n_ref, d)))
    q_match = _unit(ref[shift : shift + n_match] + noise * rng.standard_normal((n_match, d)))
    q_other = _unit(rng.standard_normal((n_distractor, d)))
    q_names = [f"Q{i:05d}" for i in range(n_match + n_distractor)]
    r_names = [f"R{i:06d}" for i in range(n_ref)]
    write_descriptors(tmp_path / "query.h5", q_names, np.vstack([q_match, q_other]))
    write_descriptors(tmp_path / "reference.h5", r_names, ref)
    gt = tmp_path / "ground_truth.csv"
    gt.write_text("query_id,reference_id\n" + "".join(f"{q_names[i]},{r_names[i]}\n" for i in range(n_match)))
    return tmp_path / "query.h5", tmp_path / "reference.h5", gt


def test_evaluate_disc_end_to_end(tmp_path):
    q, r, gt = _make_disc(tmp_path, noise=0.05)
    out = tmp_path / "eval"
    metrics = evaluate_disc(q, r, gt, out, k=10, device="auto")

    assert metrics["uAP"] > 0.99
    assert metrics["recall_at_rank1"] == 1.0 and metrics["recall_at_p90"] == 1.0
    assert metrics["n_queries"] == 40 and metrics["n_references"] == 200
    assert metrics["n_ground_truth"] == 30 and metrics["n_predictions"] == 400
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)

    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 400 and set(rows[0]) == {"query_id", "reference_id", "score"}
    best_q0 = max((row for row in rows if row["query_id"] == "Q00000"), key=lambda row: float(row["score"]))
    assert best_q0["reference_id"] == "R000000"

    curve = (out / "pr_curve.csv").read_text().splitlines()
    assert curve[0] == "precision,recall,threshold" and 1 < len(curve) <= 501
    assert (out / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "uAP" in format_metrics(metrics)


def test_evaluate_disc_wrong_descriptors_score_low(tmp_path):
    # Each query copies the wrong reference: the best predictions are all wrong.
    q, r, gt = _make_disc(tmp_path, noise=0.0, shift=100)
    metrics = evaluate_disc(q, r, gt, tmp_path / "eval", k=10, device="cpu")
    assert metrics["uAP"] < 0.2 and metrics["recall_at_rank1"] == 0.0
    assert metrics["recall_at_p90"] == 0.0 and metrics["threshold_at_p90"] is None
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert saved["threshold_at_p90"] is None  # JSON null, never NaN
    assert "never reached" in format_metrics(metrics)


def test_evaluate_disc_dimension_mismatch_names_both_files(tmp_path):
    q, r, gt = _make_disc(tmp_path, noise=0.05)
    write_descriptors(r, [f"R{i:06d}" for i in range(3)], np.ones((3, 16), np.float32))
    with pytest.raises(DescriptorFileError, match="dimension 32 differs from 16") as err:
        evaluate_disc(q, r, gt, tmp_path / "eval")
    assert str(q) in str(err.value) and str(r) in str(err.value)


def test_evaluate_disc_rejects_gt_ids_missing_from_descriptors(tmp_path):
    q, r, gt = _make_disc(tmp_path, noise=0.05)
    gt.write_text("query_id,reference_id\nQ00000,R999999\n")
    with pytest.raises(GroundTruthError, match="R999999"):
        evaluate_disc(q, r, gt, tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_torch_search_finds_the_same_neighbours_as_faiss_across_reference_blocks():
    # The GPU path of a machine without faiss-gpu, run here on the CPU: blocks of 37 references
    # and batches of 5 queries must merge into faiss's exact top-k.
    from embedlab.retrieval import torch_knn_search

    rng = np.random.default_rng(3)
    ref = rng.standard_normal((200, 16)).astype(np.float32)
    qry = rng.standard_normal((23, 16)).astype(np.float32)
    want_s, want_i = knn_search(qry, ref, k=10, device="cpu")
    got_s, got_i = torch_knn_search(qry, ref, 10, "cpu", batch_size=5, reference_block=37)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)


def test_a_fixed_scoring_subset_keeps_the_chosen_queries_matches(tmp_path, tiny_project):
    """evaluate.queries / references (what a sweep's score_queries / score_references fix per trial): a seeded
    subset, the same for every trial, whose references include every match of its queries."""
    import dataclasses

    import torch

    from embedlab.config import load_params
    from embedlab.data.disc import DiscLayout, read_ground_truth
    from embedlab.descriptors import DescriptorReader
    from embedlab.evaluation.disc_model import evaluate_descriptor_model, scoring_subset
    from embedlab.images import list_images
    from embedlab.models.backbone import DescriptorModel, DescriptorSpec

    params = load_params("params.yaml")
    layout = DiscLayout(params.data.disc)
    queries, references = list_images(layout.query_dir), list_images(layout.reference_dir)
    picked_q, picked_r = scoring_subset(queries, references, layout.ground_truth_csv, 10, 16, params.seed)
    assert len(picked_q) == 10 and len(picked_r) == 16
    assert (picked_q, picked_r) == scoring_subset(queries, references, layout.ground_truth_csv, 10, 16, params.seed)
    chosen = {q.stem for q in picked_q}
    matches = {r for q, r in read_ground_truth(layout.ground_truth_csv) if q in chosen}
    assert matches and matches <= {r.stem for r in picked_r}

    subset = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, queries=10, references=16,
                                                                      train_descriptors=0))
    torch.manual_seed(0)
    model = DescriptorModel(DescriptorSpec(backbone="test_resnet", embedding_dim=32, gem_p=3.0, img_size=48))
    summary = evaluate_descriptor_model(model, subset, tmp_path / "eval")
    assert 0.0 <= summary["uAP"] <= 1.0
    assert len(DescriptorReader(tmp_path / "eval" / "descriptors" / "query.h5")) == 10
    assert len(DescriptorReader(tmp_path / "eval" / "descriptors" / "reference.h5")) == 16


def test_multiscale_features_are_the_normalised_mean_of_single_scale_runs(tmp_path, tiny_demo):
    import torch

    from embedlab.descriptors import read_descriptors
    from embedlab.evaluation.embed import embed_to_file
    from embedlab.evaluation.multiscale import embed_multiscale
    from embedlab.images import list_images
    from embedlab.models.backbone import DescriptorModel, DescriptorSpec

    torch.manual_seed(0)
    model = DescriptorModel(DescriptorSpec("test_resnet", 32, 3.0, 48)).eval()
    paths = list_images(tiny_demo / "disc" / "query")[:6]
    embed_multiscale(model, paths, tmp_path / "multi.h5", [32, 64], progress=False)
    single = []
    for size in (32, 64):
        embed_to_file(model, paths, tmp_path / f"single{size}.h5", size, progress=False)
        single.append(read_descriptors(tmp_path / f"single{size}.h5")[1])
    names, multi = read_descriptors(tmp_path / "multi.h5")
    mean = single[0] + single[1]
    assert names == [p.stem for p in paths]
    np.testing.assert_allclose(multi, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(single[0], single[1], atol=1e-3)  # the sizes do differ
    assert sorted(p.name for p in tmp_path.glob("multi*")) == ["multi.h5"]  # the per-size files are gone
