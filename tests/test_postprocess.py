"""Descriptor post-processing: whitening, score normalisation, stretching, ensembles, files and CLI."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json

import h5py
import numpy as np
import pytest

from embedlab.descriptors import DescriptorFileError, read_descriptors, write_descriptors
from embedlab.postprocess.cli import add_parser
from embedlab.postprocess.ensemble import concat_blocks, read_blocks
from embedlab.postprocess.pipeline import PostprocessConfig, postprocess, postprocess_files
from embedlab.postprocess.score_normalization import normalize_scores
from embedlab.postprocess.stretching import stretch_queries
from embedlab.postprocess.whitening import Whitening, WhiteningFileError, fit_whitening
from embedlab.retrieval import knn_search
from embedlab.evaluation.disc_search import evaluate_disc


def _unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _anisotropic(n, d, seed=0):
    """Gaussian descriptors with very different variances along random directions, off-centre."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.geomspace(3.0, 0.05, d)
    return (rng.standard_normal((n, d)) * scales @ rotation.T + rng.standard_normal(d)).astype(np.float32)


def _names(prefix, n, width):
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


# ---------------------------------------------------------------- whitening


def test_whitening_gives_identity_covariance_on_kept_dims():
    train = _anisotropic(3000, 16)
    w = fit_whitening(train, dim=6)
    out = w.apply(train, normalize=False)
    assert out.shape == (3000, 6) and out.dtype == np.float32
    np.testing.assert_allclose(np.cov(out.T), np.eye(6), atol=2e-3)
    # The kept dims are the top principal directions, in order.
    top = np.sort(np.linalg.eigvalsh(np.cov(train.T.astype(np.float64))))[::-1][:6]
    np.testing.assert_allclose(w.eigenvalues, top, rtol=1e-6)
    # Power 0 is a plain PCA projection: variances are the eigenvalues.
    pca = fit_whitening(train, dim=6, power=0.0).apply(train, normalize=False)
    np.testing.assert_allclose(np.var(pca, axis=0, ddof=1), top, rtol=1e-3)
    # Default output is L2-normalised; default dim keeps everything.
    np.testing.assert_allclose(np.linalg.norm(w.apply(train[:10]), axis=1), 1.0, atol=1e-6)
    assert fit_whitening(train).dim == 16


def test_whitening_save_load_roundtrip(tmp_path):
    train = _anisotropic(500, 8)
    w = fit_whitening(train, dim=5, power=0.25)
    w.save(tmp_path / "w.safetensors")
    back = Whitening.load(tmp_path / "w.safetensors")
    assert (back.dim_in, back.dim, back.power, back.n_train) == (8, 5, 0.25, 500)
    np.testing.assert_array_equal(back.apply(train), w.apply(train))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WhiteningFileError, match="bad.safetensors"):
        Whitening.load(tmp_path / "bad.safetensors")
    with pytest.raises(WhiteningFileError, match="file not found"):
        Whitening.load(tmp_path / "missing.safetensors")


def test_whitening_errors():
    train = _anisotropic(100, 8)
    with pytest.raises(ValueError, match="dim 9 exceeds the training descriptors' dimension 8"):
        fit_whitening(train, dim=9)
    with pytest.raises(ValueError, match="needs more than 8 training descriptors, got 8"):
        fit_whitening(train[:8], dim=8)
    bad = train.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="training descriptors: 1 of 100 descriptors contain NaN"):
        fit_whitening(bad, dim=4)
    w = fit_whitening(train, dim=4)
    with pytest.raises(ValueError, match="query: dimension 7 differs from the 8"):
        w.apply(train[:, :7], what="query")
    with pytest.raises(ValueError, match="query: 1 of 100"):
        w.apply(bad, what="query")
    degenerate = np.hstack([train[:, :3], train[:, :3]])  # spans 3 dims only
    with pytest.raises(ValueError, match="span only 3 dimensions"):
        fit_whitening(degenerate, dim=5)


# ---------------------------------------------------------------- score normalisation and stretching


def _hub_case(d=64, seed=0):
    """Sparse references with noisy copies as queries, plus "hub" queries near a dense training cluster.

    The hub queries have no match, but their nearest references (distractors
    in the same cluster) score higher than the true copies do.
    """
    rng = np.random.default_rng(seed)
    hub = _unit(rng.standard_normal((1, d)))
    near_hub = lambda n, s: _unit(hub + s * rng.standard_normal((n, d)))  # noqa: E731
    train = np.vstack([_unit(rng.standard_normal((300, d))), near_hub(60, 0.06)])
    refs = np.vstack([_unit(rng.standard_normal((30, d))), near_hub(10, 0.05)])
    true_q = _unit(refs[:10] + 0.11 * rng.standard_normal((10, d)))  # cos ~ 0.75 with their reference
    hub_q = near_hub(10, 0.05)  # cos ~ 0.85 with the distractors
    query = np.vstack([true_q, hub_q])
    q_names, r_names = _names("Q", 20, 5), _names("R", 40, 6)
    gt = [(q_names[i], r_names[i]) for i in range(10)]
    return query, refs, train, q_names, r_names, gt


