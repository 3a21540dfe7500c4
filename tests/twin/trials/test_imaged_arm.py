"""The imaged-twin guided arm of ``twin.trials.virtual.compare_arms``.

(a) plumbing: a posterior collapsed onto the truth (zero covariance, MAP = true parameters)
    gives the oracle's activities; a failed fit falls back to the lower bound;
(b) the quantile rule against a hand computation (doses linear in activity: the largest
    feasible activity is limit / (quantile of the draws' dose per GBq));
(c) a real 2-patient run (PET fit, posterior draws, one batched solve), its activities in the
    bounds and the true kidney BED at the chosen activity re-checked by an independent
    simulation (Kvaerno5 ``pbpk_models.simulate`` + the numpy Lea-Catcheside BED);
(d) bad input.

All engine calls use ``chunk_size=8`` so that every call reuses one compiled function.
"""

import numpy as np
import pytest

from twin.errors import InputError
from twin.trials.engine import LevelDoses, level_doses
from twin.trials.populations import sample
from twin.trials.virtual import (IMAGING, ImagedTwins, compare_arms, guided_activities,
                                 imaged_twins, quantile_guided, twin_guided_activities)

LEVELS = (5.0, 9.0)
CHUNK = 8


@pytest.fixture(scope="module")
def pop():
    return sample("mcrpc", 2, seed=11)


def _collapsed_posterior(pop, i):
    """The truth as a posterior: MAP = true personal parameters, zero covariance, the known
    covariates fixed at the patient's values."""
    from calibration import Posterior, default_prior, model_spec

    img = IMAGING["mcrpc"]
    prior = default_prior(img.model, model_spec(img.model, img.variant))
    names = list(pop.model.parameter_names)
    theta = np.log([pop.params[i, names.index(k)] for k in prior.names])
    fixed = {k: float(pop.params[i, names.index(k)]) for k in img.known}
    k = len(prior.names)
    return Posterior(img.model, img.variant, prior.names, ("",) * k, theta, np.zeros((k, k)),
                     prior, fixed)


@pytest.mark.slow
def test_collapsed_posterior_gives_oracle_activities(pop):
    truth = level_doses(pop, LEVELS, chunk_size=CHUNK, progress=False)
    oracle, oracle_ok = guided_activities(truth, LEVELS)
    twins = ImagedTwins([_collapsed_posterior(pop, i) for i in range(2)], ["", ""],
                        np.zeros(2), IMAGING["mcrpc"], "pet", (1.0,))
    tg = twin_guided_activities(pop, twins, LEVELS, n_draws=2, chunk_size=CHUNK,
                                progress=False)
    assert not tg["failed"].any() and tg["draws_ok"].tolist() == [2, 2]
    # every draw is the truth (to the 1e-15 jitter sample_log adds to the covariance)
    np.testing.assert_allclose(tg["quantile_doses"].kidney_bed_gy, truth.kidney_bed_gy,
                               rtol=1e-6)
    np.testing.assert_allclose(tg["quantile_doses"].marrow_dose_gy, truth.marrow_dose_gy,
                               rtol=1e-6)
    np.testing.assert_array_equal(tg["activity_gbq"], oracle)
    np.testing.assert_array_equal(tg["feasible"], oracle_ok)
    # a failed fit: no draws are simulated for it; it falls back to the lower bound
    twins.posteriors[1] = None
    tg1 = twin_guided_activities(pop, twins, LEVELS, n_draws=2, chunk_size=CHUNK,
                                 progress=False)
    assert tg1["failed"].tolist() == [False, True]
    assert tg1["activity_gbq"][0] == oracle[0] and tg1["activity_gbq"][1] == 3.7
    assert not tg1["feasible"][1]


