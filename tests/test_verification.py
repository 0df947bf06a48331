"""Verification metrics (EER, TPR@FPR, ROC AUC, ROC curve) against hand cases and sklearn."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn import metrics as skm

from embedlab.verification import (
    eer,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    verification_report,
    write_roc,
)


def _pairs(genuine, impostor):
    scores = np.concatenate([genuine, impostor]).astype(float)
    same = np.concatenate([np.ones(len(genuine), int), np.zeros(len(impostor), int)])
    return scores, same


def _random_pairs(seed: int, n_genuine: int = 2000, n_impostor: int = 5000, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    scores, same = _pairs(rng.normal(1.5, 1.0, n_genuine), rng.normal(0.0, 1.0, n_impostor))
    if decimals is not None:  # coarse scores: many ties between and within classes
        scores = scores.round(decimals)
    perm = rng.permutation(scores.size)
    return scores[perm], same[perm]


def _reference_eer(scores, same) -> float:
    """Independent: walk sklearn's full ROC polyline, intersect each segment with FNR = FPR."""
    fpr, tpr, _ = skm.roc_curve(same, scores, drop_intermediate=False)
    fnr = 1 - tpr
    for i in range(1, len(fpr)):
        d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
        if d0 >= 0 >= d1:
            if d0 == d1:
                return fnr[i]
            w = d0 / (d0 - d1)
            return fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    raise AssertionError("no crossing")


# ---------------------------------------------------------------- EER by hand

def test_perfect_separation_is_zero():
    rate, threshold = eer(*_pairs([0.9, 0.8, 0.7], [0.3, 0.2, 0.1, 0.0]))
    assert rate == 0.0
    assert 0.3 < threshold <= 0.7


@pytest.mark.parametrize("values", [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4], [0.5]])
def test_identical_distributions_are_one_half(values):
    # Odd counts too, and one constant score: the interpolated EER is exactly 0.5.
    assert eer(*_pairs(values, values))[0] == pytest.approx(0.5, abs=1e-12)
    assert eer(*_pairs([0.5] * 3, [0.5] * 7))[0] == pytest.approx(0.5, abs=1e-12)


def test_identical_large_distributions_are_one_half():
    values = np.random.default_rng(0).normal(size=1001)
    assert eer(*_pairs(values, np.random.default_rng(1).permutation(values)))[0] == pytest.approx(0.5, abs=1e-12)


def test_known_crossing_on_a_threshold():
    # Ranked: .9G .8G .7I .6G .5I .4I .3G .2I. Accepting >= .6: 3 of 4 genuine
    # (FNR 1/4), 1 of 4 impostors (FPR 1/4) -> EER 0.25 at threshold 0.6.
    rate, threshold = eer(*_pairs([0.9, 0.8, 0.6, 0.3], [0.7, 0.5, 0.4, 0.2]))
    assert rate == pytest.approx(0.25)
    assert threshold == 0.6


def test_known_crossing_between_thresholds_is_interpolated():
    # Ranked: .9G .8I .7G .4G .3I (3 genuine, 2 impostors). (FPR, FNR):
    # >= .8: (1/2, 2/3), FNR − FPR = +1/6; >= .7: (1/2, 1/3), −1/6.
    # The crossing is halfway: FNR = FPR = 1/2 (the discrete "FNR at argmin" says 2/3).
    rate, threshold = eer(*_pairs([0.9, 0.7, 0.4], [0.8, 0.3]))
    assert rate == pytest.approx(0.5)
    assert threshold == 0.8  # |FNR − FPR| ties: the higher threshold
    # Ranked: .9G .8G .5I .4I .1G: from (FPR 0, FNR 1/3) to (1/2, 1/3): crossing at 1/3.
    assert eer(*_pairs([0.9, 0.8, 0.1], [0.5, 0.4]))[0] == pytest.approx(1 / 3)


def test_inverted_scores_are_one():
    assert eer(*_pairs([0.1, 0.2], [0.8, 0.9, 0.95]))[0] == pytest.approx(1.0)
    # Flipping the sign of any scores maps EER e to 1 − e.
    scores, same = _random_pairs(3, 300, 400)
    assert eer(-scores, same)[0] == pytest.approx(1 - eer(scores, same)[0], abs=1e-12)