def _write_case(tmp_path, query, refs, train, q_names, r_names, gt):
    write_descriptors(tmp_path / "q.h5", q_names, query)
    write_descriptors(tmp_path / "r.h5", r_names, refs)
    write_descriptors(tmp_path / "t.h5", _names("T", len(train), 6), train)
    with open(tmp_path / "gt.csv", "w", newline="") as f:
        csv.writer(f).writerows([("query_id", "reference_id"), *gt])


def _mean_top(x, train, n):
    return np.sort(x.astype(np.float64) @ train.T.astype(np.float64), axis=1)[:, ::-1][:, :n].mean(axis=1)


def test_score_normalisation_scores_equal_hand_computed():
    query, refs, train, *_ = _hub_case()
    q2, r2, offsets = normalize_scores(query, refs, train, factor=2.0, n=10, device="cpu")
    assert q2.shape == (20, 65) and r2.shape == (40, 65)
    expected = query.astype(np.float64) @ refs.T - 2.0 * _mean_top(query, train, 10)[:, None]
    np.testing.assert_allclose(offsets, 2.0 * _mean_top(query, train, 10), atol=1e-6)
    scores, idx = knn_search(q2, r2, k=40, device="cpu")
    np.testing.assert_allclose(scores, np.take_along_axis(expected, idx, axis=1), atol=1e-5)
    np.testing.assert_array_equal(idx[:, 0], expected.argmax(axis=1))


@pytest.mark.parametrize("step", ["score_norm", "stretch"])
def test_hub_false_positives_are_demoted(tmp_path, step):
    case = _hub_case()
    _write_case(tmp_path, *case)
    raw = evaluate_disc(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "gt.csv", tmp_path / "eval_raw", k=3,
                        device="cpu")
    cfg = (PostprocessConfig(whiten=False, score_norm_factor=2.0, score_norm_n=10, device="cpu") if step == "score_norm"
           else PostprocessConfig(whiten=False, score_norm_factor=0, stretch_factor=2.5, stretch_n=5, device="cpu"))
    q_out, r_out, summary = postprocess_files([tmp_path / "q.h5"], [tmp_path / "r.h5"], [tmp_path / "t.h5"],
                                              tmp_path / "pp", cfg)
    after = evaluate_disc(q_out, r_out, tmp_path / "gt.csv", tmp_path / "eval_pp", k=3, device="cpu")
    assert raw["uAP"] < 0.5  # the hubs' distractors outrank every true copy
    assert after["uAP"] > 0.99 and after["recall_at_rank1"] == raw["recall_at_rank1"] == 1.0
    if step == "score_norm":  # evaluate_disc's scores are exactly the normalised ones
        query, refs, train, q_names, r_names, _ = case
        expected = query.astype(np.float64) @ refs.T - 2.0 * _mean_top(query, train, 10)[:, None]
        with open(tmp_path / "eval_pp" / "predictions.csv") as f:
            for row in csv.DictReader(f):
                want = expected[q_names.index(row["query_id"]), r_names.index(row["reference_id"])]
                assert float(row["score"]) == pytest.approx(want, abs=1e-5)


def test_stretching_keeps_within_query_ranking_and_demotes_dense_queries():
    query, refs, train, *_ = _hub_case()
    stretched, scales = stretch_queries(query, train, factor=2.5, n=5, device="cpu")
    np.testing.assert_allclose(scales, np.exp(-2.5 * _mean_top(query, train, 5)), rtol=1e-5)
    before, after = query @ refs.T, stretched @ refs.T
    np.testing.assert_array_equal(np.argsort(-before, axis=1), np.argsort(-after, axis=1))
    np.testing.assert_array_equal(np.sign(before), np.sign(after))
    np.testing.assert_allclose(after, before * scales[:, None].astype(np.float32), rtol=1e-5, atol=1e-7)
    # Dense-neighbourhood (hub) queries are scaled down more than every sparse one ...
    assert scales[10:].max() < scales[:10].min()
    # ... so the hubs' best scores move from above the true copies' to below them.
    assert before[10:].max(axis=1).min() > before[:10].max(axis=1).max()
    assert after[10:].max(axis=1).max() < after[:10].max(axis=1).min()
    same, ones = stretch_queries(query, train, factor=0.0, n=5, device="cpu")
    np.testing.assert_array_equal(same, query)
    assert (ones == 1).all()


