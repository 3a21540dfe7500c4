"""MBAM for large models in bounded time: the geometry on the full model through an affine map.

Every MBAM limit is affine in log-parameters: p -> 0 or inf fixes theta_p; a pair diverging with
a finite ratio (product) keeps theta_a - theta_b (theta_a + theta_b) and fixes the other
direction; a fold merges two coordinates. So after any chain of limits the reduced model's
log-parameters u map to the full model's as ``theta = A u + b``, the limits being taken at a
finite distance (``LIMIT_FACTOR`` times beyond the geodesic's end; the numerical fallback of
:func:`calibration.mbam.limits.apply_limit` stays at 100x). The geometry of every model in the chain is then
that of ONE compiled function, the full model's r(theta) and its forward-mode derivatives:

- ``J_u = J(theta) A``, ``A_vv,u(v) = A_vv(theta; A v)``: no recompilation per round (a new
  ModelSpec costs 2-4 min of XLA compile for psma-pbrpk on 2 cores, a geometry evaluation
  seconds);
- the geodesic ``u' = v, v' = -pinv(J_u) A_vv`` is integrated on the host with an adaptive Heun
  scheme (2 geometry evaluations per step, the stop test reusing the step's J) at loose
  tolerance, under a step budget and a wall-time cap;
- the re-fit to the full model's predictions is scipy ``least_squares`` on u with the exact
  Jacobian ``J_u``.

Each accepted limit is also applied to the symbolic ModelSpec
(:func:`calibration.mbam.limits.apply_limit`: exact sympy limits where the compartment language
can express them, else the same finite-distance limit), so the chain ends with a ModelSpec like
any other, verified at the end by simulating it (its own compiled solve) against the full
model's predictions. A reduction interrupted by the wall-time cap keeps every accepted step.
"""

from __future__ import annotations

import math
import time

import numpy as np
import sympy as sp

from calibration.mbam.geometry import Limit, cached_least_squares_fns, dominant_set
from pbpk_models.errors import InputError, ModelError

# Finite-distance limit beyond the geodesic's end, at which a limit's error is judged. 100x
# (as limits.NUMERIC_FACTOR) was too close when the geodesic stops on its step budget: a
# permeability of ~1500/h taken "to 0" at 1/100 of the end (~1/h) still exchanged within the
# PET hour, so steps accepted at 0.001 % were 2.2 % off once the exact symbolic limit was
# verified (psma-pbrpk, red marrow). 1e6 puts such a rate below 1e-3/h (negligible over the
# 8-day protocol) or above 1e8/h (instantaneous; Rosenbrock is L-stable).
LIMIT_FACTOR = 1e6
# Geometry solver: loose (the geodesic itself is integrated at ~1e-2); 4x fewer Rosenbrock steps
# than MBAM_SETTINGS' rtol 1e-9 (order 5: steps ~ tol^-1/5).
GEOMETRY_SETTINGS = dict(rtol=1e-6, atol=1e-10, method="rosenbrock", adjoint="forward")


class FullGeometry:
    """Jitted r, J and A_vv of the full model's prediction map (compiled once)."""

    def __init__(self, pm):
        import jax

        self.pm = pm
        r = pm.r

        def rj(theta):
            return r(theta), jax.jacfwd(r)(theta)

        def avv(theta, w):
            def first(th):
                return jax.jvp(r, (th,), (w,))[1]
            return jax.jvp(first, (theta,), (w,))[1]

        self._rj = jax.jit(rj)
        self._avv = jax.jit(avv)
        self.n_evals = 0

    def rj(self, theta):
        import jax.numpy as jnp

        self.n_evals += 1
        r, J = self._rj(jnp.asarray(theta))
        return np.asarray(r), np.asarray(J)

    def avv(self, theta, w):
        import jax.numpy as jnp

        return np.asarray(self._avv(jnp.asarray(theta), jnp.asarray(w)))


def _pinv_apply(J, y, rcond=1e-12):
    U, S, Vt = np.linalg.svd(J, full_matrices=False)
    keep = S > rcond * S[0]
    inv = np.where(keep, 1.0 / np.where(keep, S, 1.0), 0.0)
    return Vt.T @ (inv * (U.T @ y)), S, Vt


