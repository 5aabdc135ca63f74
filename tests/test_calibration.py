"""Calibration math against independent peers: torchmetrics and scikit-learn."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve, roc_curve
from torchmetrics.functional.classification import binary_calibration_error

from deepfake_lightning.calibration import (
    CalibrationState,
    Calibrator,
    adapt_threshold,
    bbse_prior,
    calibration_metrics,
    choose_threshold,
    em_prior,
    fit_temperature,
    joint_confusion,
    label_shift_report,
    plot_reliability,
    sigmoid,
)


@pytest.fixture(scope="module")
def overconfident():
    rng = np.random.default_rng(0)
    z_true = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < sigmoid(z_true)).astype(int)
    return 2.5 * z_true, y


def test_temperature_recovers_the_scale_and_matches_scikit_learn(overconfident):
    z, y = overconfident
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.05)
    # temperature scaling is a logistic regression on the logit without intercept: its weight is 1 / T
    peer = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-10, max_iter=1000).fit(z[:, None], y)
    assert t == pytest.approx(1.0 / float(peer.coef_[0, 0]), rel=1e-4)
    # the optimum: the NLL gradient in w = 1/T vanishes
    assert abs(np.dot(sigmoid(z / t) - y, z) / len(z)) < 1e-8
    before, after = calibration_metrics(sigmoid(z), y)["ece"], calibration_metrics(sigmoid(z / t), y)["ece"]
    assert before >= 0.11 and after <= 0.015


def test_temperature_refuses_anti_correlated_logits(overconfident):
    z, y = overconfident
    with pytest.raises(ValueError, match="<= 0"):
        fit_temperature(-z, y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_equals_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(3000)
    p[:10] = [0.0, 1.0, 1 / 15, 2 / 15, 0.5, 14 / 15, 1e-9, 1 - 1e-9, 0.2, 0.4]  # bin edges and extremes
    y = (rng.random(3000) < p**1.5).astype(int)
    ours = calibration_metrics(p, y)["ece"]
    assert ours == pytest.approx(binary_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=15).item(), abs=1e-6)


def test_platt_and_isotonic_reduce_nll(overconfident):
    z, y = overconfident
    raw = calibration_metrics(sigmoid(z), y)["nll"]
    for method in ("platt", "isotonic", "temperature"):
        cal = Calibrator.fit(z, y, method)
        assert calibration_metrics(cal(z), y)["nll"] < raw - 0.1
        again = Calibrator.from_state_dict(cal.state_dict())
        assert np.array_equal(again(z[:100]), cal(z[:100]))
    a, _ = Calibrator.fit(z, y, "platt").platt
    assert a == pytest.approx(0.4, rel=0.05)


@pytest.mark.parametrize("seed", [0, 1])
def test_f1_and_youden_thresholds_equal_sklearn_argmax(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(2000) < 0.3).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(3)  # rounded: many ties
    precision, recall, thr = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    assert choose_threshold(p, y, "f1") == thr[np.argmax(f1[:-1])]
    fpr, tpr, thr = roc_curve(y, p)
    assert choose_threshold(p, y, "youden") == thr[np.argmax(tpr - fpr)]
    # brute force: no threshold among the scores beats the chosen one
    best_f1 = max(_f1(y, p >= t) for t in np.unique(p))
    assert _f1(y, p >= choose_threshold(p, y, "f1")) == pytest.approx(best_f1)


def _f1(y, pred):
    tp = np.sum(pred & (y == 1))
    return 2 * tp / (np.sum(pred) + np.sum(y == 1))


def test_eer_target_fpr_and_fixed():
    rng = np.random.default_rng(3)
    y = (rng.random(5000) < 0.5).astype(int)
    p = sigmoid(rng.normal(2 * y - 1, 1.0))
    t = choose_threshold(p, y, "eer")
    fpr, fnr = np.mean(p[y == 0] >= t), np.mean(p[y == 1] < t)
    assert abs(fpr - fnr) < 0.01
    t5 = choose_threshold(p, y, "target_fpr=0.05")
    assert np.mean(p[y == 0] >= t5) <= 0.05
    next_lower = p[p < t5].max()
    assert np.mean(p[y == 0] >= next_lower) > 0.05  # the loosest such threshold
    assert choose_threshold(p, y, "fixed=0.7") == 0.7
    with pytest.raises(ValueError, match="unknown threshold criterion"):
        choose_threshold(p, y, "accuracy")


def _scores(n, share, rng):
    """Calibrated probabilities for x|y ~ N(+-1.5, 1.5^2) at a given AI share."""
    y = np.zeros(n, dtype=int)
    y[: round(n * share)] = 1  # exactly this share
    rng.shuffle(y)
    x = rng.normal(np.where(y == 1, 1.5, -1.5), 1.5)
    llr = 2 * 1.5 * x / 1.5**2  # log N(x; 1.5) - log N(x; -1.5)
    return sigmoid(llr), y  # the Bayes posterior at a 50 % prior: calibrated for the validation set


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5, 0.8])
def test_em_prior_estimates_the_ai_share(share):
    rng = np.random.default_rng(int(share * 100))
    p_val, y_val = _scores(5000, 0.5, rng)
    p_test, _ = _scores(5000, share, rng)
    est = em_prior(p_test, source_prior=p_val.mean())
    assert est.converged and est.iterations <= 100
    assert abs(est.share - share) <= 0.03


def test_em_on_the_validation_set_itself_gives_no_shift():
    p_val, _ = _scores(5000, 0.5, np.random.default_rng(7))
    est = em_prior(p_val, source_prior=p_val.mean())
    assert abs(est.share - p_val.mean()) <= 1e-6
    assert adapt_threshold(0.5, p_val.mean(), est.share) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize(("share", "min_gain", "max_change"), [(0.2, 0.03, None), (0.5, None, 0.005)])
def test_adapted_threshold_accuracy(share, min_gain, max_change):
    rng = np.random.default_rng(11)
    p_val, _ = _scores(5000, 0.5, rng)
    p_test, y_test = _scores(5000, share, rng)
    prior = p_val.mean()
    t = adapt_threshold(0.5, prior, em_prior(p_test, prior).share)
    plain, adapted = np.mean((p_test >= 0.5) == y_test), np.mean((p_test >= t) == y_test)
    if min_gain is not None:
        assert adapted - plain >= min_gain
    if max_change is not None:
        assert abs(adapted - plain) <= max_change


def test_bbse_agrees_with_em_under_label_shift():
    rng = np.random.default_rng(5)
    p_val, y_val = _scores(5000, 0.5, rng)
    p_test, _ = _scores(5000, 0.2, rng)
    c = joint_confusion(p_val >= 0.5, y_val)
    assert c.sum() == pytest.approx(1.0) and c[:, 1].sum() == pytest.approx(0.5)
    assert abs(bbse_prior(c, p_test >= 0.5) - 0.2) <= 0.03


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5, 0.8])
def test_pure_label_shift_raises_no_warning(share):
    rng = np.random.default_rng(21)
    p_val, y_val = _scores(5000, 0.5, rng)
    p_test, _ = _scores(5000, share, rng)
    report = label_shift_report(p_val, y_val, p_test, threshold=0.5)
    assert not report["images_changed"] and abs(report["ai_share_em"] - share) <= 0.03


def test_generator_change_is_flagged():
    rng = np.random.default_rng(22)
    p_val, y_val = _scores(5000, 0.5, rng)
    y = (np.arange(5000) < 2500).astype(int)  # share unchanged: 50 %
    x = rng.normal(np.where(y == 1, 0.0, -1.5), 1.5)  # AI images now look much more human
    report = label_shift_report(p_val, y_val, sigmoid(2 * x / 1.5), threshold=0.5)
    assert report["images_changed"] and report["disagreement"] > 0.1


def test_reliability_plot_has_a_curve_per_input(overconfident):
    z, y = overconfident
    fig = plot_reliability({"before": (sigmoid(z), y), "after": (sigmoid(z / 2.5), y)})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "perfect calibration" and labels[1].startswith("before (ECE 0.11")
    assert labels[2].startswith("after (ECE 0.00")


def test_equal_error_point_is_the_interpolated_crossing_and_its_nearest_threshold():
    from deepfake_lightning.calibration import equal_error_point

    rng = np.random.default_rng(5)
    for n in (12, 60, 400):
        y = (rng.random(n) < 0.5).astype(int)
        y[:2] = (0, 1)
        p = np.round(rng.random(n) * (0.6 + 0.4 * y), 2)  # ties included
        eer, t = equal_error_point(p, y)
        # brute force: the ROC points in threshold order, FNR - FPR crossing zero, linear in between
        cuts = np.unique(p)[::-1]
        fpr = np.array([np.mean(p[y == 0] >= c) for c in cuts])
        fnr = np.array([np.mean(p[y == 1] < c) for c in cuts])
        gap = fnr - fpr
        i = int(np.argmax(gap <= 0))
        expected = (
            (fpr[i] + fnr[i]) / 2
            if i == 0 or gap[i] == gap[i - 1]
            else fpr[i - 1] + gap[i - 1] / (gap[i - 1] - gap[i]) * (fpr[i] - fpr[i - 1])
        )
        assert eer == pytest.approx(expected)
        assert t in (cuts[i], cuts[max(i - 1, 0)]) and abs(gap[list(cuts).index(t)]) == min(
            abs(gap[i]), abs(gap[max(i - 1, 0)])
        )
        assert choose_threshold(p, y, "eer") == t  # the criterion and the report share the definition


def test_calibration_state_round_trips_through_checkpoint_and_json():
    from deepfake_lightning.calibration import CalibrationState

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(int)
    z = rng.normal(3 * y - 1.5, 1.5)
    for method in ("temperature", "platt", "isotonic"):
        state = CalibrationState.fit(z, y, method, "youden")
        for back in (
            CalibrationState.from_checkpoint(state.to_checkpoint()),
            CalibrationState.from_json(json.loads(json.dumps(state.to_json()))),
        ):
            assert back.calibrator == state.calibrator and back.threshold == state.threshold
            assert back.criterion == "youden" and back.val_after == state.val_after
            np.testing.assert_array_equal(back.val_probs, state.val_probs)
            np.testing.assert_array_equal(back.val_labels, state.val_labels)
            np.testing.assert_allclose(back.probs(z), state.probs(z))
    old = state.to_checkpoint() | {"adapted_thresholds": {"test_v2": 0.3}}  # written by earlier versions
    assert CalibrationState.from_checkpoint(old).threshold == state.threshold
    with pytest.raises(ValueError, match="without"):
        CalibrationState.from_checkpoint({"threshold": 0.5})


def test_temperature_on_perfectly_separated_logits_is_bounded_by_the_validation_size():
    """The NLL has no minimum when validation is perfectly separated: 8 images support no probability nearer 0 or 1
    than about 1/9, so the scaled logits stop at log(9) (on the 99th percentile of |z|), the tuned threshold stays
    strictly inside (0, 1), and the calibrator says so in one line."""
    z = np.array([-4.0, -3.0, -2.5, -1.0, 1.5, 2.0, 3.0, 5.0]) / 10  # a model whose logits are too timid
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    t = fit_temperature(z, y)
    assert np.quantile(np.abs(z), 0.99) / t == pytest.approx(np.log(9))
    probs = sigmoid(z / t)
    assert probs.min() > 0.05 and probs.max() < 0.95
    threshold = choose_threshold(probs, y, "f1")
    assert 0 < threshold < 1 and np.all((probs >= threshold) == (y == 1))
    assert fit_temperature(z, y, bounded=False) < t  # unbounded, only the saturation cap |z / T| <= 30 holds it
    assert np.max(np.abs(z / fit_temperature(z, y, bounded=False))) == pytest.approx(30.0)
    # logits already sharper than 8 images support: calibration does not sharpen them further, nor soften them
    assert fit_temperature(z * 10, y) == pytest.approx(1.0)
    calibrator = Calibrator.fit(z, y, "temperature")
    assert calibrator.temperature == pytest.approx(t) and calibrator.bounded_on == 8
    assert calibrator.unbounded_temperature is None
    assert calibrator.bound_line() == (
        f"temperature bounded at {t:.3g} (the validation set is separable: the fit would sharpen without end): 8 "
        "validation images support no probability nearer 0 or 1 than about 1/9; more validation data lifts the bound"
    )


def test_a_small_nearly_separable_set_is_bounded_and_a_large_overlapping_one_keeps_its_optimum():
    """The demo's case: 200 validation images, classes barely overlapping, whose NLL optimum sharpens the logits
    many times over (T well below 1). Bounded, the probabilities keep about 1/201 from 0 and 1, and the line gives
    the temperature the fit wanted. 4000 overlapping images with one extreme logit keep the NLL optimum."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 100)
    z = np.where(y == 1, 1.0, -1.0) * rng.uniform(0.3, 1.0, 200)
    z[0] = 0.35  # one human image among the AI ones: not separable
    bounded, wanted = fit_temperature(z, y), fit_temperature(z, y, bounded=False)
    assert wanted < 0.5 and bounded > wanted
    assert np.quantile(np.abs(z), 0.99) / bounded == pytest.approx(np.log(201))
    calibrator = Calibrator.fit(z, y, "temperature")
    assert calibrator.unbounded_temperature == pytest.approx(wanted) and "the fit wanted" in calibrator.bound_line()
    assert CalibrationState.fit(z, y, "temperature").summary()["temperature_bounded_on"] == 200

    y = (rng.random(4000) < 0.5).astype(int)
    z = rng.normal(2 * (2 * y - 1), 1.5)  # overlapping classes
    z[np.argmax(z)] = 60.0  # one extremely confident image
    t = fit_temperature(z, y)
    grad = np.mean((sigmoid(z / t) - y) * z)
    assert abs(grad) < 1e-8 and np.max(np.abs(z / t)) > 30  # the unconstrained optimum, not a bound
    assert Calibrator.fit(z, y, "temperature").bound_line() is None
