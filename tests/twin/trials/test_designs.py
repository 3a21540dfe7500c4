"""Escalation designs against analytic results and published tables."""

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from twin.errors import InputError
from twin.trials import designs as D

N = 40000  # trials: Monte Carlo SE of a probability <= 0.0025


def _escalate(p):
    # independent of designs.prob_escalate_3p3: binomial pmfs from scipy
    b = stats.binom.pmf
    return b(0, 3, p) + b(1, 3, p) * b(0, 3, p)


def test_3p3_single_level_escalation_probability():
    for p in (0.1, 0.3, 0.5):
        s = D.OutcomeStream.draw([p], N, 6, seed=3)
        r = D.three_plus_three(s)
        est = (r.mtd == 0).mean()   # escalating past the only level selects it
        se = math.sqrt(_escalate(p) * (1 - _escalate(p)) / N)
        assert abs(est - _escalate(p)) < 4 * se + 1e-12
        assert D.prob_escalate_3p3(p) == pytest.approx(_escalate(p), rel=1e-12)


def test_3p3_selection_and_patients_over_levels():
    p = np.array([0.05, 0.1, 0.2, 0.35, 0.5])
    e = _escalate(p)
    reach = np.concatenate([[1.0], np.cumprod(e)[:-1]])
    sel = np.concatenate([[1 - e[0]], reach[1:] * (1 - e[1:]), [np.prod(e)]])  # none, L1..L5
    assert sel.sum() == pytest.approx(1.0)
    # expected patients at a level: P(reach) x (3 + 3 P(exactly 1/3))
    mean_n = reach * (3 + 3 * stats.binom.pmf(1, 3, p))
    r = D.three_plus_three(D.OutcomeStream.draw(p, N, 30, seed=11))
    got = np.array([(r.mtd == k).mean() for k in range(-1, 5)])
    se = np.sqrt(sel * (1 - sel) / N)
    assert np.all(np.abs(got - sel) < 4 * se + 1e-12), (got, sel)
    assert np.allclose(r.n.mean(axis=0), mean_n, atol=4 * 6 / math.sqrt(N))


def test_3p3_extremes():
    r = D.three_plus_three(D.OutcomeStream.draw([0.0, 0.0, 0.0], 50, 18, seed=0))
    assert np.all(r.mtd == 2) and np.all(r.n == 3)
    r = D.three_plus_three(D.OutcomeStream.draw([1.0, 1.0], 50, 12, seed=0))
    assert np.all(r.mtd == -1) and np.all(r.n[:, 0] == 3) and np.all(r.n[:, 1] == 0)


@pytest.mark.parametrize("phi, lam_e, lam_d", [(0.25, 0.197, 0.298), (0.30, 0.236, 0.358),
                                               (0.20, 0.157, 0.238)])
def test_boin_published_boundaries(phi, lam_e, lam_d):
    # Liu S, Yuan Y, J R Stat Soc C 2015;64:507-523, Table 1, printed to 3 decimals (0.358 for
    # the exact 0.35852: the table truncates there), so agreement within 1e-3
    e, d = D.boin_boundaries(phi)
    assert abs(e - lam_e) <= 1e-3 and abs(d - lam_d) <= 1e-3


@pytest.mark.parametrize("phi, table", [
    # (n, escalate if <=, de-escalate if >=, eliminate if >=): CRAN BOIN get.boundary
    (0.25, [(3, 0, 1, 3), (6, 1, 2, 4), (9, 1, 3, 5), (12, 2, 4, 6)]),
    (0.30, [(3, 0, 2, 3), (6, 1, 3, 4), (9, 2, 4, 5), (12, 2, 5, 7)]),
])
def test_boin_count_boundaries(phi, table):
    e, d = D.boin_boundaries(phi)
    for n, esc, de, elim in table:
        assert math.floor(e * n) == esc
        assert math.ceil(d * n) == de
        ys = np.arange(n + 1)
        assert ys[D.beta_tail(ys, n, phi) > 0.95].min() == elim


