"""The STP validation's noise (benchmarks/validate_stp.py): per-class observation noise, the
noise-only floor, the sensitivity scaling and the exact-likelihood importance update.

Checked against hand-computed sigmas (the values of calibration/fit.py's NOISE / NOISE_LESION
written out), Monte Carlo draws and numerical quadrature of the posterior."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "validate_stp.py"


@pytest.fixture(scope="module")
def vs():
    spec = importlib.util.spec_from_file_location("validate_stp_under_test", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _by_hand(prop, add, a):
    return math.sqrt((prop * a) ** 2 + add ** 2)


def test_observation_sigma_is_per_class(vs):
    """SPECT organs 15% + 0.5 MBq, lesions hypot(10%, 15%) = 18% + 0.5 MBq, PET organs
    10% + 0.02 MBq, lesions hypot(5%, 15%) = 16% + 0.02 MBq (calibration/fit.py), each at the
    measured value; and the draw itself uses the class sigma at the true activity."""
    regions = ["Kidney", "Tumor1", "TumorRest", "Liver"]
    act = np.array([40.0, 12.0, 80.0, 3.0])
    for modality, organ, lesion in (("SPECT", (0.15, 0.5), (0.18, 0.5)),
                                    ("PET", (0.10, 0.02), (0.16, 0.02))):
        o = vs._obs(regions, 48.0, act, "lu177-psma-617", modality, np.random.default_rng(3))
        y = np.asarray(o.activity_mbq)
        z = np.random.default_rng(3).standard_normal(4)
        for j, r in enumerate(regions):
            p, a = lesion if r.startswith("Tumor") else organ
            assert o.sigma_mbq[j] == pytest.approx(_by_hand(p, a, y[j]), rel=1e-12)
            assert y[j] == pytest.approx(act[j] + _by_hand(p, a, act[j]) * z[j], rel=1e-12)
    # spread of many draws: lesion relative sd 18%, organ 15% (at 1000 MBq the floor is 5e-4)
    o = vs._obs(["Kidney", "Tumor2"] * 1500, 24.0, np.full(3000, 1000.0), "lu177-psma-617",
                "SPECT", np.random.default_rng(7))
    sd = np.asarray(o.activity_mbq).reshape(1500, 2).std(axis=0) / 1000.0
    assert sd[0] == pytest.approx(0.15, rel=0.05)
    assert sd[1] == pytest.approx(0.18, rel=0.05)


def test_spect_noise_scales_every_spect_class(vs):
    t = vs.noise_table(0.10)
    assert t[("SPECT", "organ")].proportional == pytest.approx(0.10)
    assert t[("SPECT", "lesion")].proportional == pytest.approx(0.18 * 0.10 / 0.15)
    assert t[("SPECT", "organ")].additive_mbq == 0.5
    assert t[("PET", "lesion")].proportional == pytest.approx(0.16)   # PET untouched
    d = vs.noise_table()
    assert d[("SPECT", "lesion")].proportional == pytest.approx(0.18)
    o = vs._obs(["Tumor1"], 48.0, np.array([50.0]), "lu177-psma-617", "SPECT",
                np.random.default_rng(0), t)
    assert o.sigma_mbq[0] == pytest.approx(_by_hand(0.12, 0.5, o.activity_mbq[0]), rel=1e-12)


def test_noise_floor_matches_monte_carlo(vs):
    """2 Phi(-0.1 A / sigma) against the share of y = A + sigma z with |y/A - 1| > 10%."""
    a = np.array([2.0, 10.0, 60.0])
    s = np.sqrt((0.15 * a) ** 2 + 0.5 ** 2)
    z = np.random.default_rng(1).standard_normal((200_000, 3))
    mc = np.mean(np.abs(s * z / a) > 0.10)
    assert vs.noise_floor_share(a, s) == pytest.approx(mc, abs=0.004)
    # the textbook numbers: 15% -> 50.5%, 18% -> 57.8%, 10% -> 31.7%, 5% -> 4.55%
    for sd, share in ((0.15, 0.5050), (0.18, 0.5781), (0.10, 0.3173), (0.05, 0.0455)):
        assert vs.noise_floor_share(1.0, sd) == pytest.approx(share, abs=5e-4)


def test_predicted_likelihood_update_matches_quadrature(vs):
    """Importance update with sigma at each draw's prediction (and its normaliser) against the
    posterior median of a lognormal prior times N(y; p, sigma(p)) by quadrature."""
    mu, sd, y = math.log(20.0), 0.4, 26.0
    sig = lambda p: np.sqrt((0.18 * p) ** 2 + 0.5 ** 2)  # noqa: E731 - lesion SPECT class
    post = lambda p: (stats.lognorm.pdf(p, sd, scale=math.exp(mu))  # noqa: E731
                      * stats.norm.pdf(y, p, sig(p)))
    z = integrate.quad(post, 1e-6, 200, limit=200)[0]
    grid = np.linspace(1e-6, 200, 200_001)
    cdf = integrate.cumulative_trapezoid(post(grid), grid, initial=0) / z
    exact_median = grid[np.searchsorted(cdf, 0.5)]
    p = np.exp(mu + sd * np.random.default_rng(5).standard_normal(40_000))[:, None]
    u = vs._update(p, 2 * p, np.ones(len(p), bool), np.array([y]), np.array([sig(y)]),
                   "predicted", ["Tumor1"])
    med, prior_med, ess = u["median"], u["prior_median"], u["ess"]
    assert med[0] == pytest.approx(2 * exact_median, rel=0.01)
    assert prior_med[0] == pytest.approx(40.0, rel=0.02)
    assert 1000 < ess < len(p)
    # the measured-sigma approximation differs from the exact posterior
    med_m = vs._update(p, p, np.ones(len(p), bool), np.array([y]), np.array([sig(y)]))["median"]
    assert abs(med_m[0] / exact_median - 1) > 0.005


def test_spect_rows_exact_shape_and_classical(vs):
    """On a two-patient store with mono-exponential curves: exact-shape = truth x measured /
    true activity; Hanscheid = A 2t/ln2; Madsen with the right T_eff is exact up to the noise."""
    t_eff = 60.0
    times = np.array([24.0, 48.0])
    a0 = np.array([[100.0, 10.0], [50.0, 5.0]])                     # (patients, regions)
    act = a0[:, :, None] * np.exp(-math.log(2) / t_eff * times)[None, None, :]
    tia = a0 * t_eff / math.log(2)
    store = {"act": act, "tia": tia, "ok": np.array([True, True]), "have": np.array([], int),
             "t_eff_pop": np.array([t_eff, t_eff]), "regions": np.array(["Kidney", "Tumor1"]),
             "times": times, "seed": 0, "model": "psma-pbrpk", "draws": 0}
    df = vs.spect_rows(store, 0)
    ex = df[df.method == "exact-shape"].set_index(["patient", "region", "time_h"])
    ha = df[df.method == "hanscheid"].set_index(["patient", "region", "time_h"])
    ma = df[df.method == "madsen"].set_index(["patient", "region", "time_h"])
    for (i, r, t), row in ex.iterrows():
        j = ["Kidney", "Tumor1"].index(r)
        k = list(times).index(t)
        y = row["measured_mbq"]
        assert row["tia_mbq_h"] == pytest.approx(tia[i, j] * y / act[i, j, k], rel=1e-12)
        assert ha.loc[(i, r, t), "tia_mbq_h"] == pytest.approx(y * 2 * t / math.log(2))
        assert ma.loc[(i, r, t), "tia_mbq_h"] == pytest.approx(row["tia_mbq_h"], rel=1e-9)
    assert set(df.method) == {"exact-shape", "hanscheid", "madsen"}


def test_measured_weights_reproduce_importance_update(vs):
    """The validation's 'measured' likelihood is twin.stp.importance_update's."""
    from twin.stp import importance_update

    rng = np.random.default_rng(2)
    pred = np.exp(rng.normal(np.log([30.0, 8.0]), 0.3, size=(500, 2)))
    tia = pred * np.array([100.0, 150.0]) * np.exp(rng.normal(0, 0.1, size=(500, 2)))
    ok = rng.random(500) > 0.05
    y, sig = np.array([33.0, 7.0]), np.array([4.95, 1.3])
    med, prior_med, ess = importance_update(pred, tia, y, sig, ok)
    u = vs._update(pred, tia, ok, y, sig)
    np.testing.assert_allclose(u["median"], med, rtol=1e-12)
    np.testing.assert_allclose(u["prior_median"], prior_med, rtol=1e-12)
    assert u["ess"] == pytest.approx(ess, rel=1e-12)


def test_window_estimate_brute_force(vs):
    """The +-10% window estimate against a brute-force scan over candidate estimates."""
    rng = np.random.default_rng(4)
    v = np.exp(rng.normal(3.0, 0.2, size=(300, 2)))
    w = rng.random(300)
    w /= w.sum()
    est, mass = vs.window_estimate(v, w)
    for k in range(2):
        cands = np.exp(np.linspace(2.0, 4.5, 20001))
        masses = (w[None, :] * (np.abs(cands[:, None] / v[None, :, k] - 1) <= 0.10)).sum(1)
        assert mass[k] == pytest.approx(masses.max(), abs=1e-3)
        assert mass[k] >= masses.max() - 1e-12
        assert (w * (np.abs(est[k] / v[:, k] - 1) <= 0.10 + 1e-12)).sum() == \
            pytest.approx(mass[k], abs=1e-12)


def test_adaptive_importance_update_linear_gaussian(vs):
    """Two-stage multiple importance sampling (twin.stp_update, as the validation's twin-ais
    uses it) against the analytic posterior of a linear-Gaussian model (prior N(m, C),
    y = H theta + e, e ~ N(0, R)); the second stage raises the ESS."""
    from twin.stp_update import (Mixture, combined_proposal, gaussian_logpdf, log_weights,
                                 stage2_component)

    rng = np.random.default_rng(11)
    m, C = np.array([0.5, -0.2, 0.1]), np.diag([0.3, 0.2, 0.25]) ** 2
    H = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0], [0.3, 0.0, 1.0]])
    sig = np.array([0.03, 0.04, 0.05])
    y = H @ np.array([0.7, -0.1, 0.3]) + sig * rng.standard_normal(3)
    P = np.linalg.inv(np.linalg.inv(C) + H.T @ np.diag(sig ** -2) @ H)
    mean = P @ (np.linalg.inv(C) @ m + H.T @ (y / sig ** 2))
    th1 = m + rng.standard_normal((4000, 3)) @ np.linalg.cholesky(C).T
    ll1 = vs._loglik(th1 @ H.T, y, sig)
    w1 = np.exp(ll1 - ll1.max())
    w1 /= w1.sum()
    ess1 = 1 / np.sum(w1 ** 2)
    q_mean, q_cov = stage2_component(th1, w1, C)
    th2 = q_mean + rng.standard_normal((4000, 3)) @ np.linalg.cholesky(q_cov).T
    q = combined_proposal(Mixture((1.0,), (m,), (C,)), 4000, (q_mean, q_cov), 4000)
    th = np.vstack([th1, th2])
    lw = log_weights(th, np.concatenate([ll1, vs._loglik(th2 @ H.T, y, sig)]), m, C, q)
    w = np.exp(lw - lw.max())
    w /= w.sum()
    post_mean = w @ th
    post_sd = np.sqrt(w @ (th - post_mean) ** 2)
    np.testing.assert_allclose(post_mean, mean, atol=0.1 * np.sqrt(np.diag(P)).max())
    np.testing.assert_allclose(post_sd, np.sqrt(np.diag(P)), rtol=0.15)
    assert 1 / np.sum(w ** 2) > 10 * ess1
    # the Gaussian log-density against scipy
    x = rng.standard_normal((5, 3))
    np.testing.assert_allclose(gaussian_logpdf(x, m, C),
                               stats.multivariate_normal(m, C).logpdf(x), rtol=1e-12)
