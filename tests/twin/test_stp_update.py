"""twin.stp_update: the adaptive, defensive importance update against analytic posteriors."""

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from twin import stp_update as su
from twin.errors import InputError

# A linear-Gaussian stand-in for the PBPK twin: log parameters theta (2,), population prior
# N(M0, S0), a "PET" y1 = A1 theta + e1 and a "SPECT" y2 = A2 theta + e2, TIA = exp(C theta).
M0 = np.array([0.0, 0.0])
S0 = np.diag([1.0, 0.64])
A1, SIG1 = np.array([[1.0, 0.5]]), np.array([0.5])
A2, SIG2 = np.array([[0.3, 1.0]]), np.array([0.3])
C = np.array([1.0, 1.0])


def _posterior(prior_mean, prior_cov, rows):
    """Analytic Gaussian posterior of theta given linear rows (A, y, sigma)."""
    P = np.linalg.inv(prior_cov)
    b = P @ prior_mean
    for A, y, s in rows:
        P = P + A.T @ np.diag(1 / s ** 2) @ A
        b = b + A.T @ (y / s ** 2)
    cov = np.linalg.inv(P)
    return cov @ b, cov


def _solve(y1, y2, use_pet=True):
    def solve(theta):
        ll = -0.5 * np.sum(((theta @ A2.T - y2) / SIG2) ** 2, axis=1)
        if use_pet:
            ll = ll + su.gaussian_loglik(theta @ A1.T, y1, SIG1)
        return ll, np.exp(theta @ C)[:, None]
    return solve


def _tia_quantiles(mean, cov, level=0.90):
    m, s = C @ mean, math.sqrt(C @ cov @ C)
    z = norm.ppf(0.5 + level / 2)
    return np.exp([m - z * s, m, m + z * s])


def test_exact_target_recovers_the_analytic_posterior_from_a_wrong_laplace_twin():
    """The proposal (the 'twin') is too narrow and off-centre, as the DOTATATE lesion twins
    were; the exact target prior x PET x SPECT is still recovered (median and 90% interval)."""
    y1, y2 = np.array([0.9]), np.array([1.2])
    pet_mean, pet_cov = _posterior(M0, S0, [(A1, y1, SIG1)])
    twin_mean = pet_mean - 1.0 * np.sqrt(np.diag(pet_cov))     # biased low ...
    twin_cov = 0.3 * pet_cov                                   # ... and too narrow
    mean, cov = _posterior(M0, S0, [(A1, y1, SIG1), (A2, y2, SIG2)])
    lo, med, hi = _tia_quantiles(mean, cov)
    res = su.adaptive_update(_solve(y1, y2), twin_mean=twin_mean, twin_cov=twin_cov,
                             target_mean=M0, target_cov=S0, n1=3000, n2=1500, seed=3)
    assert res.ess > 300
    assert math.log(res.median[0] / med) == pytest.approx(0.0, abs=0.03)
    assert math.log(res.low[0] / lo) == pytest.approx(0.0, abs=0.06)
    assert math.log(res.high[0] / hi) == pytest.approx(0.0, abs=0.06)
    # the probability that the median is > 10% off, against the analytic lognormal
    s = math.sqrt(C @ cov @ C)
    p = norm.cdf(math.log(1 / 1.1) / s) + norm.sf(math.log(1 / 0.9) / s)
    assert res.p_over[0] == pytest.approx(p, abs=0.03)
    # the same wrong twin used as the prior (the old update) is biased low
    old = su.adaptive_update(_solve(y1, y2, use_pet=False), twin_mean=twin_mean,
                             twin_cov=twin_cov, target_mean=twin_mean, target_cov=twin_cov,
                             n1=3000, n2=1500, seed=3)
    assert math.log(old.median[0] / med) < -0.05


def test_twin_target_matches_the_conjugate_update_of_the_twin():
    """Without PET rows the target is N(twin) x SPECT: the conjugate Gaussian update."""
    twin_mean, twin_cov = np.array([0.2, -0.1]), np.array([[0.3, 0.1], [0.1, 0.4]])
    y2 = np.array([0.8])
    mean, cov = _posterior(twin_mean, twin_cov, [(A2, y2, SIG2)])
    lo, med, hi = _tia_quantiles(mean, cov)
    for n2 in (0, 800):
        res = su.adaptive_update(_solve(None, y2, use_pet=False), twin_mean=twin_mean,
                                 twin_cov=twin_cov, target_mean=twin_mean, target_cov=twin_cov,
                                 n1=2000, n2=n2, seed=1)
        assert math.log(res.median[0] / med) == pytest.approx(0.0, abs=0.03), n2
        assert math.log(res.low[0] / lo) == pytest.approx(0.0, abs=0.06), n2
        assert math.log(res.high[0] / hi) == pytest.approx(0.0, abs=0.06), n2
        assert len(res.weights) == 2000 + n2
        assert res.weights.sum() == pytest.approx(1.0)


def test_mixture_density_counts_and_weights():
    q = su.stage1_proposal([1.0, 0.0], np.eye(2) * 0.1, [0.0, 0.0], np.diag([1.0, 2.0]),
                           defensive=0.3, inflate=2.0)
    x = np.random.default_rng(0).standard_normal((5, 2))
    ref = (0.7 * multivariate_normal([1.0, 0.0], np.eye(2) * 0.2).pdf(x)
           + 0.3 * multivariate_normal([0.0, 0.0], np.diag([1.0, 2.0])).pdf(x))
    np.testing.assert_allclose(np.exp(q.logpdf(x)), ref, rtol=1e-12)
    assert list(q.counts(11)) == [8, 3] and q.counts(11).sum() == 11
    draws = q.sample(20000, np.random.default_rng(1))
    # the stratified draws have the mixture's mean
    np.testing.assert_allclose(draws.mean(axis=0), [0.7, 0.0], atol=0.03)
    # the stage-1 weights of a flat likelihood are prior / proposal: bounded by 1 / defensive
    lw = su.log_weights(draws, np.zeros(len(draws)), [0.0, 0.0], np.diag([1.0, 2.0]), q)
    assert np.exp(lw).max() <= 1 / 0.3 + 1e-9
    w, ess = su.normalised_weights(np.array([0.0, -np.inf, math.log(3.0)]))
    np.testing.assert_allclose(w, [0.25, 0.0, 0.75])
    assert ess == pytest.approx(1 / (0.25 ** 2 + 0.75 ** 2))


def test_bad_input():
    with pytest.raises(InputError, match="finite weight"):
        su.normalised_weights(np.array([-np.inf, np.nan]))
    with pytest.raises(InputError, match="defensive"):
        su.stage1_proposal([0.0], [[1.0]], [0.0], [[1.0]], defensive=1.0)
    with pytest.raises(InputError, match="sigma"):
        su.gaussian_loglik(np.zeros((3, 1)), [0.0], [0.0])
    with pytest.raises(InputError, match="at least 10"):
        su.adaptive_update(_solve(None, np.array([0.0]), use_pet=False), twin_mean=M0,
                           twin_cov=S0, target_mean=M0, target_cov=S0, n1=5)
    # failed solves (NaN TIA) get weight 0 and do not enter the summary
    def solve(theta):
        ll, tia = _solve(None, np.array([0.5]), use_pet=False)(theta)
        tia[::3] = np.nan
        return ll, tia
    res = su.adaptive_update(solve, twin_mean=M0, twin_cov=S0, target_mean=M0, target_cov=S0,
                             n1=300, n2=0, seed=0)
    assert np.isfinite(res.median).all()
    assert np.all(res.weights[::3] == 0)
