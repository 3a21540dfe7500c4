"""Organ dosimetry engine (twin.dosimetry.organ) against independent references.

- the JAX Lea-Catcheside scan against the closed-form mono-exponential BED (Dale 1985) and the
  numpy implementation;
- TIA against pbpk_models.simulate.simulate (Kvaerno5, another solver), per cycle and in total;
- dose = TIA x S (conservation of the self-dose definition);
- kidney BED against the numpy path of ``twin simulate --regimen`` (add_regimen_dose);
- saturable binding: doubling the activity does not double the dose.
One compiled function (2 cycles, 48 points, 2 patients) serves all PBPK tests (marked slow:
the Rosenbrock and Kvaerno5 compiles dominate).
"""

import math

import numpy as np
import pytest

from twin.dosimetry import organ
from twin.dosimetry import radiobiology as rb
from twin.errors import InputError

RP = "lu177-psma-617"
INTERVAL_H = 6 * 168.0
PTS = 48


def test_scan_matches_closed_form_and_numpy():
    import jax.numpy as jnp

    lam = math.log(2) / 45.0
    t_rep, ab = 2.8, 2.6
    grid = organ.cycle_grid([0.0], 60 * 24.0, 64)[0]
    dose_total = 20.0
    rate = dose_total * lam * np.exp(-lam * grid)
    mu = math.log(2) / t_rep
    z, _ = organ._lea_catcheside_scan(jnp.asarray(grid), jnp.asarray(rate[:, None]),
                                      jnp.asarray([mu]), jnp.zeros(1))
    d = dose_total * (1 - math.exp(-lam * grid[-1]))
    ref = rb.bed_monoexponential(d, lam, ab, t_rep)  # the curve is cut at 60 d (D ~ 99.99%)
    assert d + float(z[0]) / ab == pytest.approx(float(ref), rel=2e-3)
    d_np, z_np = rb.lea_catcheside(grid, rate, t_rep)
    assert float(z[0]) == pytest.approx(z_np, rel=1e-10)
    # carrying q across two grids equals one scan over the joined grid
    half = len(grid) // 2
    z1, q1 = organ._lea_catcheside_scan(jnp.asarray(grid[:half + 1]),
                                        jnp.asarray(rate[:half + 1, None]),
                                        jnp.asarray([mu]), jnp.zeros(1))
    z2, _ = organ._lea_catcheside_scan(jnp.asarray(grid[half:]), jnp.asarray(rate[half:, None]),
                                       jnp.asarray([mu]), q1)
    assert float(z1[0] + z2[0]) == pytest.approx(float(z[0]), rel=1e-12)


def test_cycle_grid_and_tissues():
    g = organ.cycle_grid([0.0, 100.0], 500.0, 10)
    assert g.shape == (2, 10)
    assert g[0, 0] == 0 and g[0, -1] == 100.0 and g[1, 0] == 100.0 and g[1, -1] == 500.0
    assert np.all(np.diff(g, axis=1) > 0)
    t = organ.default_tissues(("Kidney", "SG", "RedMarrow", "Tumor1", "Liver"))
    assert t == {"Kidney": "kidney", "SG": "salivary", "RedMarrow": "red_marrow",
                 "Tumor1": "tumour"}
    with pytest.raises(InputError):
        organ.cycle_grid([0.0, 0.01], 10.0, 10)


@pytest.fixture(scope="module")
def setup():
    from pbpk_models.library import build_spec
    from pbpk_models.model import compile_model
    from pbpk_models.regimen import Regimen

    spec = build_spec("psma-pbrpk")
    model = compile_model(spec, (RP,), "full")
    P = np.tile(model.default_params(), (2, 1))
    P[1, model.parameter_names.index("Rden_Kidney")] *= 2.0
    P[1, model.parameter_names.index("V_Kidney")] *= 0.8
    reg = Regimen.cycles(RP, [7400.0, 7400.0], INTERVAL_H)
    res = organ.organ_doses(model, reg, P, points_per_cycle=PTS)
    return spec, model, P, reg, res


@pytest.fixture(scope="module")
def kvaerno(setup):
    """The numpy/Kvaerno5 path of ``twin simulate --regimen`` for both patients (one compile)."""
    from pbpk_models.simulate import simulate
    from twin.cli.simulate import regimen_time_grid

    spec, model, P, reg, res = setup
    grid = np.union1d(regimen_time_grid(reg, 60.0), [INTERVAL_H])
    return [simulate(model, reg, P[i], times_h=grid, days=60.0, mode="full") for i in range(2)]