def test_eer_is_a_rate_and_labels_are_not_inverted():
    # The original returned the threshold and swapped the labels: scores far from [0, 1] expose both.
    scores, same = _pairs([105.0, 104.0, 103.0, 100.5], [101.0, 100.0, 99.0, 98.0])
    # Ranked: 105G 104G 103G 101I 100.5G ...: accepting >= 101 gives FNR = FPR = 1/4.
    rate, threshold = eer(scores, same)
    assert rate == pytest.approx(0.25)
    assert threshold == 101.0


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, None), (2, 1), (3, 0)])
def test_eer_matches_the_polyline_reference(seed, decimals):
    scores, same = _random_pairs(seed, 500, 800, decimals)
    rate, threshold = eer(scores, same)
    assert rate == pytest.approx(_reference_eer(scores, same), abs=1e-12)
    # Within one step of the discrete challenge metric, FNR at argmin |FNR − FPR|...
    fpr, tpr, thr = skm.roc_curve(same, scores, drop_intermediate=False)
    n_genuine, n_impostor = same.sum(), (1 - same).sum()
    scaled = np.abs((1 - tpr - fpr) * n_genuine * n_impostor).round()  # integers: float ties made exact
    i = np.argmin(scaled)
    assert abs(rate - (1 - tpr[i])) <= max(np.diff(fpr).max(), np.diff(tpr).max()) + 1e-12
    # ...whose threshold is the one returned.
    assert threshold == thr[i]


# ---------------------------------------------------------------- against sklearn

@pytest.mark.parametrize("seed,decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_roc_curve_matches_sklearn(seed, decimals):
    scores, same = _random_pairs(seed, 300, 700, decimals)
    fpr, tpr, thr = roc_curve(scores, same)
    ref = skm.roc_curve(same, scores, drop_intermediate=False)
    for ours, theirs in zip((fpr, tpr, thr), ref):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, None), (2, 1), (3, 2)])
@pytest.mark.parametrize("target", [1e-2, 1e-3])
def test_tpr_at_fpr_matches_sklearn(seed, decimals, target):
    scores, same = _random_pairs(seed, decimals=decimals)
    tpr, threshold = tpr_at_fpr(scores, same, target)
    ref_fpr, ref_tpr, _ = skm.roc_curve(same, scores)
    assert tpr == pytest.approx(ref_tpr[ref_fpr <= target].max(), abs=1e-12)
    # The threshold is a real operating point with that TPR and FPR <= target.
    accepted = scores >= threshold
    assert accepted[same == 0].mean() <= target
    assert accepted[same == 1].mean() == pytest.approx(tpr)


def test_tpr_at_fpr_when_no_impostor_may_pass():
    # Best impostor above every genuine pair: only "accept nothing" has FPR <= 1e-2.
    tpr, threshold = tpr_at_fpr(*_pairs([0.5, 0.4], [0.9] + [0.0] * 9), 1e-2)
    assert tpr == 0.0 and threshold == np.inf
    with pytest.raises(ValueError, match="target FPR"):
        tpr_at_fpr(*_pairs([0.5], [0.4]), 1.5)


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 1), (2, 0)])
def test_roc_auc_matches_sklearn_with_ties(seed, decimals):
    scores, same = _random_pairs(seed, 400, 600, decimals)
    assert roc_auc(scores, same) == pytest.approx(skm.roc_auc_score(same, scores), abs=1e-12)


def test_roc_auc_counts_ties_half():
    assert roc_auc(*_pairs([0.5], [0.5])) == pytest.approx(0.5)
    # 2×2 pairs: (.9 > .5), (.9 > .1), (.5 = .5: half), (.5 > .1) -> 3.5 / 4.
    assert roc_auc(*_pairs([0.9, 0.5], [0.5, 0.1])) == pytest.approx(3.5 / 4)


def test_large_input_is_fast():
    scores, same = _random_pairs(0, 100_000, 300_000)
    start = time.perf_counter()
    verification_report(scores, same)
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------- report and per-kind EERs

def test_report_keys_and_values():
    scores, same = _random_pairs(5, 300, 500)
    report = verification_report(scores, same)
    assert set(report) == {"eer", "eer_threshold", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "roc_auc",
                           "n_genuine", "n_impostor"}
    assert (report["eer"], report["eer_threshold"]) == eer(scores, same)
    assert report["tpr_at_fpr_1e-2"] == tpr_at_fpr(scores, same, 1e-2)[0]
    assert report["tpr_at_fpr_1e-3"] == tpr_at_fpr(scores, same, 1e-3)[0]
    assert report["roc_auc"] == roc_auc(scores, same)
    assert (report["n_genuine"], report["n_impostor"]) == (300, 500)


