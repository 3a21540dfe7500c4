"""Virtual populations (reproducible, documented distributions) and outcome models."""

import math

import numpy as np
import pytest

from twin.errors import InputError
from twin.trials import outcomes as O
from twin.trials.engine import LevelDoses
from twin.trials.populations import du_bois_bsa, sample
from twin.trials.virtual import guided_activities


def test_population_reproducible_and_seeded():
    a, b, c = sample("mcrpc", 50, seed=3), sample("mcrpc", 50, seed=3), sample("mcrpc", 50, 4)
    assert np.array_equal(a.params, b.params)
    assert a.covariates.equals(b.covariates)
    assert not np.array_equal(a.params, c.params)
    assert a.params.shape == (50, len(a.model.parameter_names))


def test_population_distributions():
    from calibration.priors import prior_catalogue

    pop = sample("mcrpc", 6000, seed=1)
    cov = pop.covariates
    # lognormal weight: arithmetic mean 85 kg, CV 0.17 (assumed values of the population)
    assert cov.weight_kg.mean() == pytest.approx(85.0, rel=0.02)
    assert cov.weight_kg.std() / cov.weight_kg.mean() == pytest.approx(0.17, rel=0.08)
    r = np.corrcoef(np.log(cov.weight_kg), np.log(cov.height_cm))[0, 1]
    assert r == pytest.approx(0.4, abs=0.04)
    assert np.allclose(cov.bsa_m2, du_bois_bsa(cov.weight_kg, cov.height_cm))
    # Du Bois: 70 kg, 170 cm -> 1.81 m^2 (Du Bois 1916 nomogram value)
    assert float(du_bois_bsa(70.0, 170.0)) == pytest.approx(1.81, abs=0.01)
    names = list(pop.model.parameter_names)
    for name, (mean, cv, _) in prior_catalogue("psma-pbrpk").items():
        if name in names and name != "TER_Kidney":
            x = pop.params[:, names.index(name)]
            assert x.mean() == pytest.approx(mean, rel=4 * cv / math.sqrt(6000) + 0.01)
    # GFR of the model's definition, TER/3 * 201/151 (mL/min), and GFR-kidney correlation > 0
    assert cov.gfr_ml_min.median() == pytest.approx(88.7 / math.sqrt(1 + 0.25**2), rel=0.03)
    assert np.corrcoef(np.log(cov.gfr_ml_min), np.log(cov.kidney_volume_ml))[0, 1] > 0.4


def test_population_bad_input():
    with pytest.raises(InputError, match="unknown population"):
        sample("martian", 10)
    with pytest.raises(InputError):
        sample("mcrpc", 0)


def test_outcome_models():
    from scipy.stats import norm

    from twin.dosimetry.radiobiology import tcp_poisson

    bed = np.array([20.0, 40.0, 60.0])
    d = {"kidney_bed_gy": bed, "marrow_dose_gy": np.array([0.5, 2.0, 3.0]),
         "lesion_dose_c1_gy": np.array([5.0, 8.0, 7.5]), "lesion_dose_gy": np.array([30, 60, 90.])}
    # LKB on EQD2 (alpha/beta 2.6): Phi((EQD2 - 28) / 2.8)
    eqd2 = bed / (1 + 2 / 2.6)
    assert np.allclose(O.kidney_ntcp(d), norm.cdf((eqd2 - 28.0) / 2.8), rtol=1e-12)
    assert O.marrow_ntcp(d)[1] == pytest.approx(0.10, abs=2e-4)   # 2 Gy at 10% by construction
    assert O.marrow_ntcp(d)[2] == pytest.approx(0.5)
    p = O.dlt_probability(d)
    assert np.allclose(1 - p, (1 - O.kidney_ntcp(d)) * (1 - O.marrow_ntcp(d)))
    assert O.lesion_response(d).tolist() == [0.0, 1.0, 0.0]
    f = O.tcp(0.05, 1e3, volume_ml=2.0)
    for k in range(3):
        assert f(d)[k] == pytest.approx(tcp_poisson(d["lesion_dose_gy"][k], 0.05, 1e3, 2.0))
    over = O.over_limits({"kidney_bed_gy": bed, "marrow_dose_gy": d["marrow_dose_gy"]})
    assert over["over_kidney_bed_gy_40"].tolist() == [0, 0, 1]
    assert over["over_redmarrow_dose_gy_2"].tolist() == [0, 0, 1]


