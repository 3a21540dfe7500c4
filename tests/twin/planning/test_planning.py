"""Planning: limits hold under an independent re-simulation, monotonicity, infeasibility,
bad input, CLI round trip. A small twin: the population prior as posterior (no fit needed),
2 cycles at most, 8 posterior samples; one compiled planner shared by the module (its two
Rosenbrock compiles dominate: the tests that use it are marked slow)."""

import math

import numpy as np
import pandas as pd
import pytest

from twin.errors import InputError, PlanInfeasible
from twin.planning import (Limit, Planner, PlanSettings, default_limits, parse_limit,
                           posterior_from_prior)

# levels = the CLI default, so the CLI test reuses the compiled surrogate
SETTINGS = PlanSettings(max_cycles=2, n_samples=8, interval_weeks=6.0)
LIMITS = ["Kidney:bed_gy<=12", "RedMarrow:dose_gy<=2"]


def test_parse_limits_and_sources():
    lim = parse_limit("Kidney:bed_gy<=40")
    assert lim == Limit("Kidney", "bed_gy", 40.0, lim.source) and "Bodei" in lim.source
    assert "Benua" in parse_limit("RedMarrow: dose_gy <= 2").source
    assert parse_limit("Liver:dose_gy<=30").source == "user-given"
    assert [str(x) for x in default_limits()] == ["Kidney:bed_gy<=40", "RedMarrow:dose_gy<=2"]
    assert str(default_limits(risk_factors=True)[0]) == "Kidney:bed_gy<=28"
    for bad in ("Kidney:bed<=40", "Kidney bed_gy<=40", "Kidney:bed_gy>=40", "Kidney:bed_gy<=x",
                "Kidney:bed_gy<=-1"):
        with pytest.raises(InputError):
            parse_limit(bad)


def test_settings_validation():
    with pytest.raises(InputError, match="contradictory"):
        PlanSettings(activity_gbq=(11.1, 3.7)).validate()
    with pytest.raises(InputError):
        PlanSettings(max_cycles=0).validate()
    with pytest.raises(InputError):
        PlanSettings(quantile=1.0).validate()


@pytest.fixture(scope="module")
def planner():
    post = posterior_from_prior("psma-pbrpk")
    return Planner(post, SETTINGS)


@pytest.fixture(scope="module")
def plan(planner):
    return planner.optimise(LIMITS)


def _replay(model, reg, P, quantile):
    """Independent replay of a regimen: Kvaerno5 ``pbpk_models.simulate`` of every row of P
    (row 0 the MAP, rows 1.. posterior samples) and the numpy Lea-Catcheside BED on a dense
    grid -> (q kidney BED, q red-marrow dose) over the sample rows. The grid is built the same
    way for every regimen (every administration time on it: a jump between two grid points
    would be smeared into a ramp by the piecewise-linear dose rate), so two 2-cycle plans at
    0 and 6 weeks share one compiled solve (here and in test_replan_cli_round_trip)."""
    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u
    from pbpk_models.simulate import simulate
    from twin.dosimetry.radiobiology import bed

    e = rn.energy_per_decay_mev("Lu-177")
    t_adm = reg.unique_times()
    grid = np.unique(np.concatenate([np.linspace(0.0, t_adm[-1] + 1440.0, 301), t_adm] +
                                    [t + np.geomspace(1 / 60, 336.0, 150) for t in t_adm]))
    kid, rm = [], []
    for p in P:
        sim = simulate(model, reg, p, times_h=grid, days=60.0, mode="full")
        m = model.region_masses_g(p)
        kid.append(bed(grid - grid[0], sim.activity("Kidney") * u.gy_per_mbq_h(e, m["Kidney"]),
                       2.6, 2.8))
        rm.append(sim.tia()["RedMarrow"] * u.gy_per_mbq_h(e, m["RedMarrow"]))
    return np.quantile(kid[1:], quantile), np.quantile(rm[1:], quantile)


@pytest.mark.slow
def test_plan_meets_limits_in_independent_simulation(planner, plan):
    """Re-simulate every posterior row with the Kvaerno5 solver (pbpk_models.simulate) and the
    numpy Lea-Catcheside BED on a dense grid; the limit quantiles must hold."""
    reg = plan.regimen
    assert 1 <= len(reg.administrations) <= 2
    acts = plan.activities_mbq
    assert np.all((acts >= 3700 - 1e-6) & (acts <= 11100 + 1e-6))
    q_kid, q_rm = _replay(planner.model, reg, planner.P, SETTINGS.quantile)
    assert q_kid <= 12.0
    assert q_rm <= 2.0
    # and the planner's own numbers agree with the independent ones
    assert plan.limit_values["Kidney:bed_gy<=12"] == pytest.approx(q_kid, rel=5e-3)