# ---------------------------------------------------------------- ensemble


def test_concat_blocks_order_and_weights():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 4)) * 3, rng.standard_normal((5, 3))
    out = concat_blocks([a, b], weights=[1.0, 2.0])
    expected = np.hstack([_unit(a), 2 * _unit(b)]) / np.sqrt(5.0)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(concat_blocks([b, a])[:, :3], _unit(b) / np.sqrt(2), atol=1e-6)
    with pytest.raises(ValueError, match="different numbers of descriptors"):
        concat_blocks([a, b[:4]])
    with pytest.raises(ValueError, match="2 ensemble weights for 1 models"):
        concat_blocks([a], weights=[1, 1])


def test_ensemble_files_must_list_the_same_images(tmp_path):
    rng = np.random.default_rng(2)
    names = _names("Q", 4, 5)
    write_descriptors(tmp_path / "m1.h5", names, rng.standard_normal((4, 8)))
    write_descriptors(tmp_path / "m2.h5", names, rng.standard_normal((4, 6)))
    write_descriptors(tmp_path / "m3.h5", [names[1], names[0], *names[2:]], rng.standard_normal((4, 6)))
    got_names, blocks = read_blocks([tmp_path / "m1.h5", tmp_path / "m2.h5"], "query")
    assert got_names == names and [b.shape[1] for b in blocks] == [8, 6]
    with pytest.raises(DescriptorFileError, match="image 0 is 'Q00001' but 'Q00000'") as err:
        read_blocks([tmp_path / "m1.h5", tmp_path / "m3.h5"], "query")
    assert str(tmp_path / "m3.h5") in str(err.value) and str(tmp_path / "m1.h5") in str(err.value)


# ---------------------------------------------------------------- pipeline, files, CLI


