import numpy as np
import pytest
from scipy.integrate import solve_ivp

from pbpk_models.library import build_spec


@pytest.fixture(scope="session")
def psma_published():
    return build_spec("psma-pbrpk", "published")


@pytest.fixture(scope="session")
def psma_corrected():
    return build_spec("psma-pbrpk", "corrected")


@pytest.fixture(scope="session")
def sstr():
    return build_spec("sstr")


def scipy_radau_reference(model, p, regimen, times, t_end):
    """scipy Radau (rtol 1e-10) on the full equations, segment by segment; states at times and
    at the end (the time-integral states give the exact TIA)."""
    f, jac = model.vector_field_numpy(p)
    t_adm, hot, cold = regimen.dose_arrays(model)
    y = np.zeros(model.n_states)
    out = []
    bounds = list(t_adm) + [t_end]
    for k in range(len(t_adm)):
        y = y.copy()
        y[model.dosing_index] += np.concatenate([hot[k], cold[k]])
        seg = [t for t in times if bounds[k] <= t < bounds[k + 1]]
        sol = solve_ivp(f, (bounds[k], bounds[k + 1]), y, method="Radau", jac=jac,
                        t_eval=seg + [bounds[k + 1]], rtol=1e-10, atol=1e-14)
        assert sol.success
        out += list(sol.y.T[:-1])
        y = sol.y.T[-1]
    return np.array(out), y


def assert_block_solve_equals_dense(rb, J, inv_hg, r):
    """The block-arrowhead solve of (I/(h gamma) - J) x = r equals the dense LU solve and
    satisfies the system, both to 1e-12 relative."""
    import jax.numpy as jnp

    M = inv_hg * np.eye(rb.struct.n_padded) - np.asarray(rb.dense(J))
    r = jnp.asarray(r)
    xb = rb.solve_linear(rb.factor(J, inv_hg, "block"), r, "block")
    xd = rb.solve_linear(rb.factor(J, inv_hg, "dense"), r, "dense")
    scale = np.max(np.abs(xd))
    assert np.max(np.abs(xb - xd)) <= 1e-12 * scale
    assert np.max(np.abs(M @ np.asarray(xb) - r)) <= 1e-12 * np.max(np.abs(M)) * scale
