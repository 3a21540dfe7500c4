"""Validation of single-time-point (STP) dosimetry: Hanscheid, Madsen and the twin prior.

Two virtual cohorts, reference TIA = the true curve's integral:

1. ``pbpk``: patients of the psma-pbrpk model with personal parameters drawn from the population
   prior (calibration.default_prior), 177Lu-PSMA-617 7.4 GBq / 57.09 nmol (typical amount,
   pbpk_models.regimen), curves by ``simulate_batch``. Each patient has a 68Ga-PSMA-11 PET at 1 h
   (150 MBq, 3 nmol) and one SPECT at a scan time t in SCAN_TIMES_H, region activities with the
   noise model of calibration.NOISE (PET: 10% + 0.02 MBq; SPECT: 15% + 0.5 MBq, sources there).
   Twin prior: MAP fit to the PET from the population prior -> posterior -> prior of a fit to the
   one SPECT (``Posterior.as_prior``), TIA at the updated MAP. Madsen: population T_eff of each
   region = median over the cohort of the mono-exponential T_eff fitted to the noise-free curve at
   24-168 h (what a clinic would take from its own multi-time-point series: the most favourable
   choice for Madsen), and for Kidney, SG, Liver also the literature value of
   twin.stp.POPULATION_T_EFF_H ("madsen-lit").
2. ``biexp``: curves NOT from the PBPK model: A(t) = A0 (e^(-l1 t) - e^(-l2 t)) for Kidney, SG,
   Liver with T_eff = ln2/l1 lognormal around the literature medians of twin.stp.POPULATION_T_EFF_H
   (sd of log T_eff 0.35: *assumed*; the published ranges are wide, 8.5-152 h for kidneys), uptake
   half-time lognormal, median 1 h, sd_log 0.5 (*assumed*), level A0 such that the TIA is the
   population-typical PBPK TIA times a lognormal factor (sd_log 0.3, *assumed*). Madsen uses the
   literature medians (its assumption holds on average). Twin prior here: no PET exists for such
   curves, so the prior is the psma-pbrpk *population* prior (an uncalibrated twin) updated with
   the SPECT; this tests the PBPK model's structure against kinetics it did not generate.

Metrics per method, region and scan time: median and 90th percentile of |TIA error| and the share
of patients with |error| > 10%; the best scan time per method minimises that share. Writes
``OUT/stp_errors.csv`` (every estimate), ``OUT/stp_summary.csv``, ``OUT/stp_best.md`` and
``OUT/stp_error_vs_time.png``.

Usage: python benchmarks/validate_stp.py [--n 12] [--cohort pbpk|biexp|both] [--out DIR]
(``--n 100`` for the README table; the twin fits dominate: about 5 s per patient and scan time on
2 busy cores).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("EQX_ON_ERROR", "nan")
os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SCAN_TIMES_H = (4.0, 24.0, 48.0, 72.0, 96.0, 168.0)
REGIONS = ("Kidney", "SG", "Liver", "Tumor1", "Tumor2", "TumorRest")
LESIONS = ("Tumor1", "Tumor2")
PET, LU = "ga68-psma-11", "lu177-psma-617"
THERAPY_MBQ, THERAPY_NMOL = 7400.0, 57.09   # typical 177Lu-PSMA-617 amount (regimen.py)
PET_MBQ, PET_NMOL = 150.0, 3.0              # 68Ga-PSMA-11 (Begum et al., Sci Rep 2019)
DAYS = 120.0                                # TIA span; 177Lu left after 120 d: 3e-6 of A0
BIEXP_SD_LOG_TEFF = 0.35                    # assumed (see module docstring)
BIEXP_UPTAKE_MEDIAN_H, BIEXP_UPTAKE_SD_LOG = 1.0, 0.5   # assumed
BIEXP_LEVEL_SD_LOG = 0.3                    # assumed


def _setup():
    import jax

    jax.config.update("jax_enable_x64", True)
    from calibration import default_prior, model_spec
    from pbpk_models.regimen import Administration, Regimen

    spec = model_spec("psma-pbrpk")
    prior = default_prior("psma-pbrpk", spec)
    lureg = Regimen((Administration(0.0, LU, THERAPY_MBQ, THERAPY_NMOL),))
    petreg = Regimen((Administration(0.0, PET, PET_MBQ, PET_NMOL),))
    return spec, prior, lureg, petreg


def _simulate(spec, regimen, thetas, names, times):
    """(activity (N, regions, times) MBq, tia (N, regions) MBq h, ok, region names)."""
    from pbpk_models.simulate import prepare, simulate_batch

    model = prepare(spec, regimen, np.asarray(times), DAYS)[0]
    base = model.params_from({})
    idx = [model.parameter_names.index(n) for n in names]
    P = np.tile(base, (len(thetas), 1))
    P[:, idx] = np.exp(thetas)
    out = simulate_batch(model, regimen, P, np.asarray(times), days=DAYS)
    return (np.asarray(out["activity_mbq"])[:, 0], np.asarray(out["tia_mbq_h"])[:, 0],
            np.asarray(out["ok"]), list(out["model"].regions))


def _obs(regions, t, act, rp, modality, rng):
    from calibration import NOISE, Observations

    act = np.asarray(act, float)
    sig = NOISE[modality].sigma(act)
    y = np.clip(act + sig * rng.standard_normal(act.shape), 0.0, None)
    n = len(regions)
    return Observations(np.array(regions, dtype=object), np.full(n, float(t)), y, sig,
                        np.array([modality] * n, dtype=object), np.array([rp] * n, dtype=object))


def _fit(obs, regimen, prior, n_starts=1):
    from calibration import fit
    from pbpk_models.errors import FitError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fit(obs, regimen, prior=prior, n_starts=n_starts, max_nfev=40)
        except FitError:
            return None


def _mono_t_eff(t, a):
    """Mono-exponential effective half-life (h) from a log-linear fit of noise-free points."""
    slope = np.polyfit(t, np.log(np.clip(a, 1e-300, None)), 1)[0]
    return math.log(2) / -slope if slope < 0 else np.inf


def cohort_pbpk(n, seed, tqdm):
    from twin.stp import POPULATION_T_EFF_H, hanscheid_tia, madsen_tia

    spec, prior, lureg, petreg = _setup()
    rng = np.random.default_rng(seed)
    thetas = prior.sample_log(n, seed)
    t0 = time.perf_counter()
    act, tia, ok, names = _simulate(spec, lureg, thetas, prior.names, SCAN_TIMES_H)
    pet_act, _, ok_pet, pet_names = _simulate(spec, petreg, thetas, prior.names, [1.0])
    print(f"pbpk cohort: {n} patients simulated in {time.perf_counter() - t0:.1f} s "
          f"({int((~ok).sum())} failed solves)")
    ri = [names.index(r) for r in REGIONS]
    late = np.array(SCAN_TIMES_H) >= 24.0
    t_eff_pop = {}
    for j, r in enumerate(REGIONS):
        te = [_mono_t_eff(np.array(SCAN_TIMES_H)[late], act[i, ri[j], late])
              for i in range(n) if ok[i]]
        t_eff_pop[r] = float(np.median(te))
    print("cohort median mono-exponential T_eff (h):",
          {k: round(v, 1) for k, v in t_eff_pop.items()})
    rows = []
    # twin: PET fit per patient, then one SPECT fit per scan time
    pet_posts = []
    for i in tqdm(range(n), desc="PET fits"):
        if not (ok[i] and ok_pet[i]):
            pet_posts.append(None)
            continue
        o = _obs(REGIONS, 1.0, pet_act[i, [pet_names.index(r) for r in REGIONS], 0], PET, "PET",
                 rng)
        pet_posts.append(_fit(o, petreg, prior))
    map_thetas, keys = [], []
    for it, t in enumerate(SCAN_TIMES_H):
        for i in tqdm(range(n), desc=f"SPECT {t:g} h"):
            if not ok[i]:
                continue
            a_true = act[i, ri, it]
            o = _obs(REGIONS, t, a_true, LU, "SPECT", rng)
            y = np.asarray(o.activity_mbq)
            for j, r in enumerate(REGIONS):
                ref = tia[i, ri[j]]
                rows.append((i, r, t, "hanscheid", float(hanscheid_tia(y[j], t)), ref))
                rows.append((i, r, t, "madsen", float(madsen_tia(y[j], t, t_eff_pop[r])), ref))
                if (LU, r) in POPULATION_T_EFF_H:
                    rows.append((i, r, t, "madsen-lit",
                                 float(madsen_tia(y[j], t, POPULATION_T_EFF_H[(LU, r)][0])), ref))
            if pet_posts[i] is None:
                continue
            post = _fit(o, lureg, pet_posts[i].as_prior())
            if post is not None:
                map_thetas.append(post.theta_map)
                keys.append((i, t))
    if map_thetas:
        _, tia_map, ok_map, _ = _simulate(spec, lureg, np.array(map_thetas), prior.names,
                                          SCAN_TIMES_H)
        for (i, t), tm, okm in zip(keys, tia_map, ok_map):
            for j, r in enumerate(REGIONS):
                rows.append((i, r, t, "twin", float(tm[ri[j]]) if okm else np.nan,
                             float(tia[i, ri[j]])))
    n_fail = sum(p is None for p in pet_posts) + (n * len(SCAN_TIMES_H) - len(keys))
    df = pd.DataFrame(rows, columns=["patient", "region", "time_h", "method", "tia_mbq_h",
                                     "tia_true_mbq_h"])
    df["cohort"] = "pbpk"
    return df, n_fail


def cohort_biexp(n, seed, tqdm):
    from twin.stp import POPULATION_T_EFF_H, hanscheid_tia, madsen_tia

    spec, prior, lureg, _ = _setup()
    regions = ("Kidney", "SG", "Liver")
    rng = np.random.default_rng(seed + 1)
    # population-typical PBPK TIA sets the level (so the twin's prior on the level is sensible)
    _, tia_typ, _, names = _simulate(spec, lureg, prior.mean_log[None, :], prior.names,
                                     SCAN_TIMES_H)
    rows, map_thetas, keys, truth = [], [], [], {}
    params = {}
    for i in range(n):
        for r in regions:
            z = rng.standard_normal()
            te = POPULATION_T_EFF_H[(LU, r)][0] * math.exp(BIEXP_SD_LOG_TEFF * z)
            tu = BIEXP_UPTAKE_MEDIAN_H * math.exp(BIEXP_UPTAKE_SD_LOG * rng.standard_normal())
            l1, l2 = math.log(2) / te, math.log(2) / tu
            if l2 <= l1:  # keep uptake faster than washout
                l2 = 2 * l1
            level = tia_typ[0, names.index(r)] * math.exp(BIEXP_LEVEL_SD_LOG *
                                                          rng.standard_normal())
            a0 = level / (1 / l1 - 1 / l2)
            params[(i, r)] = (a0, l1, l2)
            truth[(i, r)] = level
    for t in SCAN_TIMES_H:
        for i in tqdm(range(n), desc=f"biexp {t:g} h"):
            a_true = np.array([params[(i, r)][0] * (math.exp(-params[(i, r)][1] * t) -
                                                    math.exp(-params[(i, r)][2] * t))
                               for r in regions])
            o = _obs(regions, t, a_true, LU, "SPECT", rng)
            y = np.asarray(o.activity_mbq)
            for j, r in enumerate(regions):
                ref = truth[(i, r)]
                rows.append((i, r, t, "hanscheid", float(hanscheid_tia(y[j], t)), ref))
                rows.append((i, r, t, "madsen",
                             float(madsen_tia(y[j], t, POPULATION_T_EFF_H[(LU, r)][0])), ref))
            post = _fit(o, lureg, prior)
            if post is not None:
                map_thetas.append(post.theta_map)
                keys.append((i, t))
    if map_thetas:
        _, tia_map, ok_map, names = _simulate(spec, lureg, np.array(map_thetas), prior.names,
                                              SCAN_TIMES_H)
        for (i, t), tm, okm in zip(keys, tia_map, ok_map):
            for r in regions:
                rows.append((i, r, t, "twin", float(tm[names.index(r)]) if okm else np.nan,
                             truth[(i, r)]))
    df = pd.DataFrame(rows, columns=["patient", "region", "time_h", "method", "tia_mbq_h",
                                     "tia_true_mbq_h"])
    df["cohort"] = "biexp"
    return df, n * len(SCAN_TIMES_H) - len(keys)


def summarise(df):
    df = df.copy()
    df["err"] = df["tia_mbq_h"] / df["tia_true_mbq_h"] - 1.0
    les = df[df["region"].isin(LESIONS)].copy()
    les["region"] = "lesions (Tumor1+2)"
    df = pd.concat([df, les])

    def agg(g):
        e = np.abs(g["err"].dropna())
        return pd.Series({"n": len(e), "median_abs_err": e.median(),
                          "p90_abs_err": e.quantile(0.9), "share_over_10pct": (e > 0.10).mean(),
                          "median_signed_err": g["err"].median()})

    summ = (df.groupby(["cohort", "region", "method", "time_h"])[["err"]]
            .apply(agg).reset_index())
    best = (summ.sort_values(["share_over_10pct", "median_abs_err"])
            .groupby(["cohort", "region", "method"]).head(1)
            .sort_values(["cohort", "region", "method"]))
    return df, summ, best


STYLE = {"hanscheid": ("C0", "-"), "madsen": ("C1", "-"), "madsen-lit": ("C1", ":"),
         "twin": ("C3", "-")}


def plot(summ, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohorts = list(dict.fromkeys(summ["cohort"]))
    regions = list(dict.fromkeys(summ["region"]))
    fig, axes = plt.subplots(len(cohorts), len(regions), figsize=(3.2 * len(regions),
                                                                  3.0 * len(cohorts)),
                             squeeze=False, sharey=True)
    for ci, c in enumerate(cohorts):
        for ri, r in enumerate(regions):
            ax = axes[ci, ri]
            sub = summ[(summ["cohort"] == c) & (summ["region"] == r)]
            if sub.empty:
                ax.set_visible(False)
                continue
            for m, g in sub.groupby("method"):
                color, ls = STYLE.get(m, ("k", "-"))
                ax.plot(g["time_h"], 100 * g["median_abs_err"], marker="o", color=color, ls=ls,
                        label=m)
            ax.set_title(f"{c}: {r}", fontsize=9)
            ax.set_xlabel("scan time (h)")
            ax.set_yscale("log")
            if ri == 0:
                ax.set_ylabel("median |TIA error| (%)")
            ax.axhline(10, color="grey", lw=0.5, ls="--")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12, help="patients per cohort")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cohort", choices=("pbpk", "biexp", "both"), default="both")
    ap.add_argument("--out", type=Path, default=Path("stp-validation"))
    ap.add_argument("--summarise-only", action="store_true",
                    help="re-summarise OUT/stp_errors*.csv (e.g. of two parallel runs)")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from twin.atomic import write_csv_atomic, write_text_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.summarise_only:
        df = pd.concat([pd.read_csv(p) for p in sorted(args.out.glob("stp_errors_*.csv"))])
    else:
        parts, fails = [], {}
        if args.cohort in ("pbpk", "both"):
            d, f = cohort_pbpk(args.n, args.seed, tqdm)
            parts.append(d)
            fails["pbpk"] = f
        if args.cohort in ("biexp", "both"):
            d, f = cohort_biexp(args.n, args.seed, tqdm)
            parts.append(d)
            fails["biexp"] = f
        df = pd.concat(parts)
        write_csv_atomic(df, args.out / f"stp_errors_{args.cohort}.csv")
        print(f"failed twin fits: {fails}")
    full, summ, best = summarise(df)
    write_csv_atomic(summ, args.out / "stp_summary.csv")
    lines = ["| cohort | region | method | best scan (h) | n | median abs err | P90 abs err | "
             "share > 10% | median signed err |", "|" + " --- |" * 9]
    for _, r in best.iterrows():
        lines.append(f"| {r['cohort']} | {r['region']} | {r['method']} | {r['time_h']:g} | "
                     f"{int(r['n'])} | {100 * r['median_abs_err']:.1f}% | "
                     f"{100 * r['p90_abs_err']:.1f}% | {100 * r['share_over_10pct']:.0f}% | "
                     f"{100 * r['median_signed_err']:+.1f}% |")
    table = "\n".join(lines)
    write_text_atomic(args.out / "stp_best.md", table + "\n")
    plot(summ, args.out / "stp_error_vs_time.png")
    print(table)
    print(f"\nall scan times: {args.out / 'stp_summary.csv'}; plot "
          f"{args.out / 'stp_error_vs_time.png'}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
