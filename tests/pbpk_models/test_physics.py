"""Conservation laws, pure physical decay, closed forms, saturation, and the total-ligand form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from scipy.linalg import expm

from pbpk_models import radionuclides as rn
from pbpk_models.model import compile_model
from pbpk_models.regimen import Administration, Regimen
from pbpk_models.simulate import SolverSettings, simulate, simulate_batch
from pbpk_models.spec import Compartment, ModelSpec, Parameter, Transfer

TIGHT = SolverSettings(rtol=1e-10, atol=1e-13, max_steps=100000)
TIMES = np.array([0.1, 1.0, 6.0, 24.0, 72.0, 168.0, 400.0, 900.0, 1440.0])


def test_ligand_amount_is_conserved_at_all_times(psma_corrected):
    regimen = Regimen.cycles("lu177-psma-617", [7400.0, 7400.0], interval_h=300.0)
    res = simulate(psma_corrected, regimen, times_h=TIMES, settings=TIGHT, mode="full")
    administered = np.where(TIMES >= 300.0, 2, 1) * regimen.administrations[0].ligand_nmol
    np.testing.assert_allclose(res.total_nmol, administered, rtol=1e-8)


def test_total_form_conserves_and_equals_full_form(psma_corrected):
    regimen = Regimen.single("lu177-psma-617", 7400.0)
    full = simulate(psma_corrected, regimen, times_h=TIMES, settings=TIGHT, mode="full")
    total = simulate(psma_corrected, regimen, times_h=TIMES, settings=TIGHT, mode="total")
    np.testing.assert_allclose(total.total_nmol, regimen.administrations[0].ligand_nmol,
                               rtol=1e-8)
    np.testing.assert_allclose(total.tia_mbq_h, full.tia_mbq_h, rtol=1e-7)
    big = full.activity_mbq > 1e-7 * 7400.0
    np.testing.assert_allclose(total.activity_mbq[big], full.activity_mbq[big], rtol=1e-6)


def test_without_biological_clearance_activity_decays_physically(psma_corrected):
    """No filtration and no release: nothing leaves the body, total activity = A0 exp(-lambda t)."""
    names = [p.name for p in psma_corrected.parameters if p.name.startswith("lambdaRel_")]
    spec = psma_corrected.with_values({"TER_Kidney": 0.0, **{n: 0.0 for n in names}})
    regimen = Regimen.single("lu177-psma-617", 7400.0)
    res = simulate(spec, regimen, times_h=TIMES, settings=TIGHT, mode="full")
    lam = rn.decay_constant_per_h("Lu-177")
    body = res.activity_mbq[0].sum(axis=0)
    np.testing.assert_allclose(body, 7400.0 * np.exp(-lam * TIMES), rtol=1e-8)
    t_end = res.t_end_h
    np.testing.assert_allclose(res.tia_mbq_h[0].sum(), 7400.0 / lam * (1 - np.exp(-lam * t_end)),
                               rtol=1e-8)


def _two_compartment_spec():
    """A linear two-compartment model in the language, for a closed form by expm."""
    S = sp.Symbol
    return ModelSpec(
        name="two-comp", variant="test", description="test model",
        parameters=(Parameter("k12", 0.3, "1/h"), Parameter("k21", 0.1, "1/h"),
                    Parameter("kel", 0.05, "1/h")),
        derived={}, compartments=(Compartment("Central", "Central", sp.Integer(1000)),
                                  Compartment("Tissue", "Tissue", sp.Integer(500))),
        transfers=(Transfer("Central", "Tissue", S("k12")), Transfer("Tissue", "Central", S("k21")),
                   Transfer("Central", "Urine", S("kel"))),
        bindings=(), sinks=("Urine",), dosing_compartment="Central", principal_ligand="psma-617",
        ligand_parameters=frozenset({"kel"}), default_radiopharmaceutical="lu177-psma-617")


def test_linear_model_matches_matrix_exponential():
    spec = _two_compartment_spec()
    regimen = Regimen.single("lu177-psma-617", 1000.0, ligand_nmol=5.0)
    res = simulate(spec, regimen, times_h=TIMES[:6], days=10, settings=TIGHT)
    lam = rn.decay_constant_per_h("Lu-177")
    A = np.array([[-0.3 - 0.05 - lam, 0.1], [0.3, -0.1 - lam]])
    y0 = np.array([1000.0, 0.0])
    expected = np.array([expm(A * t) @ y0 for t in TIMES[:6]]).T
    np.testing.assert_allclose(res.activity_mbq[0], expected, rtol=1e-8)
    # exact TIA: integral of expm(A t) y0 from 0 to T = A^-1 (expm(A T) - I) y0
    T = res.t_end_h
    tia = np.linalg.solve(A, (expm(A * T) - np.eye(2)) @ y0)
    np.testing.assert_allclose(res.tia_mbq_h[0], tia, rtol=1e-8)


def test_more_cold_ligand_lowers_tumour_uptake_per_mbq(psma_corrected):
    """Saturable binding: the paper's non-linearity (Fele-Paranj et al. 2024, Begum 2018)."""
    low = simulate(psma_corrected, Regimen.single("lu177-psma-617", 7400.0, ligand_nmol=15.0))
    high = simulate(psma_corrected, Regimen.single("lu177-psma-617", 7400.0, ligand_nmol=300.0))
    for region in ("Tumor1", "Tumor2", "TumorRest", "Kidney", "SG"):
        assert high.tiac_h()[region] < low.tiac_h()[region], region
    # and doubling the activity at fixed specific activity does not double tumour TIA
    double = simulate(psma_corrected, Regimen.single("lu177-psma-617", 14800.0))
    single = simulate(psma_corrected, Regimen.single("lu177-psma-617", 7400.0))
    assert double.tia()["TumorRest"] < 2 * single.tia()["TumorRest"] * 0.99


