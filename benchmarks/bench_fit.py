"""Benchmark: fitting one patient, ours against scipy least_squares with finite differences.

One synthetic patient (psma-pbrpk corrected, seven personal parameters: kidney, SG and three
lesion receptor densities, kidney and SG release), 68Ga-PSMA-11 PET at 1 h (150 MBq, 3 nmol)
and 177Lu-PSMA-617 SPECT at 24 h and 96 h after a 7.4 GBq cycle given a week later, six regions
each (18 data points), noise of calibration.NOISE. Both fits start from the same point (every
parameter off by a factor 2.5) and minimise the same objective (whitened data residuals and
the prior) with scipy's 'trf' under the same bounds:
- ours: ``calibration.fit`` (Jacobian by JAX forward mode through the Rosenbrock solve, the
  stage solves' tangents reusing each step's factorisation; optimised with the solve at rtol
  ``calibration.fit.COARSE_RTOL`` (1e-5), then polished at rtol 1e-8 (``continuation``; the
  coarse optimum is accepted when a Gauss-Newton step predicts no cost decrease at 1e-8); also
  shown without continuation);
- the baseline, "what a user would do with scipy": ``least_squares`` with a 2-point
  finite-difference Jacobian (``diff_step=1e-4``, the tuned step of shared/NOTES.md; the
  default step stalls on ODE models) over residuals computed by scipy's own stiff solver,
  ``solve_ivp`` LSODA with the model's analytic Jacobian (``Model.vector_field_numpy``), same
  rtol 1e-8 / atol 1e-10 as our fit's solver (LSODA+jac was the fastest scipy method here: one
  residual 0.63 s against 1.44 s without the Jacobian, 1.9 s BDF, 87 s Radau, under load);
- for the same-solver comparison also FD over our own jitted residual-only solves
  (Kvaerno5 and Rosenbrock): not what a scipy user has, but it shows how much of the gain is
  the solver and how much the derivatives.
Compilation is done before timing (ours and the jitted baselines). Final costs are all
evaluated with our objective at rtol 1e-8.
Run: python benchmarks/bench_fit.py [--skip-jax-fd]
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from scipy.optimize import least_squares  # noqa: E402

from calibration.fit import (BOUND_SD, COARSE_RTOL, Objective, build_problem, fit,  # noqa: E402
                             observed_amounts, synthetic_observations, _problem_data)
from pbpk_models.regimen import Administration, Regimen  # noqa: E402
from pbpk_models.simulate import SolverSettings, solve_core  # noqa: E402

REGIONS = ("Kidney", "SG", "Tumor1", "Tumor2", "TumorRest", "Liver")
PET, LU, T = "ga68-psma-11", "lu177-psma-617", 168.0
REGIMEN = Regimen((Administration(0.0, PET, 150.0, 3.0), Administration(T, LU, 7400.0, 57.09)))
DESIGN = [(r, 1.0, PET, "PET") for r in REGIONS] + \
    [(r, T + t, LU, "SPECT") for t in (24.0, 96.0) for r in REGIONS]
TRUTH = {"Rden_Kidney": 0.060, "lambdaRel_Kidney": 0.0100, "Rden_SG": 0.045,
         "lambdaRel_SG": 0.025, "Rden_Tumor1": 0.080, "Rden_Tumor2": 0.012,
         "Rden_TumorRest": 0.20}
START = {k: v * 2.5 if i % 2 else v / 2.5 for i, (k, v) in enumerate(TRUTH.items())}


def residual_only(problem, settings=None):
    """Jitted residuals without derivatives (the scipy baseline's function)."""
    import jax.numpy as jnp

    settings = settings or SolverSettings()
    cores = [solve_core(s.model, s.n_admin, settings) for s in problem.segments]
    idx = np.asarray(problem.personal_index)
    data = _problem_data(problem)

    @jax.jit
    def r(theta, data):
        p = data["base"].at[idx].set(jnp.exp(theta))
        preds = []
        for core, seg in zip(cores, data["segments"]):
            out = core(p, *seg["arrays"])
            amt = observed_amounts(out["amounts"], seg["ts"], seg["rp"], seg["rw"])
            preds.append(amt * seg["mbq"][seg["rp"]])
        pred = jnp.concatenate(preds)
        return jnp.concatenate([(pred - data["y"]) / data["sigma"],
                                data["W"] @ (theta - data["mu"])])

    return lambda th: np.asarray(r(jnp.asarray(th), data))


def scipy_residual(problem, method: str = "LSODA", rtol: float = 1e-8, atol: float = 1e-10,
                   use_jac: bool = True):
    """The same residuals computed the way a scipy user would: ``solve_ivp`` with a stiff method
    on the model's NumPy right-hand side and its analytic Jacobian
    (``Model.vector_field_numpy``), full hot/cold form, one solve per radiopharmaceutical,
    stopping at each output time (``t_eval``); same tolerances as our fit's solver."""
    from scipy.integrate import solve_ivp

    from pbpk_models.model import compile_model

    segs = []
    for s in problem.segments:
        rps = tuple(r.name for r in s.model.radiopharmaceuticals)
        full = compile_model(problem.spec, rps, "full")
        ts = np.asarray(s.arrays[3])
        sub = Regimen(tuple(a for a in problem.regimen.administrations
                            if a.radiopharmaceutical.lower() in rps and a.time_h <= ts.max()))
        at, hot, cold = sub.dose_arrays(full)
        idx = np.array([full.parameter_names.index(n) for n in problem.names])
        segs.append((full, at, hot, cold, ts, idx, s))
    W, mu = problem.prior.whitening(), problem.prior.mean_log
    counter = {"solves": 0}

    def residual(theta):
        preds = []
        for full, at, hot, cold, ts, idx, s in segs:
            p = full.params_from(problem.fixed)
            p[idx] = np.exp(theta)
            f, jac = full.vector_field_numpy(p)
            y = np.zeros(full.n_states)
            out = np.zeros((len(ts), full.n_states))
            for k in range(len(at)):
                y[full.dosing_index] += np.concatenate([hot[k], cold[k]])
                t1 = at[k + 1] if k + 1 < len(at) else ts.max()
                sel = (ts >= at[k]) & (ts <= t1) if k == 0 else (ts > at[k]) & (ts <= t1)
                t_eval = np.unique(np.append(ts[sel], t1))
                sol = solve_ivp(f, (at[k], t1), y, method=method, t_eval=t_eval, rtol=rtol,
                                atol=atol, jac=jac if use_jac else None)
                counter["solves"] += 1
                if not sol.success:
                    return np.full(problem.n_obs + len(theta), 1e6)
                out[sel] = sol.y.T[np.searchsorted(t_eval, ts[sel])]
                y = sol.y[:, -1].copy()
            amt = np.asarray(full.region_amounts(out))
            obs_amt = observed_amounts(amt, s.ts_index, s.rp_index, s.region_weights)
            preds.append(obs_amt * s.mbq_per_nmol[s.rp_index])
        pred = np.concatenate(preds)
        return np.concatenate([(pred - problem.y) / problem.sigma, W @ (theta - mu)])

    residual.counter = counter
    return residual


def main():
    import argparse

    ap = argparse.ArgumentParser(description="fit one patient: ours vs scipy least_squares FD")
    ap.add_argument("--skip-jax-fd", action="store_true",
                    help="skip the finite-difference runs over our own jitted solvers")
    ap.add_argument("--seed", type=int, default=3,
                    help="noise draw of the synthetic patient's observations (the number of "
                         "optimiser steps, hence the ratio, depends on it)")
    args = ap.parse_args()
    obs = synthetic_observations(REGIMEN, DESIGN, TRUTH, seed=args.seed)
    problem = build_problem(obs, REGIMEN)
    names = problem.names
    x0 = np.log([START[n] for n in names])
    truth = np.log([TRUTH[n] for n in names])
    obj = Objective(problem)
    t = time.perf_counter()
    obj.evaluate(x0)
    compile_ours = time.perf_counter() - t
    prior = problem.prior
    lo = prior.mean_log - BOUND_SD * prior.sd_log
    hi = prior.mean_log + BOUND_SD * prior.sd_log
    x0c = np.clip(x0, lo + 1e-9, hi - 1e-9)  # as calibration.fit does with a start

    # warm-up (compiles the coarse-tolerance solve of the continuation too; not timed)
    fit(obs, REGIMEN, n_starts=1, x0=START, problem=problem)
    fit(obs, REGIMEN, n_starts=1, x0=START, problem=problem, continuation=False)
    t, c = time.perf_counter(), time.process_time()
    post = fit(obs, REGIMEN, n_starts=1, x0=START, problem=problem)
    t_ours, c_ours = time.perf_counter() - t, time.process_time() - c
    cost_ours = post.diagnostics["cost"]
    # the same without tolerance continuation (every Jacobian at rtol 1e-8)
    t, c = time.perf_counter(), time.process_time()
    post_fine = fit(obs, REGIMEN, n_starts=1, x0=START, problem=problem, continuation=False)
    t_fine, c_fine = time.perf_counter() - t, time.process_time() - c

    # baselines: the primary one is scipy end to end (solve_ivp LSODA + analytic Jacobian);
    # finite differences over our jitted solvers are shown for the same-solver comparison
    baselines = {"scipy solve_ivp LSODA (analytic jac)": scipy_residual(problem, "LSODA")}
    if not args.skip_jax_fd:
        for label, settings in (("our jitted Kvaerno5", SolverSettings()),
                                ("our jitted Rosenbrock", SolverSettings(method="rosenbrock"))):
            rfun = residual_only(problem, settings)
            rfun(x0c)  # compile, not timed
            baselines[label] = rfun
    results = {}
    for label, rfun in baselines.items():
        t, c = time.perf_counter(), time.process_time()
        res = least_squares(rfun, x0c, bounds=(lo, hi), method="trf", x_scale="jac",
                            diff_step=1e-4, xtol=1e-10, ftol=1e-10, gtol=1e-8, max_nfev=400)
        results[label] = (time.perf_counter() - t, obj.cost(res.x), res,
                          time.process_time() - c)

    print(f"problem: {problem.n_obs} data points, {len(names)} personal parameters, "
          f"PET 1 h + SPECT 24 h and 96 h")
    print(f"compile (not timed below): ours {compile_ours:.1f} s")
    print("final costs are all evaluated with the same objective (our solver, rtol 1e-8)")
    w = 58
    print(f"{'method':<{w}}{'wall s':>8}{'cpu s':>8}{'cost':>12}{'evals':>7}"
          f"{'max|dlog p - ours|':>20}")
    label = f"ours: trf + JAX forward Jacobian, rtol {COARSE_RTOL:g} then 1e-8"
    print(f"{label:<{w}}{t_ours:>8.2f}"
          f"{c_ours:>8.2f}{cost_ours:>12.6f}{post.diagnostics['evaluations']:>7d}{0.0:>20.2e}")
    print(f"{'ours without continuation (rtol 1e-8 throughout)':<{w}}{t_fine:>8.2f}"
          f"{c_fine:>8.2f}{post_fine.diagnostics['cost']:>12.6f}"
          f"{post_fine.diagnostics['evaluations']:>7d}"
          f"{np.max(np.abs(post_fine.theta_map - post.theta_map)):>20.2e}")
    for label, (t_scipy, cost_scipy, res, c_scipy) in results.items():
        name = f"least_squares FD over {label}"
        print(f"{name:<{w}}{t_scipy:>8.2f}{c_scipy:>8.2f}{cost_scipy:>12.6f}{res.nfev:>7d}"
              f"{np.max(np.abs(res.x - post.theta_map)):>20.2e}")
    for label, (t_scipy, cost_scipy, res, c_scipy) in results.items():
        print(f"speed-up vs FD over {label}: {t_scipy / t_ours:.1f}x wall, "
              f"{c_scipy / c_ours:.1f}x cpu (without continuation {t_scipy / t_fine:.1f}x wall); "
              f"cost difference (baseline - ours) {cost_scipy - cost_ours:.2e}")
    t_base, cost_base, _, c_base = results["scipy solve_ivp LSODA (analytic jac)"]
    print(f"RATIO (goal >= 10x at an equal or better optimum): ours {t_ours:.2f} s vs scipy "
          f"LSODA+FD {t_base:.2f} s = {t_base / t_ours:.1f}x wall ({c_base / c_ours:.1f}x cpu); "
          f"cost ours {cost_ours:.6f} vs baseline {cost_base:.6f}")
    print("recovery (MAP vs truth, in posterior SD):",
          {n: round(float((a - b) / s), 2)
           for n, a, b, s in zip(names, post.theta_map, truth, post.sd_log)})


if __name__ == "__main__":
    main()
