"""Virtual patients per second: the trial engine against a scipy loop, side by side.

Workload per virtual patient (mcrpc population, psma-pbrpk corrected, full model with saturable
binding): 6 cycles of 7.4 GBq 177Lu-PSMA-617 every 6 weeks, 60 days after the last; TIA, dose
and Lea-Catcheside BED of every region with a mass (kidney BED with alpha/beta 2.6 Gy, T_rep
2.8 h), on the organ engine's output grid (``--points`` per cycle).

- ours: :func:`twin.trials.engine.level_doses` with ``cycle_mode='full'`` (all 6 cycles in one
  jitted, vmapped Rodas5P solve per row; chunks; sharded when there are several devices);
  compile time reported separately.
- scipy: a loop over patients of ``solve_ivp`` (LSODA, the analytic Jacobian, rtol 1e-6,
  atol 1e-9 nmol as ours), cycle by cycle with the bolus added between them, evaluated on the
  same grid, kidney BED by ``twin.dosimetry.radiobiology.bed`` on the sampled dose rate;
  timed on ``--n-scipy`` patients and extrapolated per patient.
``--big``: 100,000 virtual patients in one run (``--cycles superpose`` by default, one cycle
solved and scaled, which is what ``twin trial`` uses); time and peak memory (ru_maxrss).

Usage: python benchmarks/bench_trials.py [--n 64] [--n-scipy 2] [--big]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import time

os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402


def scipy_patient(model, p, a_mbq, n_cycles, interval_h, points, days=60.0):
    """Kidney dose and BED (Gy) of one patient by a scipy solve_ivp loop over the cycles."""
    from scipy.integrate import solve_ivp

    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u
    from twin.dosimetry.organ import _mass_function, cycle_grid
    from twin.dosimetry.radiobiology import bed, tissue
    from twin.trials.engine import nmol_per_cycle

    hot, cold = nmol_per_cycle(model, np.array([a_mbq]))
    at = np.arange(n_cycles) * interval_h
    grid = cycle_grid(at, float(at[-1] + 24 * days), points)
    f, jac = model.vector_field_numpy(p)
    ik = model.regions.index("Kidney")
    m = _mass_function(model)(p[None, :])[0, ik]
    s = u.gy_per_mbq_h(rn.energy_per_decay_mev("Lu-177"), m)
    y = np.zeros(model.n_states)
    kid = tissue("kidney")
    dose = bedsum = 0.0
    for k in range(n_cycles):
        y[model.dosing_index] += np.array([hot[0], cold[0]])
        acc0 = y[model.acc_offset + ik]
        sol = solve_ivp(f, (grid[k, 0], grid[k, -1]), y, method="LSODA", rtol=1e-6, atol=1e-9,
                        jac=jac, t_eval=grid[k])
        y = sol.y[:, -1].copy()
        act = np.asarray(model.region_amounts(sol.y.T))[:, 0, ik] * model.mbq_per_nmol[0]
        d = (y[model.acc_offset + ik] - acc0) * model.mbq_per_nmol[0] * s
        rate = np.maximum(act, 0.0) * s
        b = bed(grid[k] - grid[k, 0], rate, kid.alpha_beta_gy, kid.repair_half_time_h)
        # Lea-Catcheside part from the sampled curve, dose from the exact integral state
        dose += d
        bedsum += d + (b - np.trapezoid(rate, grid[k]))
    return dose, bedsum


def main():
    from twin.trials.engine import level_doses
    from twin.trials.populations import sample

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="virtual patients (ours)")
    ap.add_argument("--n-scipy", type=int, default=2, help="patients of the scipy loop")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--points", type=int, default=32, help="grid points per cycle")
    ap.add_argument("--cycles", choices=("full", "superpose"), default=None)
    ap.add_argument("--big", action="store_true", help="100,000 virtual patients in one run")
    args = ap.parse_args()
    n = 100_000 if args.big else args.n
    mode = args.cycles or ("superpose" if args.big else "full")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"CPU only, {len(jax.devices())} JAX device(s); jax {jax.__version__}")
    pop = sample("mcrpc", n, seed=1)
    warm = sample("mcrpc", min(args.chunk, n), seed=2)
    t = time.perf_counter()
    level_doses(warm, [7.4], cycle_mode=mode, points_per_cycle=args.points,
                chunk_size=args.chunk, progress=False)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    d = level_doses(pop, [7.4], cycle_mode=mode, points_per_cycle=args.points,
                    chunk_size=args.chunk, progress=True)
    ours_s = (time.perf_counter() - t) / n
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"ours ({mode}, 6 cycles, {args.points} points/cycle): {n} patients in "
          f"{ours_s * n:.1f} s = {1 / ours_s:.1f} patients/s ({ours_s * 1e3:.1f} ms/patient); "
          f"first call incl. compile {compile_s:.1f} s; all ok: {bool(d.ok.all())}; "
          f"peak RSS {peak_gb:.2f} GB")
    print(f"  kidney BED median {np.median(d.kidney_bed_gy):.1f} Gy, 95th percentile "
          f"{np.percentile(d.kidney_bed_gy, 95):.1f} Gy; kidney dose per GBq median "
          f"{np.median(d.kidney_dose_gy) / 44.4:.3f} Gy/GBq")
    if args.n_scipy > 0:
        model, P = pop.model, pop.params
        t = time.perf_counter()
        errs = []
        for i in range(args.n_scipy):
            dose, b = scipy_patient(model, P[i], 7400.0, 6, 6 * 7 * 24.0, args.points)
            if mode == "full":
                errs.append(max(abs(dose / d.kidney_dose_gy[i, 0] - 1),
                                abs(b / d.kidney_bed_gy[i, 0] - 1)))
        sc_s = (time.perf_counter() - t) / args.n_scipy
        diff = f"; max relative kidney dose/BED difference to ours {max(errs):.1e}" if errs \
            else ""
        print(f"scipy solve_ivp LSODA+jac loop (6 cycles, kidney BED): {sc_s * 1e3:.0f} "
              f"ms/patient = {1 / sc_s:.2f} patients/s on {args.n_scipy} patients{diff}")
        print(f"ratio scipy/ours (time per patient): {sc_s / ours_s:.1f}")
    if math.isfinite(ours_s):
        print(f"extrapolated: 100,000 patients x 5 levels in {5e5 * ours_s / 3600:.1f} h at "
              f"this rate")


if __name__ == "__main__":
    main()
