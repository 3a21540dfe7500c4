"""Forward-mode derivatives of the Rosenbrock solve (the fit's Jacobian).

``PBPKRosenbrock._stage_solver`` gives the stage solves a custom JVP that reuses the step's
factorisation (``dx = M^-1 (dr + dJ x - d(1/(h gamma)) x)``) instead of differentiating the
Gauss-Jordan factorisation once per tangent. Checked here against the derivative of the plain
(differentiated) factorisation and against central finite differences, for one stage solve and
for a whole Rodas5P step, with the block and the dense linear solver.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pbpk_models.library import build_spec
from pbpk_models.model import compile_model
from pbpk_models.rosenbrock import PBPKRosenbrock

RP = "lu177-psma-617"


@pytest.fixture(scope="module")
def model():
    return compile_model(build_spec("psma-pbrpk", "corrected"), (RP,), "full")


def _setup(model, linear_solver):
    rb = PBPKRosenbrock(model, linear_solver)
    p0 = jnp.asarray(model.default_params())
    rng = np.random.default_rng(0)
    y0 = jnp.asarray(rng.uniform(0.0, 5.0, rb.struct.n_padded) * rb.real_mask)
    return rb, p0, y0


def _fd(f, x, v, h=1e-6):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


@pytest.mark.parametrize("linear_solver", ["block", "dense"])
def test_stage_solve_jvp(model, linear_solver):
    """One stage solve M(p, y) x = r(y): custom JVP = differentiated factorisation = FD."""
    rb, p0, y0 = _setup(model, linear_solver)
    lsolve = rb._stage_solver()
    inv_hg = 3.7

    def parts(z):
        p = p0 * jnp.exp(z[:4].sum() * jnp.linspace(0.5, 1.5, p0.shape[0]))
        y = y0 * (1.0 + z[4:].sum())
        vals, kon_v = model.operator(p)
        Kflat, _, _ = rb.setup(vals, kon_v)
        return rb.jacobian_flat(Kflat, kon_v, y), rb.rhs(Kflat, kon_v, y), inv_hg * jnp.exp(z[0])

    def custom(z):
        J, r, ih = parts(z)
        fac = rb.factor(jax.lax.stop_gradient(J), jax.lax.stop_gradient(ih))
        return lsolve(fac, J, ih, r)

    def plain(z):
        J, r, ih = parts(z)
        return rb.solve_linear(rb.factor(J, ih), r)

    z = jnp.zeros(6)
    rng = np.random.default_rng(1)
    # compiled once, called for every direction
    jvp_custom = jax.jit(lambda z, v: jax.jvp(custom, (z,), (v,)))
    jvp_plain = jax.jit(lambda z, v: jax.jvp(plain, (z,), (v,)))
    plain_c = jax.jit(plain)
    for _ in range(3):
        v = jnp.asarray(rng.normal(size=6) * 0.1)
        x_c, dx_c = jvp_custom(z, v)
        x_p, dx_p = jvp_plain(z, v)
        np.testing.assert_allclose(x_c, x_p, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(x_p))))
        scale = float(jnp.max(jnp.abs(dx_p)))
        assert float(jnp.max(jnp.abs(dx_c - dx_p))) <= 1e-10 * scale
        fd = _fd(plain_c, z, v, 1e-4)  # smaller h: roundoff (M is stiff)
        assert float(jnp.max(jnp.abs(dx_c - fd))) <= 1e-6 * scale


def test_rodas_step_jvp_matches_finite_differences(model):
    """A whole Rodas5P step (8 stages, quadratures): jacfwd with respect to all parameters
    against central finite differences of the step (frozen step size)."""
    rb, p0, y0 = _setup(model, "block")
    q0 = jnp.zeros(rb.nq)

    def step(z):  # relative changes of every parameter (kPS_Brain is 0: no log)
        vals, kon_v = model.operator(p0 * jnp.exp(z))
        consts = rb.setup(vals, kon_v)
        dy, dq, ey, eq = rb.step(consts, 0.0, 2.0, y0, 0.75)
        return jnp.concatenate([y0 + dy, q0 + dq, ey])

    th = jnp.zeros_like(p0)
    Jac = np.asarray(jax.jit(jax.jacfwd(step))(th))
    f = jax.jit(step)
    scale = np.max(np.abs(Jac))
    for j in range(th.shape[0]):
        e = jnp.zeros_like(th).at[j].set(1.0)
        fd = np.asarray(_fd(f, th, e, 1e-5))
        assert np.max(np.abs(fd - Jac[:, j])) <= 1e-6 * scale, model.parameter_names[j]