def host_geodesic(geom: FullGeometry, A, b, u0, *, k: int = 0, max_steps: int = 12,
                  tol: float = 0.05, h0: float = 0.5, max_log_change: float = 12.0,
                  speed_factor: float = 20.0, sigma_rel: float = 1e-9, deadline=None):
    """Geodesic from u0 along the (k+1)-th sloppiest direction of J_u = J A (see module doc).

    Adaptive Heun (Euler error estimate, relative ``tol``); stops when the smallest singular
    value of J_u falls below ``sigma_rel`` of the largest, |v| exceeds ``speed_factor`` |v0|,
    a coordinate moved more than ``max_log_change``, after ``max_steps`` steps or at
    ``deadline`` (time.perf_counter()). Returns dict(u, v (saved steps), reason, S0, n_steps).
    """
    def accel(u, v):
        th = A @ u + b
        _, Jf = geom.rj(th)
        J = Jf @ A
        if not np.all(np.isfinite(J)):
            raise FloatingPointError("non-finite Jacobian")
        a, S, Vt = _pinv_apply(J, geom.avv(th, A @ v))
        return -a, S, Vt

    th0 = A @ u0 + b
    _, Jf = geom.rj(th0)
    J0 = Jf @ A
    _, S0, Vt0 = np.linalg.svd(J0, full_matrices=False)
    n = Vt0.shape[0]
    v0 = Vt0[n - 1 - min(k, n - 1)].copy()
    a0, S, _ = accel(u0, v0)
    if a0 @ v0 < 0:
        v0, a0 = -v0, a0   # A_vv is quadratic in v: a(-v) = a(v)
    us, vs, sig = [u0.copy()], [v0.copy()], [S[-1] / S[0]]
    u, v, a = u0.copy(), v0.copy(), a0
    speed0 = np.linalg.norm(v0)
    h = h0
    reason = "budget"
    if S[-1] < sigma_rel * S[0]:
        return dict(u=np.array(us), v=np.array(vs), reason="singular", S0=S0 ** 2,
                    n_steps=1, sigma=np.array(sig))
    steps = 0
    while steps < max_steps:
        if deadline is not None and time.perf_counter() > deadline:
            reason = "time"
            break
        u1 = u + h * v
        v1 = v + h * a
        try:
            a1, S1, _ = accel(u1, v1)
        except FloatingPointError:
            h *= 0.3
            if h < 1e-4:
                reason = "failed"
                break
            continue
        u2 = u + 0.5 * h * (v + v1)
        v2 = v + 0.5 * h * (a + a1)
        err = np.linalg.norm(v2 - v1) / max(np.linalg.norm(v2), 1e-12)
        if err > tol and h > 1e-3:
            h *= max(0.2, 0.9 * math.sqrt(tol / err))
            continue
        try:
            a2, S2, _ = accel(u2, v2)
        except FloatingPointError:
            reason = "speed"
            break
        u, v, a = u2, v2, a2
        steps += 1
        us.append(u.copy())
        vs.append(v.copy())
        sig.append(S2[-1] / S2[0])
        if S2[-1] < sigma_rel * S2[0]:
            reason = "singular"
            break
        if np.linalg.norm(v) > speed_factor * speed0:
            reason = "speed"
            break
        if np.max(np.abs(u - u0)) > max_log_change:
            reason = "distance"
            break
        h = min(h * min(2.0, 0.9 * math.sqrt(tol / max(err, 1e-12))), 4.0)
    return dict(u=np.array(us), v=np.array(vs), reason=reason, S0=S0 ** 2,
                n_steps=len(us), sigma=np.array(sig))


def limit_from_velocity(vs, names, stable_steps: int = 2, us=None, reason="",
                        merge_tol: float = 0.05):
    """The limit read off the last velocities (dominant set stable over ``stable_steps``); when
    not stable, the dominant set of the last velocity (the geodesic was cut by the budget).
    A fold (two dominant coordinates at equal values moving apart where J lost rank) is the
    limit 'equal' (as :func:`calibration.mbam.geometry.identify_limit`)."""
    sets = [tuple(dominant_set(v)) for v in vs[-stable_steps:]]
    final = sets[-1]
    stable = all(s == final for s in sets)
    v = vs[-1]
    if us is not None and len(final) == 2 and reason in ("singular", "speed"):
        i, j = final
        if abs(us[-1][i] - us[-1][j]) < merge_tol and np.sign(v[i]) != np.sign(v[j]):
            return Limit("equal", (names[i], names[j]), (0, 0)), True
    dirs = tuple(int(np.sign(v[i])) for i in final)
    if len(final) == 1:
        return Limit("infinity" if dirs[0] > 0 else "zero", (names[final[0]],), dirs), stable
    order = sorted(final, key=lambda i: -abs(v[i]))[:2]
    d2 = tuple(int(np.sign(v[i])) for i in order)
    kind = "ratio" if d2[0] == d2[1] else "product"
    return Limit(kind, tuple(names[i] for i in order), d2), stable


