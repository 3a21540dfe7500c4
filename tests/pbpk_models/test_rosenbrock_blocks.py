"""Block layout of the Rosenbrock linear solver on the MBAM-reduced psma-pbrpk (v2).

Before the layout search, the greedy hub rule padded this model's 90 implicit states (full
mode, one radiopharmaceutical) to 16 blocks x 10 + 6 hubs = 166 (two merged blocks of 10 states),
more than the unreduced model (160); in the total-ligand form (45 implicit states, what
``simulate_batch`` uses for one administration) it took 10 hubs (19 x 3 + 10 = 67), where the
unreduced model needs 4. The layout is checked against the model's own dense Jacobian (every
coupling inside one block or through a hub), its size and flop estimate against those old
layouts, and the block solve against a pivoted dense LU.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calibration.fit import model_spec
from pbpk_models.model import compile_model
from pbpk_models.rosenbrock import PBPKRosenbrock
from .conftest import assert_block_solve_equals_dense

V2 = (Path(__file__).parents[2] / "pbpk_models" / "library" / "reduced"
      / "psma-pbrpk_pet1h_spect24h_v2.json")
RP = "lu177-psma-617"
# the greedy-only layouts of this model before the change: (n_blocks, block_size, n_hubs)
OLD = {"full": (16, 10, 6), "total": (19, 3, 10)}
N_REAL = {"full": 90, "total": 45}


def flops(groups, nh, solves=8):
    """Factorisation (block inverses, A^-1 B, Schur complement and its inverse) plus 8 solves
    of the padded block-arrowhead system with blocks in groups ``[(block_size, n_blocks)]``,
    counted from pbpk_models.rosenbrock.factor/solve."""
    return nh ** 3 + solves * nh ** 2 + sum(
        nb * bs ** 3 + nb * bs ** 2 * nh + nb * bs * nh ** 2
        + solves * (nb * bs ** 2 + 2 * nb * bs * nh) for bs, nb in groups)


@pytest.fixture(scope="module", params=["full", "total"])
def reduced(request):
    model = compile_model(model_spec(str(V2)), (RP,), request.param)
    return model, PBPKRosenbrock(model, max_groups=3)


def test_layout_is_valid_and_pads_less(reduced):
    model, rb = reduced
    st, n = rb.struct, rb.n_imp
    # every implicit state exactly once, in a block or as a hub
    placed = sorted([i for b in st.blocks for i in b] + list(st.hubs))
    assert placed == list(range(n))
    assert len(set(st.pos.tolist())) == n and st.pos.max() < st.n_padded
    assert max(len(b) for b in st.blocks) == st.block_size
    # independent sparsity: the model's dense analytic Jacobian at a random positive state
    p = jnp.asarray(model.default_params())
    vals, kon_v = model.operator(p)
    y = jnp.asarray(np.random.default_rng(0).uniform(0.5, 5.0, model.n_states))
    J = np.asarray(jax.jit(lambda y: model.jacobian(1.0, y, (vals, kon_v, 0.0)))(y))[:n, :n]
    block_of = np.full(n, -1)
    for k, b in enumerate(st.blocks):
        block_of[list(b)] = k
    r, c = np.nonzero(J)
    inner = (block_of[r] >= 0) & (block_of[c] >= 0)
    assert np.all(block_of[r[inner]] == block_of[c[inner]]), "coupling across blocks"
    # cheaper than the greedy-only layout, and fewer padded states
    mode = model.mode
    nb, bs, nh = OLD[mode]
    assert n == N_REAL[mode] and st.n_padded >= n
    assert flops(st.groups, st.n_hubs) < 0.9 * flops([(bs, nb)], nh)
    # each block sits at consecutive padded positions inside its group's slots
    off = 0
    blocks = iter(st.blocks)
    for gbs, gnb in st.groups:
        for k in range(gnb):
            b = next(blocks)
            assert len(b) <= gbs
            assert sorted(st.pos[list(b)].tolist()) == list(range(off + k * gbs,
                                                                  off + k * gbs + len(b)))
        off += gbs * gnb
    assert off == st.n_block_states and sorted(st.pos[list(st.hubs)]) == list(
        range(off, st.n_padded))
    assert st.n_padded < nb * bs + nh and st.n_hubs <= 4
    # hub-and-spoke: arterial and venous blood of every species are hubs
    names = model.state_names()
    species = (RP, "psma-617") if mode == "full" else ("psma-617",)
    assert {names[h] for h in st.hubs} >= {f"{c}.{s}" for c in ("Art", "Vein") for s in species}


def test_block_solve_equals_dense_on_reduced(reduced):
    model, rb = reduced
    st = rb.struct
    p = jnp.asarray(model.default_params())
    vals, kon_v = model.operator(p)
    Kflat, _, _ = rb.setup(vals, kon_v)
    yp, _ = rb.to_padded(jnp.asarray(np.random.default_rng(1).uniform(0, 5, model.n_states)))
    J = rb.jacobian_flat(Kflat, kon_v, yp)
    rng = np.random.default_rng(2)
    for inv_hg in (1e-4, 1.0, 1e4):
        assert_block_solve_equals_dense(rb, J, inv_hg,
                                        rng.normal(size=st.n_padded) * rb.real_mask)


def test_grouped_solve_equals_dense_lu():
    """A whole Rodas5P solve with blocks grouped by size (three groups) and with a pivoted dense
    LU (``linear_solver="dense"``) gives the same trajectory: only the linear algebra differs.
    (One group is checked against the dense LU in test_rosenbrock.py.)"""
    from pbpk_models.errors import InputError
    from pbpk_models.regimen import Administration, Regimen
    from pbpk_models.simulate import SolverSettings, prepare, rosenbrock_solver

    regimen = Regimen((Administration(0.0, RP, 7400.0, 57.09),))
    m, _, hot, cold, _, t_end = prepare(model_spec(str(V2)), regimen, np.array([1.0]), 20.0,
                                        "auto")
    y0 = jnp.zeros(m.n_states).at[np.asarray(m.dosing_index)].add(
        float(hot[0].sum() + cold[0].sum()))
    ts = jnp.asarray([0.1, 1.0, 24.0, 200.0])
    vals, kon_v = m.operator(jnp.asarray(m.params_from({})))
    out = {}
    for key, st in {"groups": SolverSettings(block_groups=3),
                    "dense": SolverSettings(linear_solver="dense")}.items():
        rb = rosenbrock_solver(m, st)
        ys, _, ok, n = jax.jit(lambda v, k, rb=rb: rb.solve(v, k, 0.0, y0, 0.0, float(t_end), ts,
                                                             rtol=1e-8, atol=1e-12))(vals, kon_v)
        assert bool(ok)
        out[key] = (np.asarray(ys), int(n))
    assert len(rosenbrock_solver(m, SolverSettings(block_groups=3)).struct.groups) > 1
    ref, n_ref = out["dense"]
    scale = np.abs(ref).max()
    ys, n = out["groups"]
    np.testing.assert_allclose(ys, ref, rtol=1e-9, atol=1e-12 * scale)
    assert abs(n - n_ref) <= 2
    with pytest.raises(InputError, match="block_groups"):
        rosenbrock_solver(m, SolverSettings(block_groups=0))