@pytest.mark.slow
def test_tightening_a_limit_never_raises_activity(planner, plan):
    acts = plan.activities_mbq
    prev = acts.sum()
    for value in (10.0, 7.0, 4.0):
        p2 = planner.optimise([f"Kidney:bed_gy<={value:g}", "RedMarrow:dose_gy<=2"])
        a2 = p2.activities_mbq
        assert a2.sum() <= prev + 1e-6
        assert p2.limit_values[f"Kidney:bed_gy<={value:g}"] <= value
        prev = a2.sum()
    # a loose limit gives the maximum: all cycles at the upper bound
    loose = planner.optimise(["Kidney:bed_gy<=200", "RedMarrow:dose_gy<=20"])
    np.testing.assert_allclose(loose.activities_mbq, [11100.0, 11100.0])
    assert loose.objective_gy >= plan.objective_gy


@pytest.mark.slow
def test_impossible_limit_names_it(planner):
    with pytest.raises(PlanInfeasible) as exc:
        planner.optimise(["Kidney:bed_gy<=40", "RedMarrow:dose_gy<=0.01"])
    assert exc.value.binding_limit == "RedMarrow:dose_gy<=0.01"
    assert "RedMarrow:dose_gy<=0.01" in str(exc.value)


@pytest.mark.slow
def test_bad_input(planner):
    with pytest.raises(InputError, match="unknown region"):
        planner.optimise(["Kidneys:bed_gy<=40"])
    with pytest.raises(InputError, match="no BED"):
        planner.optimise(["SG:bed_gy<=40"])
    with pytest.raises(InputError, match="in the past"):
        planner.optimise(LIMITS, fixed=([0.0], [7400.0]), start_h=-5.0, max_cycles=1)


@pytest.mark.slow
def test_summary_and_what_if(planner, plan):
    s = plan.summary()
    k = s[s.region == "Kidney"].iloc[0]
    assert k.limit == "Kidney:bed_gy<=12" and k.margin_gy >= 0
    assert k.dose_low <= k.dose_gy <= k.dose_high or k.dose_low <= k.dose_high
    assert s[s.lesion].shape[0] == 3
    # what-if of the plan itself reproduces its dosimetry
    d = planner.padded_what_if(plan.activities_mbq, plan.regimen.times_h, 2,
                               [plan.regimen.times_h[-1] + 1008.0])
    np.testing.assert_allclose(d.total("dose_gy"), plan.doses.total("dose_gy"), rtol=1e-10,
                               equal_nan=True)


@pytest.mark.slow
def test_cli_round_trip(tmp_path, planner):
    from calibration import write_twin
    from pbpk_models.regimen import Regimen
    from twin.cli import main

    twin = tmp_path / "TWIN.json"
    write_twin(twin, planner.posterior)
    out, summ, png = tmp_path / "PLAN.csv", tmp_path / "SUMMARY.csv", tmp_path / "plan.png"
    # bad input: one-line error, exit 2, no output
    assert main(["plan", "--twin", str(twin), "--limit", "Kidneys:bed_gy<=40", "--out",
                 str(out)]) == 2
    assert main(["plan", "--twin", str(twin), "--limit", "Kidney:bed_gy<=40",
                 "--activity-gbq", "11:4", "--out", str(out)]) == 2
    assert not out.exists()
    rc = main(["plan", "--twin", str(twin), "--limit", "Kidney:bed_gy<=12", "--limit",
               "RedMarrow:dose_gy<=2", "--max-cycles", "2", "--samples", "8", "--out", str(out),
               "--summary", str(summ), "--plot", str(png)])
    assert rc == 0
    reg = Regimen.from_csv(out)
    assert list(pd.read_csv(out).columns) == ["time_h", "radiopharmaceutical", "activity_mbq",
                                             "ligand_nmol"]
    assert 1 <= len(reg.administrations) <= 2
    sm = pd.read_csv(summ)
    assert (sm.dropna(subset=["margin_gy"]).margin_gy >= 0).all()
    assert png.stat().st_size > 1000
    kid = sm[sm.region == "Kidney"].iloc[0]
    assert math.isfinite(kid.bed_gy) and kid.limit == "Kidney:bed_gy<=12"
    # twin simulate replays PLAN.csv with dose_gy and bed_gy per region (MAP)
    sim = tmp_path / "SIM.csv"
    assert main(["simulate", "--twin", str(twin), "--regimen", str(out), "--samples", "8",
                 "--out", str(sim)]) == 0
    st = pd.read_csv(sim).set_index("region")
    assert {"dose_gy", "bed_gy"} <= set(st.columns)
    assert st.loc["Kidney", "bed_gy"] == pytest.approx(kid.bed_gy, rel=2e-3)
    assert st.loc["Kidney", "dose_gy"] == pytest.approx(kid.dose_gy, rel=1e-3)


