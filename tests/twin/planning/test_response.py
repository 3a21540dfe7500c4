"""Lesion response between cycles (twin.planning.response) and its use by the planner.

Independent references: a scipy integration of the cell-population ODE under a mono-exponential
dose rate (the LQ regression model), the closed-form LQ survival with the Dale BED, hand-scaled
parameters run through ``organ_doses`` directly (the multi-cycle what-if), and the planner without
a response (None keeps the old numbers). Model parameters in these tests are test values, not
literature values (alpha 0.05/Gy, clearance half-time 1000 h).
"""

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from twin.errors import InputError
from twin.planning.response import (PRESETS, LQRegression, PerCycleDecrease, ResponseState,
                                    parse_lesion_response, search_factors)

LN2 = math.log(2.0)


# -- the pure models ----------------------------------------------------------------------
def test_parse_presets_and_errors():
    r = parse_lesion_response("roth2022-g2")
    assert isinstance(r, PerCycleDecrease) and r.rate == 0.14 and "Roth" in r.source
    assert PRESETS["roth2022-g1"].rate == 0.06
    assert parse_lesion_response(None) is None and parse_lesion_response("none") is None
    assert parse_lesion_response("per-cycle:rate=0.1").rate == 0.1
    lq = parse_lesion_response("lq:alpha_gy=0.05,clearance_half_time_h=1000,doubling_time_h=900")
    assert (lq.alpha_gy, lq.clearance_half_time_h, lq.doubling_time_h) == (0.05, 1000.0, 900.0)
    for bad in ("roth", "lq:alpha_gy=0.1", "lq:alpha_gy=x,clearance_half_time_h=1",
                "per-cycle:rate=1.2", "per-cycle:", "lq:alpha_gy=-1,clearance_half_time_h=5",
                "per-cycle:rate=0.1,alpha_gy=2"):
        with pytest.raises(InputError):
            parse_lesion_response(bad)


def _ode_cells(doses, times, t_eff_h, alpha, t_c, t_d, t_end):
    """Viable and doomed fractions from dv/dt = -alpha Ddot v + lg v,
    dd/dt = alpha Ddot v - lc d, Ddot a sum of mono-exponential dose rates (one per cycle)."""
    lam, lc = LN2 / t_eff_h, LN2 / t_c
    lg = 0.0 if t_d is None else LN2 / t_d

    def rate(t):
        return sum(D * lam * math.exp(-lam * (t - t0)) for D, t0 in zip(doses, times) if t >= t0)

    def f(t, y):
        v, d = y
        k = alpha * rate(t)
        return [-k * v + lg * v, k * v - lc * d]

    out, y, t_prev = [], [1.0, 0.0], 0.0
    for t_next in list(times[1:]) + [t_end]:  # integrate piecewise so each pulse starts cleanly
        sol = solve_ivp(f, (t_prev, t_next), y, method="LSODA", rtol=1e-10, atol=1e-13)
        y, t_prev = sol.y[:, -1], t_next
        out.append(y.copy())
    return out  # states just before each next cycle (and at t_end)


@pytest.mark.parametrize("t_d", [None, 2000.0])
def test_lq_regression_against_cell_ode(t_d):
    """Two cycles 6 weeks apart, T_eff 40 h (dose delivered within days), clearance 2000 h.
    The viable fraction is exact (up to the dose-rate tail beyond 6 weeks, e^-17); the model
    clears doomed cells from the administration, the ODE from their death (on average T_eff/ln2
    later; meanwhile the survivors also regrow), so the doomed fraction agrees within
    exp((lc + lg) T_eff / ln2) - 1 (2% without regrowth, 4% with)."""
    doses, times, t_eff, alpha, t_c = [8.0, 6.0], [0.0, 1008.0], 40.0, 0.1, 2000.0
    ode = _ode_cells(doses, times, t_eff, alpha, t_c, t_d, 2016.0)
    model = LQRegression(alpha, t_c, t_d)
    lg = 0.0 if t_d is None else LN2 / t_d
    tol = math.exp((LN2 / t_c + lg) * t_eff / LN2) - 1
    st = ResponseState.initial(1, 1)
    for k, D in enumerate(doses):
        st = model.advance(st, np.array([[D]]), None, times[1] - times[0])
        v_ode, d_ode = ode[k]
        assert st.viable[0, 0] == pytest.approx(v_ode, rel=1e-6)
        assert st.doomed[0, 0] == pytest.approx(d_ode, rel=tol)
        assert st.doomed[0, 0] <= d_ode  # cleared from the administration: never more
    rden, vol = st.factors()
    assert rden[0, 0] == pytest.approx(ode[1][0] / ode[1].sum(), rel=tol)
    assert 0 < rden[0, 0] < 1 and 0 < vol[0, 0] < 1