def apply_affine(limit: Limit, names, A, b, u):
    """(names, A, b, u) after ``limit`` taken ``LIMIT_FACTOR`` beyond ``u``; new combinations
    named as :func:`calibration.mbam.limits.apply_limit` names them."""
    L = math.log(LIMIT_FACTOR)
    names = list(names)
    A = A.copy()
    b = b.copy()
    u = u.copy()
    if limit.kind in ("zero", "infinity"):
        j = names.index(limit.names[0])
        b = b + A[:, j] * (u[j] + limit.directions[0] * L)
        keep = [i for i in range(len(names)) if i != j]
        return [names[i] for i in keep], A[:, keep], b, u[keep]
    i, j = names.index(limit.names[0]), names.index(limit.names[1])
    if limit.kind == "equal":
        A[:, i] = A[:, i] + A[:, j]
        u[i] = 0.5 * (u[i] + u[j])
        names[i] = f"{limit.names[0]}_eq_{limit.names[1]}"
    else:
        uj = u[j] + limit.directions[1] * L
        if limit.kind == "ratio":      # c = u_i - u_j; u_i = c + u_j
            b = b + (A[:, i] + A[:, j]) * uj
            u[i] = u[i] - u[j]
            names[i] = f"{limit.names[0]}_over_{limit.names[1]}"
        else:                          # product: c = u_i + u_j; u_i = c - u_j
            b = b + (A[:, j] - A[:, i]) * uj
            u[i] = u[i] + u[j]
            names[i] = f"{limit.names[0]}_times_{limit.names[1]}"
    keep = [k for k in range(len(names)) if k != j]
    return [names[k] for k in keep], A[:, keep], b, u[keep]


def refit_affine(geom: FullGeometry, A, b, u0, target, max_nfev: int = 12):
    """Least squares of r(A u + b) to ``target`` (weighted full-model predictions) in u."""
    from scipy.optimize import least_squares

    if A.shape[1] == 0:
        r, _ = geom.rj(b)
        return u0, r

    def rj(u):
        r, Jf = geom.rj(A @ u + b)
        return r, Jf @ A

    fun, jac = cached_least_squares_fns(rj, target)
    res = least_squares(fun, u0, jac=jac, method="trf",
                        x_scale="jac", max_nfev=max_nfev, xtol=1e-8, ftol=1e-8, gtol=1e-8)
    r, _ = geom.rj(A @ res.x + b)
    return res.x, r


