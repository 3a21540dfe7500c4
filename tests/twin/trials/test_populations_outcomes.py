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