def test_batch_equals_single_simulations(psma_corrected):
    regimen = Regimen.single("lu177-psma-617", 7400.0)
    model = compile_model(psma_corrected, ("lu177-psma-617",), "total")
    rng = np.random.default_rng(1)
    idx = [model.parameter_names.index(n) for n in ("Rden_Kidney", "lambdaRel_Kidney", "Rden_SG")]
    P = np.tile(model.default_params(), (3, 1))
    P[:, idx] *= np.exp(0.3 * rng.standard_normal((3, len(idx))))
    from pbpk_models.simulate import POPULATION_SETTINGS

    batch = simulate_batch(model, regimen, P, times_h=TIMES)  # Rosenbrock, rtol 1e-6
    assert bool(np.all(batch["ok"]))
    for i in range(3):
        one = simulate(model, regimen, params=P[i], times_h=TIMES, settings=POPULATION_SETTINGS)
        np.testing.assert_allclose(np.asarray(batch["tia_mbq_h"][i]), one.tia_mbq_h, rtol=1e-9)
        # and the population solver agrees with Kvaerno5 at tight tolerance
        tight = simulate(model, regimen, params=P[i], times_h=TIMES, settings=TIGHT)
        np.testing.assert_allclose(np.asarray(batch["tia_mbq_h"][i]), tight.tia_mbq_h,
                                   rtol=1e-5)


GRAD_NAMES = ("Rden_Kidney", "lambdaRel_Kidney", "k_off", "Rden_TumorRest")


@pytest.fixture(scope="module")
def kidney_tia_gradient(psma_corrected):
    """log TIA_Kidney as a function of the log of the GRAD_NAMES parameters, and its gradient
    by reverse mode through the stiff solve (one compiled backward pass for all four)."""
    from pbpk_models.simulate import jitted_core, prepare

    regimen = Regimen.single("lu177-psma-617", 7400.0)
    model, t_adm, hot, cold, ts, t_end = prepare(psma_corrected, regimen, np.array([24.0]), 30)
    core = jitted_core(model, 1, TIGHT)
    idx = jnp.asarray([model.parameter_names.index(n) for n in GRAD_NAMES])
    p0 = jnp.asarray(model.default_params())
    k = model.regions.index("Kidney")

    def f(logp):
        p = p0.at[idx].set(jnp.exp(logp))
        return jnp.log(core(p, t_adm, hot, cold, ts, t_end)["tia_nmol_h"][0, k])

    x0 = jnp.log(p0[idx])
    return f, x0, np.asarray(jax.grad(f)(x0))


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_gradient_matches_finite_differences(kidney_tia_gradient, name):
    """d log TIA_Kidney / d log p through the stiff solve vs central differences."""
    f, x0, g = kidney_tia_gradient
    i = GRAD_NAMES.index(name)
    h = 1e-4
    e = jnp.zeros_like(x0).at[i].set(h)
    fd = (float(f(x0 + e)) - float(f(x0 - e))) / (2 * h)
    assert g[i] == pytest.approx(fd, rel=1e-4, abs=1e-7)


def test_region_masses_and_activity_units(psma_corrected):
    model = compile_model(psma_corrected, ("lu177-psma-617",))
    masses = model.region_masses_g()
    assert masses["Kidney"] == pytest.approx(311.0)
    assert "Art" not in masses
    # 1 nmol of 177Lu: lambda N_A = ln2/(6.647 d) * 6.02214076e14 atoms (CODATA 2018 N_A)
    lam_s = np.log(2) / (6.647 * 86400)
    assert model.mbq_per_nmol[0] == pytest.approx(lam_s * 6.02214076e14 / 1e6, rel=1e-6)