def test_isotonic_against_scipy():
    rng = np.random.default_rng(0)
    v = rng.random((50, 6))
    w = rng.random((50, 6)) + 0.1
    got = D.isotonic(v, w)
    for i in range(50):
        ref = optimize.isotonic_regression(v[i], weights=w[i]).x
        assert np.allclose(got[i], ref, atol=1e-12)


def test_boin_selects_and_eliminates():
    p = [0.05, 0.1, 0.25, 0.5, 0.7]
    r = D.boin(D.OutcomeStream.draw(p, 4000, 30, seed=2), target=0.25)
    sel = np.array([(r.mtd == k).mean() for k in range(5)])
    assert sel.argmax() == 2 and sel[2] > 0.45
    assert np.all(r.n.sum(axis=1) <= 30)
    r = D.boin(D.OutcomeStream.draw([0.9, 0.95], 500, 30, seed=2), target=0.25)
    assert (r.mtd == -1).mean() > 0.95   # lowest level eliminated


def test_crm_skeleton_lee_cheung():
    # dfcrm getprior(0.05, 0.25, 3, 6), population_radiobiology.md
    ref = [0.084, 0.157, 0.250, 0.355, 0.460, 0.560]
    assert np.round(D.crm_skeleton(0.25, 6, 3), 3).tolist() == ref


def test_crm_posterior_mean_against_quad():
    skel = D.crm_skeleton(0.25, 5)
    n = np.array([[3, 6, 3, 0, 0]])
    y = np.array([[0, 1, 2, 0, 0]])
    bmean, _, _ = D.crm_posterior(n, y, skel, n_grid=2001)
    sd = D.CRM_PRIOR_SD

    def post(b):
        p = np.clip(skel ** math.exp(b), 1e-300, 1 - 1e-16)
        return math.exp(np.sum(y[0] * np.log(p) + (n[0] - y[0]) * np.log1p(-p))
                        - 0.5 * (b / sd) ** 2)

    lim = 6 * sd  # prior mass beyond: ~2e-9
    z = integrate.quad(post, -lim, lim, epsabs=0, epsrel=1e-10, limit=200)[0]
    m = integrate.quad(lambda b: b * post(b), -lim, lim, epsabs=0, epsrel=1e-10, limit=200)[0] / z
    assert bmean[0] == pytest.approx(m, abs=1e-6)


def test_crm_no_skipping_and_selection():
    p = [0.02, 0.05, 0.1, 0.25, 0.5]
    r = D.crm(D.OutcomeStream.draw(p, 2000, 30, seed=4), target=0.25)
    sel = np.array([(r.mtd == k).mean() for k in range(5)])
    assert sel.argmax() == 3
    r1 = D.crm(D.OutcomeStream.draw([0.0] * 5, 50, 30, seed=4), target=0.25)
    # with no DLTs, escalation one level per cohort: cohort k at level min(k, 4)
    assert np.all(r1.n == np.array([3, 3, 3, 3, 18]))


def test_same_seed_same_results_and_seed_matters():
    p = [0.05, 0.1, 0.2, 0.35, 0.5]
    for name in D.DESIGNS:
        a = D.run_design(name, D.OutcomeStream.draw(p, 300, 30, seed=7))
        b = D.run_design(name, D.OutcomeStream.draw(p, 300, 30, seed=7))
        c = D.run_design(name, D.OutcomeStream.draw(p, 300, 30, seed=8))
        assert np.array_equal(a.mtd, b.mtd) and np.array_equal(a.n, b.n)
        assert not (np.array_equal(a.mtd, c.mtd) and np.array_equal(a.n, c.n))


def test_bad_input():
    with pytest.raises(InputError):
        D.OutcomeStream.draw([0.1, 1.2], 10, 30, seed=0)
    with pytest.raises(InputError):
        D.boin_boundaries(1.2)
    with pytest.raises(InputError):
        D.run_design("4+4", D.OutcomeStream.draw([0.1], 10, 30, seed=0))