@pytest.mark.slow
def test_tia_against_kvaerno_simulation_and_conservation(setup, kvaerno):
    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u

    spec, model, P, reg, res = setup
    assert res.ok.all()
    assert res.tia_mbq_h.shape == (2, 2, len(model.regions))
    for i, full in enumerate(kvaerno):
        np.testing.assert_allclose(res.total("tia_mbq_h")[i], full.tia_mbq_h[0], rtol=2e-4,
                                   atol=1e-3)
        # cycle 1: the time-integral states at the second administration
        k = int(np.searchsorted(full.times_h, INTERVAL_H))
        acc = full.states[k, model.acc_offset:model.acc_offset + len(model.regions)]
        np.testing.assert_allclose(res.tia_mbq_h[i, 0], acc * model.mbq_per_nmol[0], rtol=2e-4,
                                   atol=1e-3)
    # dose = TIA x S with the patient's own masses
    e = rn.energy_per_decay_mev("Lu-177")
    for i in range(2):
        masses = model.region_masses_g(P[i])
        for j, r in enumerate(model.regions):
            if r in masses:
                assert res.masses_g[i, j] == pytest.approx(masses[r], rel=1e-12)
                np.testing.assert_allclose(res.dose_gy[i, :, j],
                                           res.tia_mbq_h[i, :, j] * u.gy_per_mbq_h(e, masses[r]),
                                           rtol=1e-12)
            else:
                assert np.all(np.isnan(res.dose_gy[i, :, j]))


@pytest.mark.slow
def test_kidney_bed_against_numpy_simulate_path(setup, kvaerno):
    from pbpk_models import radionuclides as rn
    from twin.cli.simulate import add_regimen_dose, region_table

    spec, model, P, reg, res = setup
    e = rn.energy_per_decay_mev("Lu-177")
    k = model.regions.index("Kidney")
    for i, sim in enumerate(kvaerno):
        tab = add_regimen_dose(region_table(sim, e), sim, e).set_index("region")
        assert res.total("dose_gy")[i, k] == pytest.approx(tab.loc["Kidney", "dose_gy"],
                                                           rel=1e-3)
        assert res.total("bed_gy")[i, k] == pytest.approx(tab.loc["Kidney", "bed_gy"], rel=2e-3)
    # BED > dose, and the two cycles' BEDs add up to the total
    assert np.all(res.bed_gy[:, :, k] > res.dose_gy[:, :, k])
    assert res.cumulative("bed_gy")[0, -1, k] == pytest.approx(res.total("bed_gy")[0, k])
    # regions without a repair half-time have no BED; tumour alpha/beta is cited
    assert np.all(np.isnan(res.bed_gy[:, :, model.regions.index("SG")]))
    assert res.alpha_beta_gy[model.regions.index("Tumor1")] == 1.5


@pytest.mark.slow
def test_user_repair_half_time_and_bad_input(setup):
    spec, model, P, reg, res = setup
    sg = model.regions.index("SG")
    r2 = organ.organ_doses(model, reg, P, points_per_cycle=PTS, repair_half_time_h={"SG": 1.0})
    assert np.all(r2.bed_gy[:, :, sg] > r2.dose_gy[:, :, sg])
    np.testing.assert_allclose(r2.dose_gy, res.dose_gy, equal_nan=True)
    with pytest.raises(InputError, match="unknown region"):
        organ.organ_doses(model, reg, P, repair_half_time_h={"Kidneys": 1.0})
    with pytest.raises(InputError):
        organ.organ_doses(model, reg, P[:, :5])
    frame = res.to_frame(patient=0)
    assert set(frame["cycle"]) == {1, 2} and "cum_bed_gy" in frame


@pytest.mark.slow
def test_saturation_doubling_activity_does_not_double_dose(setup):
    from pbpk_models.regimen import Regimen

    spec, model, P, reg, res = setup
    reg2 = Regimen.cycles(RP, [14800.0, 14800.0], INTERVAL_H)
    r2 = organ.organ_doses(model, reg2, P, points_per_cycle=PTS)
    for region in ("Kidney", "Tumor1", "SG"):
        j = model.regions.index(region)
        ratio = r2.total("dose_gy")[:, j] / res.total("dose_gy")[:, j]
        assert np.all(ratio < 1.98) and np.all(ratio > 1.0), (region, ratio)
