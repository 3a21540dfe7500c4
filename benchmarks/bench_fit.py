"""Benchmark: fitting one patient, ours against scipy least_squares with finite differences.

One synthetic patient (psma-pbrpk corrected, seven personal parameters: kidney, SG and three
lesion receptor densities, kidney and SG release), 68Ga-PSMA-11 PET at 1 h (150 MBq, 3 nmol)
and 177Lu-PSMA-617 SPECT at 24 h and 96 h after a 7.4 GBq cycle given a week later, six regions
each (18 data points), noise of calibration.NOISE. Both fits start from the same point (every
parameter off by a factor 2.5) and minimise the same objective (whitened data residuals and
the prior) with scipy's 'trf' under the same bounds:
- ours: ``calibration.fit`` (Jacobian by JAX forward mode through the stiff solve);
- scipy: ``least_squares`` with a 2-point finite-difference Jacobian, ``diff_step=1e-4``
  (the tuned baseline of shared/NOTES.md; the default step stalls on ODE models), on a jitted
  residual-only function (the same solves, no derivatives).
Compilation is done before timing for both.
Run: python benchmarks/bench_fit.py
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

from calibration.fit import (BOUND_SD, Objective, build_problem, fit,  # noqa: E402
                             synthetic_observations, _problem_data)
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
            preds.append(out["amounts"][seg["ts"], seg["rp"], seg["reg"]] * seg["mbq"][seg["rp"]])
        pred = jnp.concatenate(preds)
        return jnp.concatenate([(pred - data["y"]) / data["sigma"],
                                data["W"] @ (theta - data["mu"])])

    return lambda th: np.asarray(r(jnp.asarray(th), data))


def main():
    obs = synthetic_observations(REGIMEN, DESIGN, TRUTH, seed=3)
    problem = build_problem(obs, REGIMEN)
    names = problem.names
    x0 = np.log([START[n] for n in names])
    truth = np.log([TRUTH[n] for n in names])
    obj = Objective(problem)
    t = time.perf_counter()
    obj.evaluate(x0)
    compile_ours = time.perf_counter() - t
    baselines = {}
    for label, settings in (("kvaerno5", SolverSettings()),
                            ("rosenbrock", SolverSettings(method="rosenbrock"))):
        rfun = residual_only(problem, settings)
        rfun(x0)  # compile, not timed
        baselines[label] = rfun

    t = time.perf_counter()
    post = fit(obs, REGIMEN, n_starts=1, x0=START, problem=problem)
    t_ours = time.perf_counter() - t
    cost_ours = post.diagnostics["cost"]

    prior = problem.prior
    lo = prior.mean_log - BOUND_SD * prior.sd_log
    hi = prior.mean_log + BOUND_SD * prior.sd_log
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)  # as calibration.fit does with a start
    results = {}
    for label, rfun in baselines.items():
        t = time.perf_counter()
        res = least_squares(rfun, x0, bounds=(lo, hi), method="trf", x_scale="jac",
                            diff_step=1e-4, xtol=1e-10, ftol=1e-10, gtol=1e-8, max_nfev=400)
        results[label] = (time.perf_counter() - t, obj.cost(res.x), res)
    compile_scipy = 0.0

    print(f"problem: {problem.n_obs} data points, {len(names)} personal parameters, "
          f"PET 1 h + SPECT 24 h and 96 h")
    print(f"compile (not timed below): ours {compile_ours:.1f} s")
    print(f"{'method':<34}{'time s':>8}{'cost':>12}{'evals':>8}{'max |dlog p - MAP|':>20}")
    print(f"{'ours (JAX forward-mode Jacobian)':<34}{t_ours:>8.2f}{cost_ours:>12.6f}"
          f"{post.diagnostics['evaluations']:>8d}{0.0:>20.2e}")
    for label, (t_scipy, cost_scipy, res) in results.items():
        name = f"scipy least_squares FD ({label})"
        print(f"{name:<34}{t_scipy:>8.2f}{cost_scipy:>12.6f}{res.nfev:>8d}"
              f"{np.max(np.abs(res.x - post.theta_map)):>20.2e}")
        print(f"  speed-up vs this baseline {t_scipy / t_ours:.1f}x; cost difference "
              f"(scipy - ours) {cost_scipy - cost_ours:.2e}")
    print("recovery (MAP vs truth, in posterior SD):",
          {n: round(float((a - b) / s), 2)
           for n, a, b, s in zip(names, post.theta_map, truth, post.sd_log)})


if __name__ == "__main__":
    main()