def test_replan_rejects_a_regimen_in_the_past():
    from calibration import Observations
    from pbpk_models.regimen import Regimen
    from twin.planning import replan

    post = posterior_from_prior("psma-pbrpk")
    obs = Observations(np.array(["Kidney", "Kidney"], dtype=object), np.array([24.0, 168.0]),
                       np.array([100.0, 50.0]), np.array([15.0, 8.0]),
                       np.array(["SPECT", "SPECT"], dtype=object),
                       np.array(["lu177-psma-617"] * 2, dtype=object))
    delivered = Regimen.cycles("lu177-psma-617", [7400.0, 7400.0], 1008.0)
    with pytest.raises(InputError, match="in the past"):
        replan(post, obs, delivered, LIMITS, SETTINGS, next_h=100.0)
    with pytest.raises(InputError, match="nothing to re-plan"):
        replan(post, obs, delivered, LIMITS, SETTINGS, max_cycles=1)


@pytest.mark.slow
def test_interval_table(plan):
    from twin.planning import interval_table

    t = interval_table(plan.doses)
    kid = t[(t.region == "Kidney") & (t.quantity == "bed_gy")]
    n_cyc = len(plan.activities_mbq)
    assert list(kid.cycle) == [str(k + 1) for k in range(n_cyc)] + ["total"]
    assert (kid.low <= kid.high).all()
    per = kid[kid.cycle != "total"]["map"].sum()
    assert kid[kid.cycle == "total"]["map"].iloc[0] == pytest.approx(per)


# --- `twin replan` on the command line, and where a plan made from a twin starts ----------
# A small PET twin: truth = one draw of the population prior; a 68Ga-PSMA-11 PET at 1 h is
# simulated from it (calibration.synthetic_observations) and fitted with `twin fit`. `twin plan`
# (2 cycles at most, 8 posterior samples: the shapes compiled above, so the planner is reused)
# -> PLAN.csv; cycle-1 SPECT of the delivered first cycle simulated from the same truth;
# `twin replan` -> PLAN2.csv, checked as a regimen file that keeps cycle 1 as delivered and
# meets its limits when replayed independently (Kvaerno5 `pbpk_models.simulate` of every
# posterior row of the updated twin + the numpy Lea-Catcheside BED on a dense grid).

RP, PET = "lu177-psma-617", "ga68-psma-11"
CLI_LIMITS = ["--limit", "Kidney:bed_gy<=12", "--limit", "RedMarrow:dose_gy<=2"]
COLUMNS = ["time_h", "radiopharmaceutical", "activity_mbq", "ligand_nmol"]


def _truth():
    from calibration import default_prior, model_spec

    prior = default_prior("psma-pbrpk", model_spec("psma-pbrpk", "corrected"))
    return dict(zip(prior.names, np.exp(prior.sample_log(1, 7)[0])))


@pytest.fixture(scope="module")
def pet_twin(tmp_path_factory):
    from calibration import synthetic_observations
    from pbpk_models.regimen import Administration, Regimen
    from twin.cli import main

    d = tmp_path_factory.mktemp("replan")
    truth = _truth()
    pet = Regimen((Administration(0.0, PET, 150.0, 3.0),))
    design = [(r, 1.0, PET, "PET") for r in ("Kidney", "SG", "Liver", "Tumor1", "Tumor2",
                                             "TumorRest")]
    synthetic_observations(pet, design, truth, seed=3).to_csv(d / "PET.csv")
    pet.to_frame().to_csv(d / "PET_REGIMEN.csv", index=False)
    assert main(["fit", "--model", "psma-pbrpk", "--observations", str(d / "PET.csv"),
                 "--regimen", str(d / "PET_REGIMEN.csv"), "--starts", "1", "--max-nfev", "12",
                 "--out", str(d / "TWIN.json")]) == 0
    return d, truth


