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
solved and scaled, which is what ``twin trial`` uses), in chunks with a tqdm progress bar; time,
peak memory (ru_maxrss) and the load average before/after; the scipy loop is skipped unless
``--n-scipy`` is given; a short record goes to ``--record`` (default
benchmarks/results/trials/big_100k.md) with the per-patient kidney BED quantiles in a CSV beside it.

Usage: python benchmarks/bench_trials.py [--n 64] [--n-scipy 2] [--big [--population net]]
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
    s = u.gy_per_mbq_h(rn.energy_per_decay_mev(model.radiopharmaceuticals[0].nuclide), m)
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


def _record(args, n, mode, started, load0, ours_s, compile_s, peak_gb, d):
    """Write the --big run's record (markdown) and kidney BED / dose quantiles (CSV)."""
    import sys
    from pathlib import Path

    import pandas as pd

    from twin.atomic import write_csv_atomic, write_text_atomic

    rec = Path(args.record)
    q = [0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    tab = pd.DataFrame({"quantile": q, **{k: np.nanquantile(v[:, 0], q) for k, v in
                                          d.as_dict().items()}})
    write_csv_atomic(tab, rec.with_suffix(".csv"), index=False)
    load1 = os.getloadavg()
    write_text_atomic(rec, "\n".join([
        f"# {n:,} virtual patients in one run ({args.population})", "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- started {started}; n = {n}; population seed 1; {len(jax.devices())} JAX device(s); "
        f"{os.cpu_count()} cores",
        f"- workload: {d.n_cycles} cycles x 7.4 GBq every {args.interval_weeks:g} weeks, "
        f"cycle mode {mode}, "
        f"{args.points} grid points per cycle, chunks of {args.chunk}",
        f"- wall time {ours_s * n:.0f} s = {1 / ours_s:.1f} patients/s (compile, first call "
        f"{compile_s:.0f} s, not included); peak RSS {peak_gb:.2f} GB; all solves ok: "
        f"{bool(d.ok.all())} ({int((~d.ok).sum())} failed)",
        f"- load average (1, 5, 15 min) at start {load0[0]:.1f}, {load0[1]:.1f}, {load0[2]:.1f}; "
        f"at end {load1[0]:.1f}, {load1[1]:.1f}, {load1[2]:.1f} (shared 2-core machine: "
        f"other jobs were running, times are slower than idle)",
        f"- kidney BED / dose quantiles over the patients: {rec.with_suffix('.csv').name}", ""]))


def main():
    from twin.trials.engine import level_doses
    from twin.trials.populations import sample

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="virtual patients (ours)")
    ap.add_argument("--n-scipy", type=int, default=None,
                    help="patients of the scipy loop (default 2; 0 with --big)")
    ap.add_argument("--population", default="mcrpc", help="virtual population (mcrpc, net)")
    ap.add_argument("--record", default="benchmarks/results/trials/big_100k.md",
                    help="with --big: where to write the run's record (markdown)")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--points", type=int, default=32, help="grid points per cycle")
    ap.add_argument("--cycles", choices=("full", "superpose"), default=None)
    ap.add_argument("--big", action="store_true", help="100,000 virtual patients in one run")
    args = ap.parse_args()
    n = 100_000 if args.big else args.n
    if args.n_scipy is None:
        args.n_scipy = 0 if args.big else 2
    mode = args.cycles or ("superpose" if args.big else "full")
    load0 = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"CPU only, {len(jax.devices())} JAX device(s); jax {jax.__version__}")
    activity = 7.4
    pop = sample(args.population, n, seed=1)
    warm = sample(args.population, min(args.chunk, n), seed=2)
    t = time.perf_counter()
    level_doses(warm, [activity], cycle_mode=mode, points_per_cycle=args.points,
                chunk_size=args.chunk, progress=False)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    d = level_doses(pop, [activity], cycle_mode=mode, points_per_cycle=args.points,
                    chunk_size=args.chunk, progress=True)
    ours_s = (time.perf_counter() - t) / n
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    args.interval_weeks = pop.interval_weeks
    print(f"ours ({mode}, {pop.n_cycles} cycles, {args.points} points/cycle): {n} patients in "
          f"{ours_s * n:.1f} s = {1 / ours_s:.1f} patients/s ({ours_s * 1e3:.1f} ms/patient); "
          f"first call incl. compile {compile_s:.1f} s; all ok: {bool(d.ok.all())}; "
          f"peak RSS {peak_gb:.2f} GB")
    print(f"  kidney BED median {np.median(d.kidney_bed_gy):.1f} Gy, 95th percentile "
          f"{np.percentile(d.kidney_bed_gy, 95):.1f} Gy; kidney dose per GBq median "
          f"{np.median(d.kidney_dose_gy) / (activity * d.n_cycles):.3f} Gy/GBq")
    if args.big:
        _record(args, n, mode, started, load0, ours_s, compile_s, peak_gb, d)
    if args.n_scipy > 0:
        model, P = pop.model, pop.params
        t = time.perf_counter()
        errs = []
        for i in range(args.n_scipy):
            dose, b = scipy_patient(model, P[i], activity * 1000.0, pop.n_cycles,
                                    pop.interval_weeks * 7 * 24.0, args.points)
            if mode == "full":
                errs.append(max(abs(dose / d.kidney_dose_gy[i, 0] - 1),
                                abs(b / d.kidney_bed_gy[i, 0] - 1)))
        sc_s = (time.perf_counter() - t) / args.n_scipy
        diff = f"; max relative kidney dose/BED difference to ours {max(errs):.1e}" if errs \
            else ""
        print(f"scipy solve_ivp LSODA+jac loop ({pop.n_cycles} cycles, kidney BED): "
              f"{sc_s * 1e3:.0f} ms/patient = {1 / sc_s:.2f} patients/s on {args.n_scipy} "
              f"patients{diff}")
        print(f"ratio scipy/ours (time per patient): {sc_s / ours_s:.1f}")
    if math.isfinite(ours_s):
        print(f"extrapolated: 100,000 patients x 5 levels in {5e5 * ours_s / 3600:.1f} h at "
              f"this rate")


if __name__ == "__main__":
    main()