def test_guided_activities_linear_doses():
    # course kidney BED and marrow dose linear in activity: the largest feasible activity is
    # min(40 / slope_k, 2 / slope_m), clipped to [3.7, 11.1]
    levels = np.array([3.7, 5.55, 7.4, 9.25, 11.1])
    sk = np.array([[3.0], [5.0], [4.0], [12.0]])      # Gy BED per GBq per cycle
    sm = np.array([[0.05], [0.05], [0.4], [0.05]])
    z = np.zeros((4, 5))
    ld = LevelDoses(levels, sk * levels, z, sm * levels, z, z, z, np.ones((4, 5), bool), 6,
                    "superpose")
    act, ok = guided_activities(ld, levels, grid_points=74001)
    expect = np.clip(np.minimum(40 / sk[:, 0], 2 / sm[:, 0]), 3.7, 11.1)
    assert np.allclose(act[ok], expect[ok], atol=2e-4)
    assert ok.tolist() == [True, True, True, False]     # 12 x 3.7 = 44 > 40 Gy
    assert act[3] == 3.7


def test_net_population_reproducible_and_documented_distributions():
    """net v1: the sampled moments are the cited ones (NETTER-1 schedule, Spink 2024 kidney
    T_eff, Jimenez-Franco 2021 tumour receptor density, ICRP 89 body sizes, 40/61 men)."""
    from pbpk_models import radionuclides as rn
    from twin.trials.populations import SCHEDULE, radiopharmaceutical_of

    a, b = sample("net", 40, seed=3), sample("net", 40, seed=3)
    assert np.array_equal(a.params, b.params) and a.covariates.equals(b.covariates)
    assert not np.array_equal(a.params, sample("NET", 40, seed=4).params)
    assert (a.name, a.version, a.radiopharmaceutical) == ("net", "1", "lu177-dotatate")
    assert (a.n_cycles, a.interval_weeks) == SCHEDULE["net"] == (4, 8.0)
    assert radiopharmaceutical_of("net") == "lu177-dotatate"
    assert radiopharmaceutical_of("mcrpc") == "lu177-psma-617"

    n = 8000
    pop = sample("net", n, seed=11)
    cov = pop.covariates
    names = list(pop.model.parameter_names)
    col = {k: pop.params[:, names.index(k)] for k in names}
    male = (cov.sex == "M").to_numpy()
    p = 40 / 61
    assert male.mean() == pytest.approx(p, abs=3.5 * math.sqrt(p * (1 - p) / n))
    assert cov.weight_kg[male].mean() == pytest.approx(73.0, rel=0.015)
    assert cov.weight_kg[~male].mean() == pytest.approx(60.0, rel=0.015)
    assert cov.age_y.mean() == pytest.approx(62.0, abs=0.5)
    # kidney effective half-life 56 +/- 13 h; release = ln2/T_eff - ln2/T_phys (177Lu)
    assert cov.kidney_teff_h.mean() == pytest.approx(56.0, rel=0.01)
    assert cov.kidney_teff_h.std() == pytest.approx(13.0, rel=0.05)
    lam = rn.decay_constant_per_h("Lu-177")
    assert np.allclose(col["lambdaRel_KidneyTrap"], math.log(2) / cov.kidney_teff_h - lam,
                       rtol=1e-12)
    assert np.allclose(col["f_exc"], 1 - cov.reabsorbed_fraction, rtol=1e-12)
    # tumour receptor density 34 +/- 20 nmol/L, lesions correlated 0.5 on the log scale
    for k in ("Rden_Tumor1", "Rden_Tumor2", "Rden_TumorRest"):
        assert col[k].mean() == pytest.approx(0.034, rel=0.03)
        assert col[k].std() == pytest.approx(0.020, rel=0.07)
    r = np.corrcoef(np.log(col["Rden_Tumor1"]), np.log(col["Rden_Tumor2"]))[0, 1]
    assert r == pytest.approx(0.5, abs=0.03)
    # spleen receptor CV from the spleen dose CV 0.14/1.17 (derived)
    assert col["Rden_Spleen"].std() / col["Rden_Spleen"].mean() == pytest.approx(0.14 / 1.17,
                                                                                  rel=0.06)
    assert np.allclose(cov.bsa_m2, du_bois_bsa(cov.weight_kg, cov.height_cm))
    assert np.corrcoef(np.log(cov.gfr_ml_min), np.log(cov.kidney_volume_ml))[0, 1] > 0.4
    # the sources of every variable are recorded
    assert any("Spink" in v for v in pop.sources.values())
    assert any("Jimenez-Franco" in v for v in pop.sources.values())


def test_net_response_model():
    """Alipour 2023: odds ratio 1.5 per 50 Gy of cycle-1 lesion dose; P = 0.24 at 39.5 Gy."""
    d = np.array([0.0, 39.5, 50.0, 89.5, 100.0])
    p = O.net_lesion_response({"lesion_dose_c1_gy": d})
    odds = p / (1 - p)
    assert p[1] == pytest.approx(0.24, rel=1e-12)
    assert odds[3] / odds[1] == pytest.approx(1.5, rel=1e-12)
    assert odds[4] / odds[2] == pytest.approx(1.5, rel=1e-12)
    assert np.all(np.diff(p) > 0)
    assert O.default_outcome_model("net").efficacy is O.net_lesion_response
    assert O.default_outcome_model("mcrpc").efficacy is O.lesion_response