def test_quantile_rule_against_hand_computation():
    # 2 patients x 5 draws; course kidney BED and marrow dose linear in activity (slopes per
    # draw, Gy per GBq per cycle); one draw of patient 0 failed to solve
    levels = np.array([3.7, 7.4, 11.1])
    kb = np.array([[2.0, 3.0, 5.0, 4.0, 3.5],          # Gy BED per GBq
                   [1.0, 1.2, 0.8, 1.1, 0.9]])
    md = np.array([[0.05, 0.06, 0.04, 0.05, 0.05],
                   [0.30, 0.10, 0.20, 0.25, 0.15]])
    ok = np.ones((2, 5), bool)
    ok[0, 2] = False                                    # its 5.0 must be ignored
    rows = lambda s: (s.reshape(-1, 1) * levels).copy()   # noqa: E731
    z = np.zeros((10, 3))
    okr = np.repeat(ok.reshape(-1, 1), 3, axis=1)
    bad = np.where(okr, rows(kb), np.nan)
    d = LevelDoses(levels, bad, z, rows(md), z, z, z, okr, 6, "superpose")
    out = quantile_guided(d, [0, 1], 2, 5, levels, quantile=0.9)

    def q_by_hand(values, q):
        # numpy's default ('linear'): position (m - 1) q between the order statistics
        v = np.sort(values)
        pos = (len(v) - 1) * q
        j = int(np.floor(pos))
        return v[j] + (pos - j) * (v[min(j + 1, len(v) - 1)] - v[j])

    qk0 = q_by_hand([2.0, 3.0, 4.0, 3.5], 0.9)          # 3.85 (draw 2 left out)
    qm0 = q_by_hand([0.05, 0.06, 0.05, 0.05], 0.9)      # 0.057
    qk1 = q_by_hand([1.0, 1.2, 0.8, 1.1, 0.9], 0.9)     # 1.16
    qm1 = q_by_hand([0.30, 0.10, 0.20, 0.25, 0.15], 0.9)  # 0.28
    assert qk0 == pytest.approx(3.85) and qm1 == pytest.approx(0.28)
    np.testing.assert_allclose(out["quantile_doses"].kidney_bed_gy[0], qk0 * levels)
    np.testing.assert_allclose(out["quantile_doses"].marrow_dose_gy[1], qm1 * levels)
    expect = np.clip([min(40 / qk0, 2 / qm0), min(40 / qk1, 2 / qm1)], 3.7, 11.1)
    # patient 0: kidney-bound 40 / 3.85 = 10.39 GBq; patient 1: marrow-bound 2 / 0.28 = 7.14
    np.testing.assert_allclose(out["activity_gbq"], expect, atol=0.011)   # 741-point grid
    assert out["draws_ok"].tolist() == [4, 5] and not out["failed"].any()
    assert np.all(out["activity_gbq"] <= expect + 1e-12)    # never above the feasible boundary
    # pet+spect24h: cycle 1 given at 7.4 GBq, cycles 2..6 at the level. With the superposed
    # course of the draws above (slope x a, i.e. slope / 6 per cycle) the course is
    # slope / 6 x (7.4 + 5 a) -> a = (6 limit / q - 7.4) / 5, q the 0.9 quantile of the slopes
    c1 = np.where(okr[:, :1], kb.reshape(-1, 1) * 7.4, np.nan)
    d1 = LevelDoses(np.array([7.4]), c1, z[:, :1], md.reshape(-1, 1) * 7.4, z[:, :1], z[:, :1],
                    z[:, :1] + 1.0, okr[:, :1], 6, "superpose")
    out1 = quantile_guided(d, [0, 1], 2, 5, levels, quantile=0.9, first_cycle=d1)
    expect1 = np.clip([min((240 / qk0 - 7.4) / 5, (12 / qm0 - 7.4) / 5),
                       min((240 / qk1 - 7.4) / 5, (12 / qm1 - 7.4) / 5)], 3.7, 11.1)
    # patient 0 kidney-bound (240 / 3.85 - 7.4) / 5 = 10.99; patient 1 marrow-bound 7.09
    assert expect1[0] == pytest.approx(10.988, abs=1e-3) and expect1[1] < 7.1
    np.testing.assert_allclose(out1["activity_gbq"], expect1, atol=0.011)
    assert out1["feasible"].tolist() == [True, True]
    np.testing.assert_allclose(out1["quantile_doses"].lesion_dose_c1_gy, 1.0)  # cycle 1's
    with pytest.raises(InputError, match="lowest level"):
        quantile_guided(d, [0, 1], 2, 5, levels, first_cycle=d1, bounds=(2.0, 11.1))
    # no patient has a twin
    out2 = quantile_guided(None, [], 2, 5, levels)
    assert out2["failed"].all() and out2["activity_gbq"].tolist() == [3.7, 3.7]


@pytest.mark.slow
def test_imaged_arm_two_patients_end_to_end(pop):
    """PET twin of 2 virtual patients -> activities in [3.7, 11.1] GBq; the true kidney BED at
    the chosen activity from the engine agrees with an independent Kvaerno5 simulation."""
    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import simulate
    from twin.dosimetry.radiobiology import bed

    twins = imaged_twins(pop, seed=2, progress=False, max_nfev=30)
    assert not twins.failed.any(), twins.errors
    for post in twins.posteriors:
        assert post.diagnostics["converged"] and np.all(np.isfinite(post.sd_log))
        assert set(post.fixed) == set(IMAGING["mcrpc"].known)
    tg = twin_guided_activities(pop, twins, LEVELS, n_draws=3, chunk_size=CHUNK,
                                progress=False, seed=1)
    act = tg["activity_gbq"]
    assert np.all((act >= 3.7) & (act <= 11.1)) and not tg["failed"].any()
    true = level_doses(pop, act[:, None], chunk_size=CHUNK, progress=False)
    model, e = pop.model, rn.energy_per_decay_mev("Lu-177")
    grid = np.unique(np.concatenate([np.linspace(0.0, 1440.0, 201),
                                     np.geomspace(1 / 60, 336.0, 150)]))
    for i in range(2):
        p = pop.params[i]
        sim = simulate(model, Regimen.single("lu177-psma-617", act[i] * 1000.0), p,
                       times_h=grid, days=60.0, mode="full")
        s_k = u.gy_per_mbq_h(e, model.region_masses_g(p)["Kidney"])
        course = pop.n_cycles * bed(grid, sim.activity("Kidney") * s_k, 2.6, 2.8)
        assert true.kidney_bed_gy[i, 0] == pytest.approx(course, rel=1e-2)


def test_bad_input(pop):
    twins = ImagedTwins([None, None], ["x", "x"], np.zeros(2), IMAGING["mcrpc"], "pet", (1.0,))
    with pytest.raises(InputError, match="n_draws"):
        twin_guided_activities(pop, twins, LEVELS, n_draws=1)
    with pytest.raises(InputError, match="n_draws"):
        compare_arms("mcrpc", n=2, n_draws=1)
    with pytest.raises(InputError, match="protocol"):
        compare_arms("mcrpc", n=2, protocol="spect-only")
    with pytest.raises(InputError, match="protocol"):
        imaged_twins(pop, protocol="pet+mri")
    with pytest.raises(InputError, match="PET times"):
        imaged_twins(pop, pet_times_h=(1.0, -2.0))
    with pytest.raises(InputError, match="quantile"):
        quantile_guided(None, [], 2, 4, LEVELS, quantile=1.0)
    with pytest.raises(InputError, match="unknown population"):
        compare_arms("mcrpc-v9", n=2)
