"""Single-time-point dosimetry: exactness properties, population table, bad input, CLI."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

from twin import stp
from twin.cli import main
from twin.errors import InputError

LN2 = math.log(2)
OBS_HEADER = "region,time_h,activity_mbq,sigma_mbq,modality,radiopharmaceutical\n"


def _mono(a0, t_eff, t):
    return a0 * np.exp(-LN2 / t_eff * np.asarray(t, float))


@pytest.mark.parametrize("t_eff", [10.0, 35.5, 80.0, 159.5])
def test_hanscheid_exact_at_t_eff_and_twice_t_eff(t_eff):
    true = 1000.0 * t_eff / LN2  # integral of 1000 exp(-l t)
    for t in (t_eff, 2.0 * t_eff):
        est = stp.hanscheid_tia(_mono(1000.0, t_eff, t), t)
        assert est == pytest.approx(true, rel=1e-12)
    # in between it overestimates, at most 2/(e ln2) - 1 = 6.1% at t = T_eff/ln2
    ts = np.linspace(1.01, 1.99, 99) * t_eff
    ratio = stp.hanscheid_tia(_mono(1000.0, t_eff, ts), ts) / true
    assert np.all(ratio > 1.0)
    assert ratio.max() <= 2 / (math.e * LN2) + 1e-12
    peak = stp.hanscheid_tia(_mono(1000.0, t_eff, t_eff / LN2), t_eff / LN2) / true
    assert peak == pytest.approx(2 / (math.e * LN2), rel=1e-12)
    # outside [T_eff, 2 T_eff] it underestimates
    for t in (0.5 * t_eff, 3.0 * t_eff):
        assert stp.hanscheid_tia(_mono(1000.0, t_eff, t), t) < true


def test_hanscheid_ten_percent_range_matches_the_paper():
    # ratio R(x) = 2 x e^-x / ln2, x = ln2 t/T_eff; the roots of R = 0.9 bound the 10% range
    def r(q):
        x = LN2 * q
        return 2 * x * math.exp(-x) / LN2 - 0.9

    lo, hi = brentq(r, 0.1, 1.0), brentq(r, 2.0, 5.0)
    # Hanscheid et al. quote about 0.75 to 2.4 (stp.HANSCHEID_RANGE)
    assert lo == pytest.approx(stp.HANSCHEID_RANGE[0], abs=0.03)
    assert hi == pytest.approx(stp.HANSCHEID_RANGE[1], abs=0.05)


@pytest.mark.parametrize("t", [1.0, 4.0, 24.0, 96.0, 400.0])
def test_madsen_exact_for_the_right_t_eff_at_any_time(t):
    t_eff = 42.0
    true = 250.0 * t_eff / LN2
    assert stp.madsen_tia(_mono(250.0, t_eff, t), t, t_eff) == pytest.approx(true, rel=1e-12)
    # and wrong by the predicted amount for a wrong T_eff
    est = stp.madsen_tia(_mono(250.0, t_eff, t), t, 1.2 * t_eff)
    lam, lam_w = LN2 / t_eff, LN2 / (1.2 * t_eff)
    assert est / true == pytest.approx(math.exp((lam_w - lam) * t) * lam / lam_w, rel=1e-12)


def test_madsen_least_sensitive_at_t_eff_over_ln2():
    # d/dT_eff of the Madsen estimate vanishes at t = T_eff/ln2 (Madsen et al. 2018)
    t_eff = 40.0
    t_best = t_eff / LN2
    a = _mono(1.0, t_eff, t_best)
    h = 1e-4 * t_eff
    d = (stp.madsen_tia(a, t_best, t_eff + h) - stp.madsen_tia(a, t_best, t_eff - h)) / (2 * h)
    assert abs(d) < 1e-8 * stp.madsen_tia(a, t_best, t_eff) / t_eff
    d_early = (stp.madsen_tia(a, 0.5 * t_best, t_eff + h) -
               stp.madsen_tia(a, 0.5 * t_best, t_eff - h))
    assert abs(d_early) > 1e-4


def test_population_table_and_overrides():
    assert stp.population_t_eff_h("lu177-psma-617", "Kidney") == 35.5
    assert stp.population_t_eff_h("lu177-dotatate", "Kidney") == 56.0
    assert stp.population_t_eff_h("lu177-psma-617", "Tumor1", {"Tumor1": 70.0}) == 70.0
    for (_, _), (v, source) in stp.POPULATION_T_EFF_H.items():
        assert v > 0 and source
    with pytest.raises(InputError, match="half-life-h Tumor1"):
        stp.population_t_eff_h("lu177-psma-617", "Tumor1")


def test_bad_input_and_early_scan_warning():
    with pytest.raises(InputError, match="> 0 h"):
        stp.hanscheid_tia(100.0, 0.0)
    with pytest.raises(InputError, match=">= 0 MBq"):
        stp.madsen_tia(-1.0, 24.0, 40.0)
    with pytest.raises(InputError, match="half-life must be > 0"):
        stp.madsen_tia(1.0, 24.0, 0.0)
    with pytest.warns(UserWarning, match="before the uptake peak"):
        stp.check_scan_time("Kidney", 2.0, peak_h=6.0)
    with pytest.warns(UserWarning, match="outside"):
        stp.check_scan_time("Kidney", 4.0, t_eff_h=35.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stp.check_scan_time("Kidney", 48.0, t_eff_h=35.5, peak_h=6.0) == []


def _write_obs(path, rows):
    path.write_text(OBS_HEADER + "".join(
        f"{r},{t},{a},{s},SPECT,lu177-psma-617\n" for r, t, a, s in rows))


def test_cli_classical_and_multi_round_trip(tmp_path, capsys):
    t_eff = {"Kidney": 35.5, "SG": 42.2}
    obs = tmp_path / "obs.csv"
    _write_obs(obs, [(r, 48.0, float(_mono(100.0, te, 48.0)), 5.0) for r, te in t_eff.items()])
    out = tmp_path / "tia.csv"
    assert main(["stp", "--observations", str(obs), "--method", "madsen", "--out",
                 str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["region", "tia_mbq_h"]
    for _, row in df.iterrows():  # exact: the curves are mono-exponential with the table T_eff
        assert row["tia_mbq_h"] == pytest.approx(100.0 * t_eff[row["region"]] / LN2, rel=1e-9)
    assert main(["stp", "--observations", str(obs), "--method", "hanscheid", "--out",
                 str(out)]) == 0
    df = pd.read_csv(out)
    k = df.set_index("region")["tia_mbq_h"]
    assert k["Kidney"] == pytest.approx(float(_mono(100.0, 35.5, 48.0)) * 96 / LN2, rel=1e-12)
    # multi: four scans of a mono-exponential kidney -> its TIA, with an interval around it
    times = (4.0, 24.0, 96.0, 168.0)
    _write_obs(obs, [("Kidney", t, float(_mono(100.0, 35.5, t)), 0.05 * float(
        _mono(100.0, 35.5, t))) for t in times])
    assert main(["stp", "--observations", str(obs), "--method", "multi", "--out",
                 str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["region", "tia_mbq_h", "tia_low", "tia_high"]
    r = df.iloc[0]
    assert r["tia_mbq_h"] == pytest.approx(100.0 * 35.5 / LN2, rel=1e-6)
    assert r["tia_low"] < r["tia_mbq_h"] < r["tia_high"]


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    obs = tmp_path / "obs.csv"
    out = tmp_path / "tia.csv"
    _write_obs(obs, [("Kidney", 24.0, 50.0, 5.0)])
    # a single point for the multi-time-point fit
    assert main(["stp", "--observations", str(obs), "--method", "multi", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert "single-time-point" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()
    # madsen for a region without a population T_eff
    _write_obs(obs, [("Tumor1", 24.0, 50.0, 5.0)])
    assert main(["stp", "--observations", str(obs), "--method", "madsen", "--out",
                 str(out)]) == 2
    assert "--half-life-h Tumor1" in capsys.readouterr().err
    assert main(["stp", "--observations", str(obs), "--method", "madsen", "--half-life-h",
                 "Tumor1=60", "--out", str(out)]) == 0
    out.unlink()
    # the twin method without a twin; two rows of one region for an STP method
    assert main(["stp", "--observations", str(obs), "--method", "twin", "--out", str(out)]) == 2
    assert "--twin" in capsys.readouterr().err
    _write_obs(obs, [("Kidney", 24.0, 50.0, 5.0), ("Kidney", 48.0, 40.0, 5.0)])
    assert main(["stp", "--observations", str(obs), "--method", "hanscheid", "--out",
                 str(out)]) == 2
    assert "one scan per region" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_cli_twin_round_trip(tmp_path, capsys):
    """A small prior-based TWIN.json (the population prior as the 'PET' posterior, carrying an
    early 0.1 h scan of the same administration as its fitted row) updated with one SPECT of a
    patient with 1.3x the median kidney receptor density, by each update (adaptive, the
    default: prior x early scan x SPECT; importance and laplace: twin x SPECT): the TIA must be
    close to that patient's true TIA, inside the interval, and an early scan is flagged. The
    truth and the draws of all three updates use one compiled solver (same padded batch, times
    and regimen)."""
    from calibration import Posterior, default_prior, model_spec, write_twin
    from pbpk_models.regimen import Administration, Regimen
    from pbpk_models.simulate import POPULATION_SETTINGS, simulate_batch
    from twin.stp_update import batch_bucket

    spec = model_spec("psma-pbrpk")
    names = ("Rden_Kidney", "lambdaRel_Kidney")
    prior = default_prior("psma-pbrpk", spec, names)
    reg = Regimen((Administration(0.0, "lu177-psma-617", 7400.0, 57.09),))
    # the truth: a patient with 1.3x the median kidney receptor density, solved in the padded
    # batch on the observation times (the compiled program the updates use)
    truth = np.exp(prior.mean_log) * np.array([1.3, 1.0])
    P = np.repeat(_params(spec, reg, names, truth), batch_bucket(401), axis=0)
    out = simulate_batch(spec, reg, P, np.array([0.1, 48.0]), days=120.0,
                         settings=POPULATION_SETTINGS)
    k = list(out["model"].regions).index("Kidney")
    a = np.asarray(out["activity_mbq"])[0, 0, k]
    true_tia = float(np.asarray(out["tia_mbq_h"])[0, 0, k])
    early = {"row": 0, "region": "Kidney", "time_h": 0.1, "radiopharmaceutical":
             "lu177-psma-617", "observed_mbq": float(a[0]),
             "sigma_mbq": 0.1 * float(a[0]) + 0.01, "predicted_mbq": float(a[0]), "z": 0.0}
    post = Posterior("psma-pbrpk", "corrected", names,
                     tuple(spec.parameter(n).unit for n in names), prior.mean_log,
                     prior.cov_log, prior, diagnostics={"residuals": [early]})
    twin_path = tmp_path / "twin.json"
    write_twin(twin_path, post, reg)
    obs = tmp_path / "obs.csv"
    # the SPECT at 48 h, plus a scan at 0.1 h: before the kidney's uptake peak, which is flagged
    _write_obs(obs, [("Kidney", 0.1, float(a[0]), 0.1 * float(a[0]) + 0.01),
                     ("Kidney", 48.0, float(a[1]), 0.1 * float(a[1]))])
    res = tmp_path / "tia.csv"
    for update in ("adaptive", "importance", "laplace"):
        assert main(["stp", "--observations", str(obs), "--method", "twin", "--twin",
                     str(twin_path), "--samples", "400", "--update", update,
                     "--out", str(res)]) == 0
        printed = capsys.readouterr().out
        assert "before the uptake peak" in printed
        if update == "adaptive":
            assert "target prior x PET x SPECT, 600 draws, effective sample size" in printed
        df = pd.read_csv(res)
        assert list(df.columns) == ["region", "tia_mbq_h", "tia_low", "tia_high"]
        row = df.iloc[0]
        assert row["tia_mbq_h"] == pytest.approx(true_tia, rel=0.10), update
        assert row["tia_low"] <= true_tia <= row["tia_high"], update


def _params(spec, reg, names, values):
    from pbpk_models.simulate import prepare

    model = prepare(spec, reg, np.array([1.0]), 120.0)[0]
    p = model.params_from({})
    for n, v in zip(names, values):
        p[model.parameter_names.index(n)] = v
    return p[None, :]


def test_literature_t_eff_lookup():
    assert stp.literature_t_eff_h("lu177-psma-617", "Kidney") == 35.5
    assert stp.literature_t_eff_h("LU177-DOTATATE", "Kidney") == 56.0
    # no checked lesion value: None, and Madsen then demands one
    assert stp.literature_t_eff_h("lu177-psma-617", "Tumor1") is None
    with pytest.raises(InputError, match="half-life"):
        stp.population_t_eff_h("lu177-dotatate", "Tumor2")
    assert stp.population_t_eff_h("lu177-dotatate", "Tumor2", {"Tumor2": 70.0}) == 70.0
    assert set(stp.RP_OF_MODEL) == {"psma-pbrpk", "sstr"}


def test_weighted_median_matches_numpy_and_bad_weights():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((101, 3))
    # equal weights, odd M: the ordinary median
    np.testing.assert_allclose(stp.weighted_median(v, np.ones(101)), np.median(v, axis=0))
    # integer weights = repeated values
    w = rng.integers(1, 4, size=101)
    rep = np.repeat(v, w, axis=0)
    lo = np.sort(rep, axis=0)[(len(rep) - 1) // 2]
    np.testing.assert_allclose(stp.weighted_median(v, w), lo)
    with pytest.raises(InputError):
        stp.weighted_median(v, -np.ones(101))
    with pytest.raises(InputError):
        stp.weighted_median(v, np.ones(5))


def test_importance_update_matches_the_conjugate_gaussian_posterior():
    """theta ~ N(0, 1) (the twin's prior), the scan measures y = theta + N(0, s^2), TIA = e^theta:
    the posterior of theta is N(y/(1+s^2), s^2/(1+s^2)), so the posterior median TIA is
    exp(y/(1+s^2)) (analytic)."""
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(200_000)
    s, y = 0.5, 0.8
    med, prior_med, ess = stp.importance_update(theta[:, None], np.exp(theta)[:, None],
                                                np.array([y]), np.array([s]))
    assert med[0] == pytest.approx(math.exp(y / (1 + s * s)), rel=0.01)
    assert prior_med[0] == pytest.approx(1.0, abs=0.01)
    # ESS of Gaussian weights: M sqrt(1 - r^2)... for this case M * sqrt(s^2 (s^2+2)) / (s^2+1)
    # times exp(-y^2 / ((s^2+1)(s^2+2))) (analytic second moment of the weights)
    expect = 200_000 * math.sqrt(s * s * (s * s + 2)) / (s * s + 1) * \
        math.exp(-y * y / ((s * s + 1) * (s * s + 2)))
    assert ess == pytest.approx(expect, rel=0.05)
    # failed draws are dropped; too few usable draws is an error
    ok = np.ones(200_000, bool)
    ok[:100_000] = False
    med2, _, _ = stp.importance_update(theta[:, None], np.exp(theta)[:, None], np.array([y]),
                                       np.array([s]), ok)
    assert med2[0] == pytest.approx(math.exp(y / (1 + s * s)), rel=0.02)
    with pytest.raises(InputError, match="usable draws"):
        stp.importance_update(theta[:5, None], theta[:5, None], np.array([y]), np.array([s]))
    with pytest.raises(InputError, match="sigma"):
        stp.importance_update(theta[:, None], theta[:, None], np.array([y]), np.array([0.0]))
