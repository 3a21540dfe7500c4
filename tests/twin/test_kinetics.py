"""Sums of exponentials: analytic TIA, parameter recovery, AICc choice, uncertainty, bad input."""

import math
import warnings

import numpy as np
import pytest
from scipy.integrate import quad

from twin.errors import InputError
from twin.kinetics import MODELS, aicc, exp_sum, exp_sum_integral, fit_tac

LAM_P = math.log(2) / 159.53  # 177Lu, 6.647 d (ICRP 107)
T = np.array([1.0, 2.0, 4.0, 8.0, 24.0, 48.0, 72.0, 96.0, 120.0, 168.0])
# (amplitudes MBq, effective decay constants 1/h) generating each model
CASES = {
    "mono": ([500.0], [LAM_P + 0.01]),
    "bi_uptake": ([500.0, -500.0], [LAM_P + 0.01, LAM_P + 0.51]),
    "bi": ([300.0, 200.0], [LAM_P + 0.005, LAM_P + 0.105]),
    "tri": ([300.0, 200.0, -500.0], [LAM_P + 0.005, LAM_P + 0.105, LAM_P + 1.105]),
}


def test_exp_sum_integral_against_quadrature():
    a, lam = [300.0, 200.0, -500.0], [0.02, 0.12, 1.3]
    for t0, t1 in ((0.0, math.inf), (0.0, 4.0), (4.0, 168.0), (168.0, math.inf)):
        ref = quad(lambda t: float(exp_sum(t, a, lam)), t0, t1, epsabs=1e-10, epsrel=1e-12,
                   limit=200)[0]
        assert exp_sum_integral(a, lam, t0, t1) == pytest.approx(ref, rel=1e-9, abs=1e-8)
    # closed form of the whole integral: sum a/l
    assert exp_sum_integral(a, lam) == pytest.approx(sum(x / y for x, y in zip(a, lam)),
                                                     rel=1e-14)


@pytest.mark.parametrize("model", list(CASES))
def test_fit_recovers_noise_free_parameters_and_tia(model):
    a, lam = CASES[model]
    y = exp_sum(T, a, lam)
    kf = fit_tac(T, y, 0.01 * y + 1e-3, lambda_phys_per_h=LAM_P, model=model)
    assert kf.model == model
    np.testing.assert_allclose(kf.rates_per_h, lam, rtol=1e-5)
    np.testing.assert_allclose(kf.amplitudes_mbq, a, rtol=1e-5)
    assert kf.tia_mbq_h == pytest.approx(exp_sum_integral(a, lam), rel=1e-7)
    # the three parts add up and each is the analytic integral over its span
    assert kf.tia_before_mbq_h + kf.tia_during_mbq_h + kf.tia_tail_mbq_h == \
        pytest.approx(kf.tia_mbq_h, rel=1e-12)
    assert kf.tia_tail_mbq_h == pytest.approx(exp_sum_integral(a, lam, T[-1]), rel=1e-5)


@pytest.mark.parametrize("model", list(CASES))
def test_aicc_selects_the_generating_model_on_clean_data(model):
    a, lam = CASES[model]
    # noise-free: every model at least as complex as the truth fits exactly (chi^2 ~ 0), the
    # simpler ones cannot, and the AICc penalty then picks the generating model
    y = exp_sum(T, a, lam)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kf = fit_tac(T, y, 0.01 * y + 1e-3, lambda_phys_per_h=LAM_P, model="auto")
    assert kf.model == model
    assert kf.chi2 < 1e-6


def test_aicc_formula():
    assert aicc(3.0, 10, 2) == pytest.approx(3.0 + 4 + 12 / 7)
    assert aicc(3.0, 4, 3) == math.inf  # n < k + 2: undefined


def test_physical_decay_constraint():
    # activity that seems to decay slower than 177Lu (measurement noise): the fitted effective
    # decay constant stops at the physical one
    t = np.array([24.0, 48.0, 96.0, 168.0])
    y = 100.0 * np.exp(-0.5 * LAM_P * t)
    with pytest.warns(UserWarning, match="physical rate"):
        kf = fit_tac(t, y, 0.05 * y, lambda_phys_per_h=LAM_P, model="mono")
    assert kf.rates_per_h[0] == pytest.approx(LAM_P, rel=1e-9)


def test_delta_method_matches_parametric_bootstrap():
    a, lam = CASES["mono"]
    t = np.array([4.0, 24.0, 96.0, 168.0])
    y = exp_sum(t, a, lam)
    sigma = 0.05 * y
    kf = fit_tac(t, y, sigma, lambda_phys_per_h=LAM_P, model="mono")
    kb = fit_tac(t, y, sigma, lambda_phys_per_h=LAM_P, model="mono", uncertainty="bootstrap",
                 n_boot=300, seed=1)
    # the spread of refits to redrawn data is what the delta method predicts (linear regime)
    assert kb.tia_sd_mbq_h == pytest.approx(kf.tia_sd_mbq_h, rel=0.2)
    lo, hi = kf.interval(0.90)
    assert lo < kf.tia_mbq_h < hi


def test_too_few_points_fall_back_with_warning():
    a, lam = CASES["bi"]
    t = np.array([4.0, 24.0, 96.0])
    y = exp_sum(t, a, lam)
    with pytest.warns(UserWarning, match="only 3 data points"):
        kf = fit_tac(t, y, 0.05 * y, lambda_phys_per_h=LAM_P, model="bi")
    assert kf.model == "bi_uptake" and MODELS[kf.model] <= 3
    with pytest.warns(UserWarning, match="too few to compare"):
        kf = fit_tac(t, y, 0.05 * y, lambda_phys_per_h=LAM_P, model="auto")
    assert kf.model == "mono"


def test_bad_input():
    with pytest.raises(InputError, match="single-time-point"):
        fit_tac([24.0], [100.0], [10.0], lambda_phys_per_h=LAM_P)
    with pytest.raises(InputError, match="single-time-point"):
        fit_tac([24.0, 24.0], [100.0, 90.0], [10.0, 10.0], lambda_phys_per_h=LAM_P)
    with pytest.raises(InputError, match="sigma"):
        fit_tac([4.0, 24.0], [100.0, 90.0], [0.0, 1.0], lambda_phys_per_h=LAM_P)
    with pytest.raises(InputError, match=">= 0"):
        fit_tac([4.0, 24.0], [-1.0, 90.0], None, lambda_phys_per_h=LAM_P)
    with pytest.raises(InputError, match="unknown kinetic model"):
        fit_tac([4.0, 24.0], [100.0, 90.0], None, lambda_phys_per_h=LAM_P, model="quad")
    with pytest.raises(InputError, match="decay constant"):
        fit_tac([4.0, 24.0], [100.0, 90.0], None, lambda_phys_per_h=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kf = fit_tac([4.0, 24.0], [100.0, 60.0], None, lambda_phys_per_h=LAM_P)
    assert kf.model == "mono"