def _replay_quantiles(twin_path, plan_path, n_samples, quantile):
    """Independent replay (:func:`_replay`) of PLAN.csv on the rows the planner used."""
    from calibration import model_spec, read_twin
    from pbpk_models.model import compile_model
    from pbpk_models.regimen import Regimen
    from twin.dosimetry.organ import patient_params

    post, _ = read_twin(twin_path)
    reg = Regimen.from_csv(plan_path)
    model = compile_model(model_spec(post.model_name, post.variant), (RP,), "full")
    P = patient_params(model, post, n_samples, 0)  # the planner's rows (seed 0)
    return _replay(model, reg, P, quantile)


@pytest.mark.slow
def test_replan_cli_round_trip(pet_twin):
    from calibration import read_twin, synthetic_observations
    from pbpk_models.regimen import Regimen
    from twin.cli import main

    d, truth = pet_twin
    plan, plan2, twin2 = d / "PLAN.csv", d / "PLAN2.csv", d / "TWIN2.json"
    common = CLI_LIMITS + ["--samples", "8"]
    assert main(["plan", "--twin", str(d / "TWIN.json"), "--max-cycles", "2", "--out",
                 str(plan)] + common) == 0
    p1 = pd.read_csv(plan)
    # a pre-therapy PET twin (PET at 0 h): the plan's clock starts with cycle 1 at 0 h
    assert list(p1.columns) == COLUMNS and p1.time_h.iloc[0] == 0.0 and 1 <= len(p1) <= 2
    # cycle-1 SPECT of the delivered first cycle, from the truth
    c1 = Regimen.from_csv(plan)
    c1 = Regimen(c1.administrations[:1])
    design = [(r, t, RP, "SPECT") for r in ("Kidney", "SG", "Tumor1") for t in (24.0, 168.0)]
    obs = d / "CYCLE1.csv"
    synthetic_observations(c1, design, truth, seed=5).to_csv(obs)
    summ = d / "SUMMARY2.csv"
    assert main(["replan", "--twin", str(d / "TWIN.json"), "--observations", str(obs),
                 "--delivered", str(plan), "--twin-out", str(twin2), "--summary", str(summ),
                 "--starts", "1", "--max-nfev", "15", "--max-cycles", "2", "--out", str(plan2)]
                + common) == 0
    p2 = pd.read_csv(plan2)
    assert list(p2.columns) == COLUMNS
    Regimen.from_csv(plan2)  # a valid regimen file
    assert len(p2) == 2  # --max-cycles 2 in total: cycle 1 delivered, one re-planned
    # cycle 1 kept exactly as delivered; cycle 2 at its planned time, within the bounds
    pd.testing.assert_series_equal(p2.iloc[0], p1.iloc[0], check_names=False)
    assert p2.time_h.iloc[1] == (p1.time_h.iloc[1] if len(p1) == 2 else 6 * 168.0)
    assert 3700 - 1e-6 <= p2.activity_mbq.iloc[1] <= 11100 + 1e-6
    # the updated twin moved (the SPECT data were used)
    post1, _ = read_twin(d / "TWIN.json")
    post2, reg2 = read_twin(twin2)
    assert not np.allclose(post1.theta_map, post2.theta_map)
    assert len(reg2.administrations) == 1
    # the limits hold when PLAN2.csv is replayed independently on the updated twin
    q_kid, q_rm = _replay_quantiles(twin2, plan2, 8, 0.95)
    assert q_kid <= 12.0 and q_rm <= 2.0
    sm = pd.read_csv(summ).set_index("limit")
    assert sm.loc["Kidney:bed_gy<=12", "quantile_value_gy"] == pytest.approx(q_kid, rel=5e-3)