def test_lq_survival_uses_bed_when_given():
    """S = exp(-alpha BED) with the closed-form BED of a mono-exponential dose rate (Dale 1985:
    BED = D (1 + D lam / ((lam + mu) alpha/beta))); without a BED (NaN: no repair half-time),
    the alpha term only."""
    D, t_eff, t_rep, ab, alpha = np.array([[10.0, 30.0]]), 60.0, 1.5, 1.5, 0.03
    lam, mu = LN2 / t_eff, LN2 / t_rep
    bed = D * (1 + D * lam / ((lam + mu) * ab))
    m = LQRegression(alpha, 500.0)
    np.testing.assert_allclose(m.survival(D, bed), np.exp(-alpha * bed), rtol=1e-14)
    np.testing.assert_allclose(m.survival(D, np.full_like(D, np.nan)), np.exp(-alpha * D),
                               rtol=1e-14)
    # one cycle, 6 weeks: the hand formula of the receptor density and volume factors
    st = m.advance(ResponseState.initial(1, 2), D, bed, 1008.0)
    S, c = np.exp(-alpha * bed), 2.0 ** (-1008.0 / 500.0)
    rden, vol = st.factors()
    np.testing.assert_allclose(vol, S + (1 - S) * c, rtol=1e-14)
    np.testing.assert_allclose(rden, S / (S + (1 - S) * c), rtol=1e-14)


def test_per_cycle_decrease_and_search_factors():
    m = PerCycleDecrease(0.14)
    st = ResponseState.initial(3, 2)
    for k in range(1, 4):
        st = m.advance(st, np.ones((3, 2)), None, 1008.0)
        rden, vol = st.factors()
        np.testing.assert_allclose(rden, 0.86 ** k, rtol=1e-14)
        np.testing.assert_allclose(vol, 1.0, rtol=1e-14)
    g = search_factors(m, ResponseState.initial(2, 1), np.ones((4, 2, 1)), np.ones((4, 2, 1)),
                       3, 1008.0)
    np.testing.assert_allclose(g[:, 0, 0, 0], [1.0, 0.86, 0.86 ** 2], rtol=1e-14)
    # LQ: g_2 from the surrogate dose scaled by g_1 = 1 (hand formula)
    lq = LQRegression(0.05, 1000.0)
    d = np.array([[[10.0]]])
    g = search_factors(lq, ResponseState.initial(1, 1), d, np.full_like(d, np.nan), 2, 1008.0)
    S, c = math.exp(-0.5), 2.0 ** (-1008.0 / 1000.0)
    assert g[1, 0, 0, 0] == pytest.approx(S / (S + (1 - S) * c), rel=1e-14)


# -- in the planner -------------------------------------------------------------------------
LQ = "lq:alpha_gy=0.05,clearance_half_time_h=1000"


@pytest.fixture(scope="module")
def planners():
    from twin.planning import Planner, PlanSettings, posterior_from_prior

    post = posterior_from_prior("psma-pbrpk")
    # the settings of test_planning.py: same shapes, so compiled solves are shared in one process
    s = PlanSettings(max_cycles=2, n_samples=8, interval_weeks=6.0)
    return Planner(post, s, lesion_response=LQ), Planner(post, s, lesion_response=None)


def test_none_reproduces_old_numbers(planners):
    """lesion_response=None: what_if is organ_doses of the regimen on the twin's rows, as before
    (bitwise). (A one-cycle regimen keeps this test to the one compiled solve the response path
    also uses; the planner's multi-cycle behaviour without a response is covered, unchanged, by
    test_planning.py.)"""
    from twin.dosimetry.organ import organ_doses

    _, p0 = planners
    reg = p0.regimen([7400.0], [0.0])
    d = p0.what_if(reg)
    ref = organ_doses(p0.model, reg, p0.P, radiopharmaceutical=p0.rp, points_per_cycle=p0.
                      settings.points_per_cycle, days=p0.settings.days, settings=p0.solver)
    for k in ("tia_mbq_h", "dose_gy", "bed_gy"):
        np.testing.assert_array_equal(d[k], ref[k])
    assert p0.lesion_response is None


