"""The Rodas5P solver (pbpk_models.rosenbrock) against scipy Radau, jacfwd and a dense solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pbpk_models.model import compile_model
from pbpk_models.regimen import Regimen
from pbpk_models.rosenbrock import PBPKRosenbrock, block_structure
from pbpk_models.simulate import SolverSettings, jitted_core, simulate, simulate_batch

from .conftest import assert_block_solve_equals_dense, scipy_radau_reference

RTOL = 1e-8
ROS = SolverSettings(rtol=RTOL, atol=1e-12, method="rosenbrock")
TIMES = np.array([0.05, 0.5, 1.0, 4.0, 24.0, 96.0, 168.0, 500.0])
RP = "lu177-psma-617"


@pytest.fixture(scope="module")
def models(psma_corrected):
    return {mode: compile_model(psma_corrected, (RP,), mode) for mode in ("full", "total")}


def _state(model, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0.0, 5.0, model.n_states))


@pytest.mark.parametrize("mode", ["full", "total"])
def test_analytic_jacobian_matches_jacfwd(models, mode):
    model = models[mode]
    p = jnp.asarray(model.default_params())
    vals, kon_v = model.operator(p)
    args = (vals, kon_v, 0.5)
    y = _state(model)
    ad = jax.jit(jax.jacfwd(lambda y: model.vector_field(7.0, y, args)))(y)
    an = jax.jit(lambda y: model.jacobian(7.0, y, args))(y)
    np.testing.assert_allclose(an, ad, rtol=1e-10, atol=1e-10)
    # the solver's block-form Jacobian and quadrature matrix are the same matrix
    rb = PBPKRosenbrock(model)
    Kflat, G, _ = rb.setup(vals, kon_v)
    yp, _ = rb.to_padded(y)
    pos, n = rb.struct.pos, rb.n_imp
    Jb = rb.dense(rb.jacobian_flat(Kflat, kon_v, yp))
    np.testing.assert_allclose(Jb[np.ix_(pos, pos)], an[:n, :n], rtol=1e-10, atol=1e-10)
    w = np.ones(rb.nq)
    if mode == "total":
        w[model.acc_offset - n:] = np.exp(-model.decay_constants_per_h[0] * 6.5)
    np.testing.assert_allclose(w[:, None] * np.asarray(G)[:, pos], an[n:, :n], rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("mode", ["full", "total"])
def test_block_solver_equals_dense(models, mode):
    model = models[mode]
    rb = PBPKRosenbrock(model)
    st = rb.struct
    # hub-and-spoke: blood pools are hubs, blocks are small
    names = model.state_names()
    assert any(names[h].startswith("Art.") for h in st.hubs)
    assert st.block_size <= 10 and st.n_hubs <= 8
    p = jnp.asarray(model.default_params())
    vals, kon_v = model.operator(p)
    Kflat, _, _ = rb.setup(vals, kon_v)
    yp, _ = rb.to_padded(_state(model, 1))
    J = rb.jacobian_flat(Kflat, kon_v, yp)
    rng = np.random.default_rng(2)
    for inv_hg in (1e-4, 1.0, 1e4):
        for _ in range(3):
            assert_block_solve_equals_dense(rb, J, inv_hg,
                                            rng.normal(size=st.n_padded) * rb.real_mask)


def test_block_structure_toy():
    # two hubs (0, 1) connected to three chains of 2, 3 and 1 states
    n = 8
    P = np.eye(n, dtype=bool)
    for a, b in [(0, 2), (2, 3), (3, 1), (0, 4), (4, 5), (5, 6), (6, 1), (1, 7), (7, 0)]:
        P[a, b] = P[b, a] = True
    st = block_structure(P)
    assert {0, 1} <= set(st.hubs)
    assert len(set(st.pos.tolist())) == n and st.pos.max() < st.n_padded
    blk = st.block_of(st.pos)
    for a, b in zip(*np.nonzero(P)):   # every coupling lies in a block or touches a hub
        assert blk[a] < 0 or blk[b] < 0 or blk[a] == blk[b]


def test_total_form_matches_scipyscipy_radau_reference(models):
    regimen = Regimen.single(RP, 7400.0)
    res = simulate(models["total"], regimen, times_h=TIMES, days=30, settings=ROS)
    assert res.model.mode == "total"
    full = models["full"]
    states, y_end = scipy_radau_reference(full, res.params, regimen, TIMES, res.t_end_h)
    ref = full.region_amounts(states)[:, 0, :].T * full.mbq_per_nmol[0]
    mask = ref > 1e-9 * 7400.0
    rel = np.abs(res.activity_mbq[0][mask] - ref[mask]) / ref[mask]
    assert rel.max() < 10 * RTOL, rel.max()
    tia_ref = y_end[full.acc_offset:full.acc_offset + len(full.regions)] * full.mbq_per_nmol[0]
    rel_tia = np.abs(res.tia_mbq_h[0] - tia_ref) / tia_ref
    assert rel_tia.max() < 10 * RTOL, rel_tia.max()
    # conservation: all ligand in the body and the sinks stays the administered amount
    _, hot, cold = regimen.dose_arrays(res.model)
    dose = hot.sum() + cold.sum()
    np.testing.assert_allclose(res.total_nmol, dose, rtol=10 * RTOL)


def test_two_cycles_match_scipy(psma_corrected):
    regimen = Regimen.cycles(RP, [7400.0, 3700.0], interval_h=336.0)
    times = np.array([1.0, 24.0, 335.0, 337.0, 400.0, 600.0])
    res = simulate(psma_corrected, regimen, times_h=times, days=12, settings=ROS)
    model = res.model
    assert model.mode == "full"  # the full hot/cold equations, two segments
    states, y_end = scipy_radau_reference(model, res.params, regimen, times, res.t_end_h)
    ref = model.region_amounts(states)[:, 0, :].T * model.mbq_per_nmol[0]
    mask = ref > 1e-9 * 7400
    rel = np.abs(res.activity_mbq[0][mask] - ref[mask]) / ref[mask]
    assert rel.max() < 10 * RTOL, rel.max()
    acc = y_end[model.acc_offset:model.acc_offset + len(model.regions)] * model.mbq_per_nmol[0]
    np.testing.assert_allclose(res.tia_mbq_h[0], acc, rtol=10 * RTOL)
    # conservation within each cycle: the total is the amount administered so far
    _, hot, cold = regimen.dose_arrays(model)
    given = np.where(times < 336.0, hot[0].sum() + cold[0].sum(), hot.sum() + cold.sum())
    np.testing.assert_allclose(res.total_nmol, given, rtol=10 * RTOL)


def test_vmap_equals_single(models):
    model = models["total"]
    regimen = Regimen.single(RP, 7400.0)
    times = TIMES
    rng = np.random.default_rng(3)
    names = [k for k in model.parameter_names if k.startswith("Rden_")]
    P = np.tile(model.default_params(), (3, 1))
    for k in names:
        P[:, model.parameter_names.index(k)] *= rng.lognormal(0.0, 0.3, 3)
    # same settings and shapes as the Radau test: the single-patient core is compiled once
    batch = simulate_batch(model, regimen, P, times, days=30, settings=ROS)
    assert bool(np.all(batch["ok"]))
    for i in range(3):
        one = simulate(model, regimen, P[i], times, days=30, settings=ROS)
        np.testing.assert_allclose(batch["tia_mbq_h"][i], one.tia_mbq_h, rtol=1e-12)
        np.testing.assert_allclose(batch["activity_mbq"][i], one.activity_mbq, rtol=1e-12,
                                   atol=1e-12)


def test_forward_mode_matches_finite_differences(models):
    model = models["total"]
    regimen = Regimen.single(RP, 7400.0)
    t_adm, hot, cold = regimen.dose_arrays(model)
    ts = jnp.asarray(TIMES)
    core = jitted_core(model, 1, ROS)
    p0 = model.default_params()
    direction = np.zeros_like(p0)
    for k in ("Rden_Kidney", "k_on"):
        if k in model.parameter_names:
            direction[model.parameter_names.index(k)] = p0[model.parameter_names.index(k)]
    assert direction.any()
    fixed = (jnp.asarray(t_adm), jnp.asarray(hot), jnp.asarray(cold), ts,
             jnp.asarray(t_adm[-1] + 720.0))

    def tia(p):
        return core(p, *fixed)["tia_nmol_h"][0]

    _, d = jax.jit(lambda p, v: jax.jvp(tia, (p,), (v,)))(jnp.asarray(p0), jnp.asarray(direction))
    eps = 1e-4
    fd = (tia(jnp.asarray(p0 + eps * direction)) - tia(jnp.asarray(p0 - eps * direction))) / (
        2 * eps)
    big = np.abs(fd) > 1e-6 * np.abs(fd).max()
    np.testing.assert_allclose(np.asarray(d)[big], np.asarray(fd)[big], rtol=1e-4)