def reduce_affine(spec, protocol, names, *, tolerance=0.02, max_rounds=None,
                  max_time_s=2400.0, geodesic_steps=12, geodesic_tol=0.05, alternatives=2,
                  base_model=None, base_variant=None, callback=None, log=print,
                  settings=None):
    """MBAM over a large parameter set in bounded time (see the module doc).

    Returns a :class:`calibration.mbam.reduce.Hierarchy` (the ModelSpec of each model applied
    symbolically, values from the affine re-fit). ``alternatives``: when the sloppiest
    direction's limit costs more than ``tolerance``, the next sloppiest directions are tried
    (up to this many) before stopping. ``max_time_s``: wall-time cap; the steps accepted by then
    are kept (status 'time budget').
    """
    import dataclasses

    from calibration.mbam.limits import apply_limit
    from calibration.mbam.predictions import curve_times_for, prediction_map
    from calibration.mbam.reduce import Hierarchy, _step_record_affine, _with_values
    from pbpk_models.simulate import SolverSettings

    t_start = time.perf_counter()
    deadline = t_start + max_time_s
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise InputError(f"tolerance must be a positive number, got {tolerance}")
    names = tuple(dict.fromkeys(names))
    if not names:
        raise InputError(f"model {spec.name} has no parameters to reduce")
    protocol = dataclasses.replace(protocol, curve_times_h=curve_times_for(protocol,
                                                                           len(names)))
    settings = settings or SolverSettings(**GEOMETRY_SETTINGS)
    pm = prediction_map(spec, protocol, names, settings=settings)
    ref = pm.__dict__["reference"]
    target = ref / np.asarray(pm.scale)
    nd = pm.n_decision
    geom = FullGeometry(pm)
    N = len(names)
    A, b, u = np.eye(N), np.zeros(N), np.asarray(pm.theta0, float).copy()
    cur = list(names)
    h = Hierarchy(base_model or spec.name, base_variant or spec.variant, names, protocol,
                  tolerance, ref, pm.labels)
    h.specs.append(spec)
    h.names.append(names)
    h.values.append({n: float(math.exp(x)) for n, x in zip(names, u)})
    h.errors.append(0.0)
    h.parameter_map = {n: sp.Symbol(n) for n in names}
    h.extra = {"engine": "affine", "decision_entries": nd, "n_predictions": len(ref),
               "geometry_settings": dict(GEOMETRY_SETTINGS), "rounds": []}
    t0 = time.perf_counter()
    r0, J0 = geom.rj(A @ u + b)
    log(f"compiled the full model's geometry ({len(names)} parameters, {len(ref)} predictions, "
        f"{nd} decision): {time.perf_counter() - t0:.0f} s")
    cur_spec = spec
    rounds = 0
    h.status = "running"
    while True:
        if not cur:
            h.status = "complete"
            break
        if max_rounds is not None and rounds >= max_rounds:
            h.status = "max rounds"
            break
        if time.perf_counter() > deadline:
            h.status = f"time budget: stopped after {max_time_s:.0f} s with the steps so far"
            break
        rounds += 1
        accepted = False
        tried = []
        for k in range(alternatives + 1):
            if time.perf_counter() > deadline:
                break
            tr = time.perf_counter()
            try:
                geo = host_geodesic(geom, A, b, u, k=k, max_steps=geodesic_steps,
                                    tol=geodesic_tol, deadline=deadline)
            except (FloatingPointError, np.linalg.LinAlgError) as exc:
                tried.append(f"direction {k}: geodesic failed ({exc})")
                continue
            if k == 0:
                h.spectra.append(np.sort(geo["S0"])[::-1].tolist())
            if geo["reason"] == "failed" or geo["n_steps"] == 0:
                tried.append(f"direction {k}: geodesic failed")
                continue
            limit, stable = limit_from_velocity(geo["v"], cur, us=geo["u"],
                                                reason=geo["reason"])
            new_names, A2, b2, u2 = apply_affine(limit, cur, A, b, geo["u"][-1])
            u2, rfit = refit_affine(geom, A2, b2, u2, target)
            pred = rfit * np.asarray(pm.scale)
            err = pm.decision_errors(pred)
            worst = float(np.max(err))
            wi = int(np.argmax(err))
            dt = time.perf_counter() - tr
            h.extra["rounds"].append({"round": rounds, "direction": k, "limit": limit.describe(),
                                      "reason": geo["reason"], "steps": geo["n_steps"],
                                      "stable": bool(stable), "worst_error": worst,
                                      "time_s": dt})
            if not np.isfinite(worst) or worst > tolerance:
                tried.append(f"direction {k}: {limit.describe()} -> {100 * worst:.3g}%")
                log(f"  round {rounds}, direction {k}: {limit.describe()} rejected "
                    f"({100 * worst:.3g}% on {pm.labels[wi]}; {dt:.0f} s)")
                continue
            boundary_u = geo["u"][-1]
            boundary = {n: float(math.exp(x)) for n, x in zip(cur, boundary_u)}
            values = {n: float(math.exp(x)) for n, x in zip(cur, u)}
            try:
                red = apply_limit(cur_spec, limit, values, boundary)
            except (ModelError, InputError) as exc:
                tried.append(f"direction {k}: {limit.describe()} not applicable ({exc})")
                continue
            pmap = dict(h.parameter_map)
            if red.new_parameter:
                pmap[red.new_parameter[0]] = sp.sympify(red.new_parameter[2]).xreplace(pmap)
            for n in red.removed:
                pmap.pop(n, None)
            h.parameter_map = pmap
            cur, A, b, u = new_names, A2, b2, u2
            cur_spec = red.spec
            vals = {n: float(math.exp(x)) for n, x in zip(cur, u)}
            h.specs.append(cur_spec)
            h.names.append(tuple(cur))
            h.values.append(vals)
            h.errors.append(worst)
            h.steps.append(_step_record_affine(limit, red, geo, worst, cur, err, pm.labels, k,
                                               dt))
            h.time_s = time.perf_counter() - t_start
            h.__dict__["affine"] = (A, b, u)
            accepted = True
            if callback is not None:
                callback(h)
            break
        if not accepted:
            if time.perf_counter() > deadline:
                h.status = f"time budget: stopped after {max_time_s:.0f} s with the steps so far"
            else:
                h.status = ("tolerance: every limit tried exceeds it (" + "; ".join(tried)
                            + f"; tolerance {tolerance:g})")
            break
    # the final ModelSpec carries the re-fitted values (ligand copies scaled with them)
    if len(h.specs) > 1:
        h.specs[-1] = _with_values(h.specs[-1], h.values[-1], "MBAM re-fit to the full model")
    h.extra["geometry_evaluations"] = geom.n_evals
    # the reduced model's personal parameters: those of the full model's declared personal
    # parameters it keeps, and the combinations that involve one of them
    from calibration.priors import PERSONAL

    pers = set(PERSONAL.get(h.base_model, ()))
    if pers:
        h.extra["personal"] = [n for n in h.names[-1]
                               if n in pers or {str(x) for x in sp.sympify(
                                   h.parameter_map.get(n, sp.Symbol(n))).free_symbols} & pers]
    h.time_s = time.perf_counter() - t_start
    return h