def test_per_kind_eers_find_an_encoder_fooled_by_deepfakes():
    rng = np.random.default_rng(0)
    genuine = rng.uniform(0.6, 0.9, 200)
    fakes = rng.permutation(genuine)  # deepfakes of the same person: as close as the real photos
    others = rng.uniform(0.0, 0.3, 400)  # other people: well apart
    scores = np.concatenate([genuine, fakes, others])
    same = np.r_[np.ones(200), np.zeros(600)].astype(int)
    kind = ["genuine"] * 200 + ["fake_same_person"] * 200 + ["other_person"] * 400
    report = verification_report(scores, same, kind)
    assert report["eer_fake_same_person"] == pytest.approx(0.5, abs=1e-12)
    assert report["eer_other_person"] == 0.0
    assert 0.0 < report["eer"] < 0.5
    assert (report["n_fake_same_person"], report["n_other_person"]) == (200, 400)
    # Without fakes in the pairs: that EER is None, the other still computed.
    report = verification_report(np.r_[genuine, others], np.r_[np.ones(200), np.zeros(400)], kind[:200] + kind[400:])
    assert report["eer_fake_same_person"] is None and report["n_fake_same_person"] == 0
    assert report["eer_other_person"] == 0.0


def test_kind_must_agree_with_same():
    scores, same = _pairs([0.9, 0.8], [0.1, 0.2])
    with pytest.raises(ValueError, match="disagreement"):
        verification_report(scores, same, ["genuine", "other_person", "other_person", "other_person"])
    with pytest.raises(ValueError, match="unknown pair kinds"):
        verification_report(scores, same, ["genuine", "genuine", "fake", "other_person"])
    with pytest.raises(ValueError, match="same length"):
        verification_report(scores, same, ["genuine", "genuine", "other_person"])


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("scores,same,message", [
    ([], [], "empty"),
    ([0.1, 0.2], [1, 1], "one class"),
    ([0.1, 0.2], [0, 0], "one class"),
    ([0.1, float("nan"), 0.3], [1, 0, 0], "NaN"),
    ([0.1, float("inf")], [1, 0], "NaN or infinite"),
    ([0.1, 0.2, 0.3], [1, 0], "same length"),
    ([0.1, 0.2], [1, 2], "0/1"),
    ([[0.1, 0.2]], [[1, 0]], "1-D"),
])
def test_clear_errors(scores, same, message):
    for metric in (eer, roc_auc, roc_curve, verification_report, lambda s, y: tpr_at_fpr(s, y, 1e-2)):
        with pytest.raises(ValueError, match=message):
            metric(scores, same)


def test_boolean_labels_are_accepted():
    scores, same = _pairs([0.9, 0.6], [0.7, 0.1])
    assert eer(scores, same.astype(bool)) == eer(scores, same)


# ---------------------------------------------------------------- ROC files

@pytest.mark.parametrize("log_x", [False, True])
def test_write_roc_downsamples_and_writes_atomically(tmp_path, log_x):
    scores, same = _random_pairs(0, 3000, 9000)
    csv_path, png_path = write_roc(scores, same, tmp_path / "roc", log_x=log_x)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "fpr,tpr,threshold"
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert 500 < len(rows) <= 1000
    assert rows[0].tolist() == [0.0, 0.0, np.inf] and rows[-1, :2].tolist() == [1.0, 1.0]
    assert (np.diff(rows[:, 0]) >= 0).all() and (np.diff(rows[:, 2]) < 0).all()
    # The low-FPR end (TPR@FPR 1e-3) keeps its resolution: points below FPR 1e-3.
    assert (rows[:, 0] <= 1e-3).sum() >= 10
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "roc").iterdir()) == ["roc.csv", "roc.png"]  # no temporaries


def test_write_roc_keeps_small_curves_whole(tmp_path):
    scores, same = _pairs([0.9, 0.8, 0.6, 0.3], [0.7, 0.5, 0.4, 0.2])
    csv_path, _ = write_roc(scores, same, tmp_path)
    assert len(csv_path.read_text().splitlines()) == 1 + 9


def test_pair_pictures_show_each_impostor_kind(tmp_path):
    from PIL import Image

    from embedlab.evaluation.pair_pictures import ROC_BY_KIND_PNG, SCORES_PNG, write_pair_pictures

    rng = np.random.default_rng(0)
    kinds = np.array(["genuine"] * 300 + ["fake_same_person"] * 300 + ["other_person"] * 300)
    scores = np.r_[rng.normal(0.7, 0.1, 300), rng.normal(0.55, 0.1, 300), rng.normal(0.1, 0.1, 300)]
    same = (kinds == "genuine").astype(int)
    written = write_pair_pictures(scores, same, kinds, tmp_path, "triplet/finetune test")
    assert [p.name for p in written] == [SCORES_PNG, ROC_BY_KIND_PNG]
    assert [Image.open(path).size for path in written] == [(600, 360), (500, 400)]
    # Without kinds: genuine against all impostors.
    assert len(write_pair_pictures(scores, same, None, tmp_path / "plain", "x")) == 2