def test_postprocess_arrays_order_of_steps():
    rng = np.random.default_rng(3)
    train = [_anisotropic(400, 16, seed=4), _anisotropic(400, 8, seed=5)]
    query = [rng.standard_normal((7, 16)), rng.standard_normal((7, 8))]
    ref = [rng.standard_normal((9, 16)), rng.standard_normal((9, 8))]
    cfg = PostprocessConfig(whiten_dim=10, stretch_factor=2.5, score_norm_factor=2.0, device="cpu")
    q, r, info = postprocess(query, ref, train, cfg)
    assert (info.n_models, info.dim_in, info.dim_out, q.shape, r.shape) == (2, 24, 11, (7, 11), (9, 11))
    t_white = info.whitening.apply(concat_blocks(train))
    q_white = info.whitening.apply(concat_blocks(query))
    np.testing.assert_allclose(q[:, :10], q_white * info.stretch_scales[:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info.stretch_scales, np.exp(-2.5 * _mean_top(q_white, t_white, 5)), rtol=1e-4)
    np.testing.assert_allclose(-q[:, 10], 2.0 * _mean_top(q[:, :10], t_white, 10), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(r[:, 10], 1.0)
    with pytest.raises(ValueError, match="need training descriptors"):
        postprocess(query, ref, None, cfg)
    with pytest.raises(ValueError, match=r"model 2: descriptor dimensions differ"):
        postprocess(query, [ref[0], ref[1][:, :5]], train, cfg)
    with pytest.raises(ValueError, match="stretch_factor must be >= 0"):
        PostprocessConfig(stretch_factor=-1)


def _two_model_files(tmp_path, train_dims=(16, 8)):
    rng = np.random.default_rng(6)
    q_names, r_names, t_names = _names("Q", 12, 5), _names("R", 30, 6), _names("T", 200, 6)
    paths = {"query": [], "reference": [], "train": []}
    for m, d in enumerate((16, 8)):
        for role, names, dim in (("query", q_names, d), ("reference", r_names, d), ("train", t_names, train_dims[m])):
            path = tmp_path / f"{role}_m{m + 1}.h5"
            write_descriptors(path, names, _unit(rng.standard_normal((len(names), dim))))
            paths[role].append(path)
    return paths, q_names, r_names


def test_postprocess_files_roundtrip_and_cli(tmp_path, capsys):
    paths, q_names, r_names = _two_model_files(tmp_path)
    parser = argparse.ArgumentParser(prog="embedlab")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["postprocess", "--query", *map(str, paths["query"]),
                              "--reference", *map(str, paths["reference"]), "--train", *map(str, paths["train"]),
                              "--out", str(tmp_path / "out"), "--whiten-dim", "12", "--score-norm-n", "5",
                              "--stretch-factor", "1.5", "--stretch-n", "3", "--device", "cpu"])
    summary = args.func(args)
    assert "Descriptor post-processing" in capsys.readouterr().out
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["postprocess.json", "query.h5", "reference.h5",
                                                     "whitening.safetensors"]
    for name, names, n in (("query.h5", q_names, 12), ("reference.h5", r_names, 30)):
        with h5py.File(out / name) as f:
            assert sorted(f.keys()) == ["image_names", "vectors"]
            assert f["vectors"].dtype == np.float32 and f["vectors"].shape == (n, 13)
        assert read_descriptors(out / name)[0] == names
    assert json.loads((out / "postprocess.json").read_text()) == summary
    assert summary["dim_in"] == 24 and summary["dim_out"] == 13 and summary["inner_product_only"]
    # The saved whitening reproduces the reference output (references are never stretched).
    w = Whitening.load(out / "whitening.safetensors")
    refs = concat_blocks([read_descriptors(p)[1] for p in paths["reference"]])
    np.testing.assert_allclose(read_descriptors(out / "reference.h5")[1][:, :12], w.apply(refs), atol=1e-6)


def test_postprocess_files_bad_train_file_writes_nothing(tmp_path):
    paths, *_ = _two_model_files(tmp_path, train_dims=(16, 10))
    out = tmp_path / "out"
    with pytest.raises(DescriptorFileError, match="descriptor dimension 10 differs from 8") as err:
        postprocess_files(paths["query"], paths["reference"], paths["train"], out, PostprocessConfig(device="cpu"))
    assert str(paths["train"][1]) in str(err.value)
    assert not out.exists()
    # A whitening the training set cannot support: the training files are named, nothing written.
    paths, *_ = _two_model_files(tmp_path / "b")
    with pytest.raises(DescriptorFileError, match="whitening dim 300 exceeds the training .* dimension 24") as err:
        postprocess_files(paths["query"], paths["reference"], paths["train"], out,
                          PostprocessConfig(whiten_dim=300, device="cpu"))
    assert str(paths["train"][0]) in str(err.value)
    assert not out.exists()


def test_training_set_normalisation_by_hand_on_five_vectors():
    """x' = x + factor · sqrt(mean of the top-k cosines) · d, d the normalised mean of the unit directions from
    the n nearest training descriptors to x; then L2. By loops over five vectors."""
    from embedlab.postprocess.training_set_normalization import push_from_training_set

    rng = np.random.default_rng(3)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    x, train = unit(rng.standard_normal((5, 4))), unit(rng.standard_normal((7, 4)))
    expected = []
    for row in x:
        cosines = train @ row
        nearest = np.argsort(-cosines)[:3]
        strength = 1.8 * np.sqrt(max(0.0, cosines[nearest[:2]].mean()))
        d = unit(np.mean([unit(row - train[j]) for j in nearest], axis=0))
        expected.append(unit(row + strength * d))
    got = push_from_training_set(x.astype(np.float32), train.astype(np.float32), 1.8, n=3, top=2, device="cpu")
    np.testing.assert_allclose(got, np.array(expected), atol=1e-5)
    assert not np.allclose(got, x, atol=1e-2)  # every vector moved


def test_training_set_normalisation_in_the_pipeline_moves_queries_and_references_alike():
    rng = np.random.default_rng(4)
    q, r, t = (rng.standard_normal((n, 8)).astype(np.float32) for n in (6, 6, 20))
    cfg = PostprocessConfig(whiten=False, score_norm_factor=0.0, train_norm_factor=1.8, train_norm_n=5,
                            train_norm_top=3, device="cpu")
    q2, r2, _ = postprocess(q, q.copy(), t, cfg)  # references equal to the queries stay equal to them
    np.testing.assert_allclose(q2, r2, atol=1e-6)
    plain, _, _ = postprocess(q, r, t, dataclasses.replace(cfg, train_norm_factor=0.0))
    assert not np.allclose(q2, plain, atol=1e-3)


def test_an_ensemble_pattern_names_every_evaluated_run_of_the_gem_matrix(tmp_path):
    from embedlab.stages.ensemble import expand_members

    for run in ("gem/imagenet/big", "gem/imagenet/bw", "gem/scratch/big", "drip/s3"):
        (tmp_path / run / "eval" / "descriptors").mkdir(parents=True)
    (tmp_path / "gem/scratch/bw").mkdir(parents=True)  # not evaluated (yet): left out
    assert expand_members(["drip/s3", "gem/*/*"], tmp_path) == [
        "drip/s3", "gem/imagenet/big", "gem/imagenet/bw", "gem/scratch/big"]
    assert expand_members(["gem/*/big"], tmp_path) == ["gem/imagenet/big", "gem/scratch/big"]
    with pytest.raises(FileNotFoundError, match=r"'gem/byol/\*': no evaluated run"):
        expand_members(["gem/byol/*"], tmp_path)
