"""Validation: 3+3 on 177Lu-PSMA-617 activity levels on the mcrpc population, and fixed 7.4 GBq
x 6 against the dosimetry-guided arm.

1. Operating characteristics of the 3+3 over 3.7, 5.55, 7.4, 9.25, 11.1 GBq per cycle (6 cycles
   every 6 weeks): probability of selecting each level as the MTD, patients treated, DLT rate,
   share of patients over the kidney BED limit (40 Gy, Bodei 2008) and the marrow limit (2 Gy);
   with the exact 3+3 selection probabilities computed from the population's mean DLT
   probability per level beside the simulated ones (a check of the simulation).
2. Three arms on the same virtual patients (``twin.trials.virtual.compare_arms``): fixed 7.4 GBq
   x 6; twin-guided (each patient's pre-therapy 68Ga-PSMA-11 PET simulated with the project's
   noise model, ``calibration.fit`` from the population prior with the CT/GFR covariates known,
   ``--n-draws`` posterior draws, limits held at the 0.95 posterior quantile); oracle-guided
   (the same rule on the true parameters, an upper bound).

Writes benchmarks/results/trials/{oc_3p3.csv, oc_3p3.png, arms.csv, arms_patients.csv,
arms.png, arms.md} and prints the tables. Small default sizes (``--pool``, ``--n-trials``,
``--n-arms``, ``--n-draws``); ``--skip-3p3`` runs only the arms (and writes only their files).

``--population net``: the same on the NET population (177Lu-DOTATATE, 4 cycles every 8 weeks;
files suffixed ``_net``), plus the population's per-cycle organ doses against published
177Lu-DOTATATE dosimetry (net_dosimetry_check.csv): kidney 0.38 +/- 0.19 Gy/GBq (EJNMMI Phys
2018, doi:10.1186/s40658-018-0232-9), 0.43 +/- 0.13 (EJNMMI Res 2018,
doi:10.1186/s13550-018-0459-4), 0.46 mean (Staanum 2021, EJNMMI Phys 8:78), 0.57 +/- 0.09 and
spleen 1.17 +/- 0.14, liver 0.27 +/- 0.05, NETs 3.41 +/- 0.68 Gy/GBq (Clin Nucl Med 2013, 61
patients); red marrow 0.42 +/- 0.27 Gy per cycle (population_radiobiology.md). A record
(command, sizes, seed, date, load) goes to validate_<population>.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

LEVELS = (3.7, 5.55, 7.4, 9.25, 11.1)


def exact_3p3_selection(p):
    from scipy.stats import binom

    e = binom.pmf(0, 3, p) + binom.pmf(1, 3, p) * binom.pmf(0, 3, p)
    reach = np.concatenate([[1.0], np.cumprod(e)[:-1]])
    # level k (0-based) is selected when the trial escalates past 0..k and stops at k + 1
    return np.concatenate([reach[1:] * (1 - e[1:]), [np.prod(e)]]), 1 - e[0]


def main():
    from twin.atomic import write_csv_atomic
    from twin.trials.virtual import (compare_arms, plot_arms, plot_operating_characteristics,
                                     virtual_trial)

    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=64, help="virtual patients per level")
    ap.add_argument("--n-trials", type=int, default=2000)
    ap.add_argument("--n-arms", type=int, default=64, help="virtual patients per arm")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--population", default="mcrpc", choices=("mcrpc", "net"))
    ap.add_argument("--n-draws", type=int, default=32,
                    help="posterior draws per patient in the twin-guided arm")
    ap.add_argument("--pet-times", default="1", help="PET times (h p.i.), comma-separated")
    ap.add_argument("--protocol", default="pet", choices=("pet", "pet+spect24h"),
                    help="imaging of the twin-guided arm (pet+spect24h: files suffixed _spect)")
    ap.add_argument("--no-imaged", action="store_true",
                    help="fixed and oracle arms only (no fits)")
    ap.add_argument("--skip-3p3", action="store_true", help="run only the arm comparison")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/trials"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pop_name = args.population
    sfx = "" if pop_name == "mcrpc" else f"_{pop_name}"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load0 = os.getloadavg()
    check = None
    if not args.skip_3p3:
        t = time.perf_counter()
        vt = virtual_trial("3+3", LEVELS, population=pop_name, n_trials=args.n_trials,
                           seed=args.seed, pool_size=args.pool)
        n_cyc, weeks = vt.population.n_cycles, vt.population.interval_weeks
        tab = vt.table
        sel, p_none = exact_3p3_selection(tab["true_p_dlt"].to_numpy())
        tab["p_select_exact_given_mean_p"] = sel
        write_csv_atomic(tab, args.out / f"oc_3p3{sfx}.csv", index=False)
        plot_operating_characteristics(tab, args.out / f"oc_3p3{sfx}.png",
                                       f"3+3, {pop_name} pool {args.pool}, {args.n_trials} "
                                       f"trials, {n_cyc} cycles every {weeks:g} weeks")
        cols = ["level", "activity_gbq", "true_p_dlt", "p_select_mtd",
                "p_select_exact_given_mean_p", "mean_patients", "p_dlt_observed",
                "rate_over_kidney_bed_gy_40", "rate_over_redmarrow_dose_gy_2", "rate_response"]
        print(f"3+3 on {pop_name} (pool {args.pool}, {args.n_trials} trials, "
              f"{time.perf_counter() - t:.0f} s); P(no MTD) = "
              f"{vt.results.summary()['p_no_mtd']:.3f} (exact given mean p: {p_none:.3f})")
        print(tab[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        pool = vt.pool
        over = [pool.loc[pool.activity_gbq == a, "over_kidney_bed_gy_40"].mean() for a in LEVELS]
        print("pool: share of virtual patients over the kidney BED limit at each level: "
              + ", ".join(f"{a:g} GBq {o:.2f}" for a, o in zip(LEVELS, over)))
        if pop_name == "net":
            check = net_dosimetry_check(vt.doses, LEVELS)
            write_csv_atomic(check, args.out / "net_dosimetry_check.csv", index=False)
            print("\nnet population, per-cycle doses at 7.4 GBq against published 177Lu-DOTATATE "
                  "dosimetry:")
            print(check.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    t = time.perf_counter()
    arms_started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    arms_load0 = os.getloadavg()
    pet_times = tuple(float(x) for x in args.pet_times.split(","))
    summary, per = compare_arms(pop_name, n=args.n_arms, seed=args.seed + 100,
                                imaged=not args.no_imaged, pet_times_h=pet_times,
                                n_draws=args.n_draws, protocol=args.protocol)
    asfx = sfx + ("_spect" if args.protocol != "pet" else "")
    arms_s = time.perf_counter() - t
    n_cyc = int(summary["mean_course_gbq"].iloc[0] / summary["mean_activity_gbq"].iloc[0] + 0.5)
    write_csv_atomic(summary, args.out / f"arms{asfx}.csv", index=False)
    write_csv_atomic(per, args.out / f"arms_patients{asfx}.csv", index=False)
    plot_arms(per, args.out / f"arms{asfx}.png", n_cycles=n_cyc)
    print(f"\nfixed 7.4 GBq x {n_cyc} vs twin-guided vs oracle-guided ({args.n_arms} patients, "
          f"{args.n_draws} posterior draws each, {arms_s:.0f} s)")
    print(summary.T.to_string(header=False, float_format=lambda x: f"{x:.3f}"))
    _record_arms(args, pop_name, asfx, arms_started, arms_load0, arms_s, pet_times, summary, per)
    if not args.skip_3p3:
        _record(args, pop_name, sfx, started, load0, n_cyc, weeks, check is not None)


def _record_arms(args, pop_name, sfx, started, load0, seconds, pet_times, summary, per):
    import sys

    from twin.atomic import write_text_atomic

    load1 = os.getloadavg()
    tw = per[per.arm.str.startswith("twin-guided")]
    cols = ["arm", "mean_activity_gbq", "kidney_bed_median_gy", "kidney_bed_p95_gy",
            "over_kidney_bed_gy_40", "over_redmarrow_dose_gy_2", "mean_p_dlt", "response_rate",
            "lesion_dose_median_gy", "infeasible_at_lower_bound", "fit_failed"]
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "---|" * len(cols)
    body = ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                              for v in r) + " |" for r in summary[cols].itertuples(index=False)]
    lines = [f"# Fixed vs twin-guided vs oracle-guided arms, {pop_name} population", "",
             f"- command: `python {' '.join(sys.argv)}`",
             f"- started {started}; {seconds:.0f} s wall; seed {args.seed + 100} (population "
             f"sample and PET noise); {args.n_arms} virtual patients (the same in every arm)",
             f"- twin-guided arm: protocol {args.protocol}, PET at "
             f"{', '.join(f'{t:g}' for t in pet_times)} h p.i.; "
             f"{args.n_draws} posterior draws per patient; limits at the 0.95 posterior quantile"
             if not args.no_imaged else "- no imaged-twin arm (--no-imaged)",
             f"- load average at start {load0[0]:.1f}, at end {load1[0]:.1f} (shared 2-core "
             f"machine, other sessions running)", ""]
    if len(tw):
        lines += [f"- fits: median {tw.fit_seconds.median():.2f} s, max "
                  f"{tw.fit_seconds.max():.1f} s (includes the first compile); failed "
                  f"{int(tw.fit_failed.sum())}", ""]
    lines += [head, sep, *body, "",
              f"- files: arms{sfx}.csv, arms_patients{sfx}.csv, arms{sfx}.png", ""]
    write_text_atomic(args.out / f"arms{sfx}.md", "\n".join(lines))


def net_dosimetry_check(doses, levels):
    """Per-cycle organ doses of the pool at 7.4 GBq (Gy/GBq) against published values."""
    import pandas as pd

    j = list(levels).index(7.4)
    ok = doses.ok[:, j]
    per_cycle_gbq = 7.4 * doses.n_cycles
    kid = doses.kidney_dose_gy[ok, j] / per_cycle_gbq
    marrow = doses.marrow_dose_gy[ok, j] / doses.n_cycles
    les = doses.lesion_dose_c1_gy[ok, j] / 7.4
    return pd.DataFrame([
        {"quantity": "kidney dose per GBq (Gy/GBq)", "twin_mean": kid.mean(),
         "twin_sd": kid.std(ddof=1), "published": "0.38 +/- 0.19; 0.43 +/- 0.13; 0.46; "
                                                  "0.57 +/- 0.09"},
        {"quantity": "red marrow dose per cycle (Gy)", "twin_mean": marrow.mean(),
         "twin_sd": marrow.std(ddof=1), "published": "0.42 +/- 0.27"},
        {"quantity": "mean lesion dose per GBq, cycle 1 (Gy/GBq)", "twin_mean": les.mean(),
         "twin_sd": les.std(ddof=1), "published": "NETs 3.41 +/- 0.68 (Clin Nucl Med 2013)"},
    ])


def _record(args, pop_name, sfx, started, load0, n_cyc, weeks, has_check):
    import sys

    from twin.atomic import write_text_atomic

    load1 = os.getloadavg()
    files = [f"oc_3p3{sfx}.csv", f"oc_3p3{sfx}.png", f"arms{sfx}.csv",
             f"arms_patients{sfx}.csv", f"arms{sfx}.png"]
    if has_check:
        files.append("net_dosimetry_check.csv")
    write_text_atomic(args.out / f"validate_{pop_name}.md", "\n".join([
        f"# Virtual-trial validation on the {pop_name} population", "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- started {started}; seed {args.seed}; 3+3 pool {args.pool} virtual patients x "
        f"{len(LEVELS)} levels, {args.n_trials} trials; arms {args.n_arms} patients each; "
        f"{n_cyc} cycles every {weeks:g} weeks",
        f"- load average at start {load0[0]:.1f}, at end {load1[0]:.1f} (shared 2-core machine)",
        f"- files: {', '.join(files)}", ""]))


if __name__ == "__main__":
    main()