def test_replan_cli_bad_input(tmp_path, capsys):
    """Every case fails before any fitting or solving (cheap): one line, exit 2, no output."""
    from calibration import Observations, write_twin
    from pbpk_models.regimen import Regimen
    from twin.cli import main

    d = tmp_path
    write_twin(d / "TWIN.json", posterior_from_prior("psma-pbrpk"))
    out = d / "BAD.csv"
    obs = d / "OBS_OK.csv"
    Observations(np.array(["Kidney", "Kidney"], dtype=object), np.array([24.0, 168.0]),
                 np.array([100.0, 50.0]), np.array([15.0, 8.0]),
                 np.array(["SPECT", "SPECT"], dtype=object),
                 np.array([RP] * 2, dtype=object)).to_csv(obs)
    late = d / "LATE_PLAN.csv"  # the delivered cycle at 500 h: the observations precede it
    Regimen.cycles(RP, [7400.0, 7400.0], 1008.0).to_frame().assign(
        time_h=[500.0, 1508.0]).to_csv(late, index=False)
    past = d / "PAST_PLAN.csv"  # the next planned cycle (100 h) is before the SPECT (168 h)
    Regimen.cycles(RP, [7400.0, 7400.0], 100.0).to_frame().to_csv(past, index=False)
    good = d / "GOOD_PLAN.csv"
    Regimen.cycles(RP, [7400.0, 7400.0], 1008.0).to_frame().to_csv(good, index=False)
    base = ["replan", "--twin", str(d / "TWIN.json"), "--out", str(out)]
    cases = [
        (["--observations", str(obs), "--delivered", str(late)], "before the first delivered"),
        (["--observations", str(obs), "--delivered", str(past), "--delivered-cycles", "1"],
         "in the past"),
        (["--observations", str(obs), "--delivered", str(good), "--limit",
          "Kidneys:bed_gy<=40"], "unknown region"),
        (["--observations", str(obs), "--delivered", str(good), "--activity-gbq", "9:4"],
         "contradictory"),
        (["--observations", str(d / "missing.csv"), "--delivered", str(good)], "does not exist"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert msg in err and "Traceback" not in err and len(err.splitlines()) == 1, err
        assert not out.exists()


@pytest.mark.slow
def test_plan_starts_at_the_twins_therapy_time(tmp_path, planner, capsys):
    """A twin fitted to a therapy cycle (PET at 0 h, 7.4 GBq at 168 h, the demo's schedule):
    that cycle is delivered; PLAN.csv keeps it and the next cycle is one interval later; an
    earlier --start-h is in the past."""
    from calibration import write_twin
    from pbpk_models.regimen import Administration, Regimen
    from twin.cli import main

    d, post = tmp_path, planner.posterior
    reg = Regimen((Administration(0.0, PET, 150.0, 3.0),
                   Administration(168.0, RP, 7400.0, 60.0)))
    twin = d / "TWIN_THERAPY.json"
    write_twin(twin, post, reg)
    out = d / "PLAN_T.csv"
    assert main(["plan", "--twin", str(twin), "--max-cycles", "2", "--out", str(out)]
                + CLI_LIMITS + ["--samples", "8"]) == 0
    p = pd.read_csv(out)
    assert list(p.time_h) == [168.0, 168.0 + 6 * 168.0]
    assert p.activity_mbq.iloc[0] == 7400.0 and p.ligand_nmol.iloc[0] == 60.0  # as given
    for start, msg in (("100", "in the past"), ("168", "in the past"), ("-1", "in the past")):
        capsys.readouterr()
        bad = d / "PLAN_BAD.csv"
        assert main(["plan", "--twin", str(twin), "--max-cycles", "2", "--start-h", start,
                     "--out", str(bad)] + CLI_LIMITS) == 2
        assert msg in capsys.readouterr().err and not bad.exists()
    capsys.readouterr()
    assert main(["plan", "--twin", str(twin), "--max-cycles", "1", "--out", str(d / "X.csv")]
                + CLI_LIMITS) == 2
    assert "nothing left to plan" in capsys.readouterr().err


def test_therapy_schedule():
    from pbpk_models.regimen import Administration, Regimen
    from twin.errors import InputError
    from twin.planning import therapy_schedule

    pet = Regimen((Administration(0.0, PET, 150.0, 3.0),))
    fixed, start = therapy_schedule(pet, RP, 6.0)
    assert start == 0.0 and fixed[0].size == 0
    assert therapy_schedule(None, RP, 6.0)[1] == 0.0
    assert therapy_schedule(pet, RP, 6.0, start_h=168.0)[1] == 168.0
    both = Regimen((Administration(0.0, PET, 150.0, 3.0),
                    Administration(168.0, RP, 7400.0, 60.0)))
    fixed, start = therapy_schedule(both, RP, 6.0)
    assert start == 168.0 + 1008.0
    np.testing.assert_array_equal(fixed[0], [168.0])
    np.testing.assert_array_equal(fixed[2], [60.0])
    with pytest.raises(InputError, match="in the past"):
        therapy_schedule(both, RP, 6.0, start_h=150.0)
    with pytest.raises(InputError, match="in the past"):
        therapy_schedule(pet, RP, 6.0, start_h=-2.0)