def test_dose_per_gbq_falls_in_later_cycles(planners):
    """Two cycles of 7.4 GBq with the LQ response: cycle 1 as without a response; cycle 2 equals
    organ_doses with Rden and V of the lesions scaled by the hand-computed factors from cycle 1's
    lesion dose; the lesion dose per GBq falls; the kidney dose rises (tumour sink effect)."""
    from twin.dosimetry.organ import organ_doses

    p, _ = planners
    interval = 1008.0
    d = p.what_if(p.regimen([7400.0, 7400.0], [0.0, interval]))
    one = p.regimen([7400.0], [0.0])
    kw = dict(radiopharmaceutical=p.rp, points_per_cycle=p.settings.points_per_cycle,
              days=p.settings.days, settings=p.solver)
    c1 = organ_doses(p.model, one, p.P, **kw)
    np.testing.assert_allclose(d.dose_gy[:, 0], c1.dose_gy[:, 0], rtol=1e-12)
    L = [p.regions.index(r) for r in p.lesions]
    D1 = c1.dose_gy[:, 0, L]                                  # tumour: no BED -> alpha term
    S, c = np.exp(-0.05 * D1), 2.0 ** (-interval / 1000.0)
    vol = S + (1 - S) * c
    P2 = p.P.copy()
    names = list(p.model.parameter_names)
    for j, r in enumerate(p.lesions):
        P2[:, names.index("Rden_" + r)] *= S[:, j] / vol[:, j]
        P2[:, names.index("V_" + r)] *= vol[:, j]
    c2 = organ_doses(p.model, one, P2, **kw)
    np.testing.assert_allclose(d.dose_gy[:, 1], c2.dose_gy[:, 0], rtol=1e-12)
    ok = d.ok
    # at the MAP every lesion's dose per GBq falls; in every posterior row the summed lesion
    # dose falls (a lightly treated lesion can gain a little when the others lose receptors:
    # less competition for the ligand, the tumour sink effect)
    assert np.all(d.dose_gy[0, 1, L] < d.dose_gy[0, 0, L])
    assert np.all(d.dose_gy[ok, 1][:, L].sum(axis=1) < d.dose_gy[ok, 0][:, L].sum(axis=1))
    # with saturable binding the dose falls less than the receptor density
    ratio = d.dose_gy[ok, 1][:, L] / d.dose_gy[ok, 0][:, L]
    assert np.all(ratio >= (S / vol)[ok] - 1e-9)
    # sink effect: with fewer tumour receptors more ligand reaches the kidneys
    k = p.regions.index("Kidney")
    assert np.all(d.dose_gy[ok, 1, k] >= d.dose_gy[ok, 0, k] * (1 - 1e-9))


@pytest.mark.slow
def test_plan_with_response_meets_limits(planners):
    """optimise with the LQ response: limits hold at the quantile in the plan's own (response)
    simulation, the lesion dose per GBq falls cycle by cycle, and the reported objective is that
    simulation's."""
    p, _ = planners
    limits = ["Kidney:bed_gy<=12", "RedMarrow:dose_gy<=2"]
    plan = p.optimise(limits)
    d = plan.doses
    for lim in plan.limits:
        j = p.regions.index(lim.region)
        v = np.quantile(d.total(lim.quantity)[1:, j][d.ok[1:]], plan.quantile)
        assert v <= lim.value
    if len(plan.activities_mbq) > 1:
        L = [p.regions.index(r) for r in p.lesions]
        per_gbq = d.dose_gy[0][:, L] / plan.activities_mbq[:, None]
        assert np.all(np.diff(per_gbq, axis=0) < 0)
    # the reported objective is that of the response simulation
    les = d.total("dose_gy")[:, [p.regions.index(r) for r in p.lesions]].mean(axis=1)
    keep = d.ok.copy()
    keep[0] = False
    assert plan.objective_gy == pytest.approx(les[keep].mean(), rel=1e-12)
    # re-planning form: one delivered cycle kept, the next one planned after its response
    plan2 = p.optimise(limits, fixed=([0.0], [7400.0]), max_cycles=1)
    assert plan2.n_fixed == 1 and plan2.activities_mbq[0] == 7400.0
    if len(plan2.activities_mbq) == 2:  # the new cycle's lesion dose is below the same
        from twin.dosimetry.organ import organ_doses  # activity's without the response

        a2 = plan2.activities_mbq[1]
        ref = organ_doses(p.model, p.regimen([a2], [0.0]), p.P, radiopharmaceutical=p.rp,
                          points_per_cycle=p.settings.points_per_cycle, days=p.settings.days,
                          settings=p.solver)
        L = [p.regions.index(r) for r in p.lesions]
        assert plan2.doses.dose_gy[0, 1, L].sum() < ref.dose_gy[0, 0, L].sum()


def test_cli_rejects_bad_lesion_response(tmp_path, capsys):
    from twin.cli import main

    twin = tmp_path / "TWIN.json"
    twin.write_text("{}")
    out = tmp_path / "PLAN.csv"
    rc = main(["plan", "--twin", str(twin), "--lesion-response", "lq:alpha_gy=0.1",
               "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert "clearance_half_time_h" in capsys.readouterr().err
