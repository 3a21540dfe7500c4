"""Information geometry of a prediction map r(theta): Jacobian, metric, geodesics, limits.

Everything here works on any JAX function ``r: (N,) -> (M,)`` of log-parameters ``theta``
(weighted predictions, r = y / sigma); :mod:`calibration.mbam.predictions` builds it for a PBPK
model and a measurement protocol, the tests build it for textbook models.

- ``J = dr/dtheta`` by forward mode (``jax.jacfwd``), the metric ``g = J^T J`` and its
  eigenvalues (the sloppiness spectrum) (Transtrum, Machta & Sethna, Phys Rev E
  2011;83:036701).
- ``A_vv = d^2/ds^2 r(theta + s v)`` at s = 0 by one forward-over-forward ``jvp`` (no Hessian
  tensor is ever formed).
- The geodesic ``theta' = v, v' = -pinv(J) A_vv`` (Transtrum & Qiu, Phys Rev Lett
  2014;113:098701), pinv by the SVD, integrated with diffrax (Tsit5, loose tolerance), started
  along the sloppiest right singular vector with the sign that makes ``v . a > 0``; stopped by
  a diffrax event when the smallest singular value vanishes, the parameter-space speed has grown
  by ``speed_factor``, or a log-parameter has moved by ``max_log_change``; or at the step budget.
- Limit identification from the final velocity (AutomatedMBAM's gap rule) and the sloppiest
  eigenvector, accepted when the same set is found over the last ``stable_steps`` saved steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pbpk_models.errors import ModelError


def jacobian(r, theta):
    """J = dr/dtheta (M, N) by forward mode."""
    import jax

    return jax.jacfwd(r)(theta)


def avv(r, theta, v):
    """Second directional derivative d^2/ds^2 r(theta + s v) at s = 0 (nested jvp)."""
    import jax

    def first(th):
        return jax.jvp(r, (th,), (v,))[1]

    return jax.jvp(first, (theta,), (v,))[1]


def spectrum(J) -> np.ndarray:
    """Eigenvalues of the metric g = J^T J, descending (the sloppiness spectrum)."""
    s = np.linalg.svd(np.asarray(J), compute_uv=False)
    return np.sort(s ** 2)[::-1]


def plot_spectrum(eigenvalues, path, labels=None, title="sloppiness spectrum"):
    """Plot one or several spectra (log scale) to a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pbpk_models.atomic import atomic_path

    spectra = eigenvalues if isinstance(eigenvalues, (list, tuple)) else [eigenvalues]
    labels = labels or [f"model {i}" for i in range(len(spectra))]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(spectra), 4.5))
    for i, ev in enumerate(spectra):
        ev = np.asarray(ev, float)
        ev = ev[ev > 0]
        ax.hlines(ev, i - 0.3, i + 0.3, color="k")
    ax.set_yscale("log")
    ax.set_xticks(range(len(spectra)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("eigenvalue of J^T J")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _pinv_apply(J, b, rcond=1e-13):
    """pinv(J) @ b by the SVD (singular values below rcond * max treated as zero)."""
    import jax.numpy as jnp

    U, S, Vt = jnp.linalg.svd(J, full_matrices=False)
    keep = S > rcond * S[0]
    inv = jnp.where(keep, 1.0 / jnp.where(keep, S, 1.0), 0.0)
    return Vt.T @ (inv * (U.T @ b)), S


def geodesic_acceleration(r, theta, v, constant_speed=False):
    """a = -pinv(J) A_vv at (theta, v); returns (a, singular values of J)."""
    import jax.numpy as jnp

    J = jacobian(r, theta)
    a, S = _pinv_apply(J, avv(r, theta, v))
    a = -a
    if constant_speed:
        a = a - (a @ v) / (v @ v) * v
    return a, S


@dataclass
class Geodesic:
    """A geodesic path: saved steps (tau, theta, v), its stop reason and diagnostics."""

    tau: np.ndarray
    theta: np.ndarray          # (n_steps, N)
    v: np.ndarray              # (n_steps, N)
    sigma_min: np.ndarray      # smallest singular value of J at the saved steps
    speed: np.ndarray          # |v| at the saved steps
    reason: str                # 'singular' | 'speed' | 'distance' | 'budget' | 'failed'
    eigenvalues0: np.ndarray   # spectrum of J^T J at the start
    v0: np.ndarray
    n_steps: int = 0
    notes: list = field(default_factory=list)


def initial_velocity(r, theta0, k: int = 0, flip: bool = False, accel=None, jac=None):
    """Unit right singular vector of J with the (k+1)-th smallest singular value, with the sign
    that makes the geodesic accelerate (v . a > 0; a(v) = a(-v) since A_vv is quadratic).
    Returns (v0, eigenvalues of J^T J)."""
    import jax
    import jax.numpy as jnp

    jac = jac or jax.jit(lambda th: jacobian(r, th))
    J = np.asarray(jac(jnp.asarray(theta0)))
    _, S, Vt = np.linalg.svd(J, full_matrices=False)
    n = Vt.shape[0]
    if k >= n:
        raise ModelError(f"there are only {n} directions; k={k} is out of range")
    v0 = Vt[n - 1 - k].copy()
    if accel is None:
        accel = jax.jit(lambda th, v: geodesic_acceleration(r, th, v))
    a, _ = accel(jnp.asarray(theta0), jnp.asarray(v0))
    if float(np.asarray(a) @ v0) < 0:
        v0 = -v0
    if flip:
        v0 = -v0
    return v0, S ** 2


def geodesic(r, theta0, *, k: int = 0, flip: bool = False, rtol: float = 1e-3,
             atol: float = 1e-3, tau_max: float = 1e3, max_steps: int = 400,
             sigma_tol: float = 1e-5, relative_sigma_tol: float = 1e-7,
             speed_factor: float = 50.0, max_log_change: float = 30.0,
             constant_speed: bool = False) -> Geodesic:
    """Integrate the geodesic from ``theta0`` along the sloppiest direction (see module doc).

    Stops at the first of: smallest singular value of J below ``sigma_tol`` or below
    ``relative_sigma_tol`` times the largest; |v| above ``speed_factor`` times its start;
    a log-parameter more than ``max_log_change`` from its start; ``max_steps`` steps.
    """
    import diffrax as dfx
    import jax
    import jax.numpy as jnp

    theta0 = jnp.asarray(np.asarray(theta0, dtype=np.float64))
    # The geometry (J, A_vv through the stiff solve) is compiled once per model as its own
    # function and called from diffrax's loop through a host callback: jitting the whole
    # diffeqsolve around the stiff solve took 2.5 min to compile for psma-pbrpk (2 cores),
    # the callback version compiles only the geometry (same numbers).
    accel = jax.jit(lambda th, v: geodesic_acceleration(r, th, v, constant_speed))
    # one compiled Jacobian for the start direction and the stop test (tracing the forward
    # mode of the stiff solve is most of a small model's reduction time)
    jac = jax.jit(lambda th: jacobian(r, th))
    v0, ev0 = initial_velocity(r, theta0, k, flip, accel=accel, jac=jac)
    v0 = jnp.asarray(v0)
    speed0 = float(jnp.linalg.norm(v0))
    shape = jax.ShapeDtypeStruct(theta0.shape, theta0.dtype)
    sshape = jax.ShapeDtypeStruct((len(ev0),), theta0.dtype)

    def _accel_host(th, v):
        return np.asarray(accel(jnp.asarray(th), jnp.asarray(v))[0], dtype=np.float64)

    def _sing_host(th):
        return np.linalg.svd(np.asarray(jac(jnp.asarray(th)), dtype=np.float64),
                             compute_uv=False)

    def field_(t, y, args):
        th, v = y
        a = jax.pure_callback(_accel_host, shape, th, v)
        return (v, a)

    def stop(t, y, args, **kwargs):
        th, v = y
        S = jax.pure_callback(_sing_host, sshape, th)
        smin = S[-1]
        bad = ~jnp.all(jnp.isfinite(v))
        return (bad | (smin < sigma_tol) | (smin < relative_sigma_tol * S[0])
                | (jnp.linalg.norm(v) > speed_factor * speed0)
                | (jnp.max(jnp.abs(th - theta0)) > max_log_change))

    @jax.jit
    def run(theta0, v0):
        return dfx.diffeqsolve(
            dfx.ODETerm(field_), dfx.Tsit5(), 0.0, tau_max, dt0=None, y0=(theta0, v0),
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
            saveat=dfx.SaveAt(steps=True), event=dfx.Event(stop), max_steps=max_steps,
            throw=False)

    sol = run(theta0, v0)
    ts = np.asarray(sol.ts)
    keep = np.isfinite(ts)
    th = np.asarray(sol.ys[0])[keep]
    vs = np.asarray(sol.ys[1])[keep]
    ts = ts[keep]
    ok_rows = np.all(np.isfinite(th), axis=1) & np.all(np.isfinite(vs), axis=1)
    th, vs, ts = th[ok_rows], vs[ok_rows], ts[ok_rows]
    res = sol.result
    if len(ts) == 0:
        return Geodesic(ts, th, vs, np.array([]), np.array([]), "failed", ev0, np.asarray(v0),
                        0, [f"the geodesic made no step ({res})"])
    # diagnostics at the saved steps (one batched Jacobian)
    S = np.array([_sing_host(t) for t in th])
    smin = S[:, -1]
    speed = np.linalg.norm(vs, axis=1)
    if res == dfx.RESULTS.event_occurred:
        last_s, last_th = smin[-1], th[-1]
        if not np.all(np.isfinite(vs[-1])):
            reason = "failed"
        elif last_s < sigma_tol or last_s < relative_sigma_tol * S[-1, 0]:
            reason = "singular"
        elif speed[-1] > speed_factor * speed0:
            reason = "speed"
        elif np.max(np.abs(last_th - np.asarray(theta0))) > max_log_change:
            reason = "distance"
        else:
            reason = "singular"
    elif res == dfx.RESULTS.max_steps_reached:
        reason = "budget"
    elif res == dfx.RESULTS.successful:
        reason = "budget"
    else:
        # the solver stopped (step size collapsed): near a boundary the speed diverges
        reason = "speed" if speed[-1] > 3 * speed0 else "failed"
    return Geodesic(ts, th, vs, smin, speed, reason, ev0, np.asarray(v0), len(ts),
                    [str(res)])


# -- limits -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limit:
    """A boundary of the model manifold in terms of parameters.

    kind: 'zero' (p -> 0), 'infinity' (p -> inf), 'ratio' (several parameters diverge together
    while their ratio stays finite), 'product' (one -> 0, one -> inf, product finite),
    'equal' (a fold: parameters become equal).
    ``names`` the parameters, ``directions`` +1 (-> inf) / -1 (-> 0) / 0 (equal).
    """

    kind: str
    names: tuple
    directions: tuple

    def describe(self) -> str:
        if self.kind == "zero":
            return f"{self.names[0]} -> 0"
        if self.kind == "infinity":
            return f"{self.names[0]} -> inf"
        if self.kind == "equal":
            return f"{' = '.join(self.names)} (the rates merge)"
        if self.kind == "ratio":
            d = "inf" if self.directions[0] > 0 else "0"
            return (f"{', '.join(self.names)} -> {d} with {self.names[0]}/{self.names[1]} "
                    f"finite")
        return (f"{self.names[0]} -> {'inf' if self.directions[0] > 0 else '0'}, "
                f"{self.names[1]} -> {'inf' if self.directions[1] > 0 else '0'} with "
                f"{self.names[0]}*{self.names[1]} finite")


def dominant_set(v) -> list[int]:
    """Indices of the dominant components of a velocity (AutomatedMBAM's gap rule).

    Sort |v_i| (v normalised) descending and take the first n whose gap to the next,
    |v_(n)| - |v_(n+1)|, is at least half of AutomatedMBAM's threshold
    (1/sqrt(n) + 1/sqrt(n+1)) / 2 (n equal components have magnitude 1/sqrt(n); the full
    threshold rejected clean single-parameter limits such as (0.95, 0.3)); falls back to the
    largest gap.
    """
    v = np.asarray(v, float)
    u = np.abs(v) / (np.linalg.norm(v) or 1.0)
    order = np.argsort(-u)
    su = np.append(u[order], 0.0)
    for n in range(1, len(u) + 1):
        gap = su[n - 1] - su[n]
        if gap >= 0.5 * (1 / math.sqrt(n) + 1 / math.sqrt(n + 1)) * 0.5:
            return sorted(order[:n].tolist())
    gaps = su[:-1] - su[1:]
    n = int(np.argmax(gaps)) + 1
    return sorted(order[:n].tolist())


def identify_limit(geo: Geodesic, names, stable_steps: int = 3, merge_tol: float = 0.05):
    """The limit reached by a geodesic, or None when no stable one is found.

    A fold (smallest singular value vanished with the dominant parameters at nearly equal
    log-values and velocities of opposite sign) is reported as 'equal'. Otherwise the dominant
    set of the velocity must be the same over the last ``stable_steps`` saved steps (and agree
    with the dominant set of the sloppiest eigenvector's direction of travel).
    """
    names = list(names)
    if geo.n_steps == 0:
        return None
    sets = [tuple(dominant_set(v)) for v in geo.v[-stable_steps:]]
    final = sets[-1]
    stable = len(sets) == stable_steps and all(s == final for s in sets) or \
        (geo.reason == "singular" and geo.n_steps < stable_steps)
    v = geo.v[-1]
    th = geo.theta[-1]
    if len(final) == 2:
        i, j = final
        if (geo.reason in ("singular", "speed") and abs(th[i] - th[j]) < merge_tol
                and np.sign(v[i]) != np.sign(v[j])):
            return Limit("equal", (names[i], names[j]), (0, 0))
    if not stable:
        return None
    dirs = tuple(int(np.sign(v[i])) for i in final)
    if len(final) == 1:
        return Limit("infinity" if dirs[0] > 0 else "zero", (names[final[0]],), dirs)
    # several diverge: keep the two largest as the pair; a finite combination of the two
    order = sorted(final, key=lambda i: -abs(v[i]))[:2]
    d2 = tuple(int(np.sign(v[i])) for i in order)
    kind = "ratio" if d2[0] == d2[1] else "product"
    return Limit(kind, tuple(names[i] for i in order), d2)


def cached_least_squares_fns(rj, target):
    """(residual, jacobian) callables for ``scipy.optimize.least_squares`` that share one
    evaluation of ``rj(x) -> (r, J)`` per point; residuals ``r - target``. A non-finite residual
    (a failed solve) becomes a large finite one, so the optimiser steps back instead of stopping."""
    cache = {}

    def ev(x):
        key = x.tobytes()
        if key not in cache:
            r, J = rj(x)
            res, J = np.asarray(r) - target, np.asarray(J)
            if not np.all(np.isfinite(res)):
                res = np.full_like(res, 1e6)
                J = np.where(np.isfinite(J), J, 0.0)
            cache.clear()
            cache[key] = (res, J)
        return cache[key]

    return (lambda x: ev(x)[0]), (lambda x: ev(x)[1])
