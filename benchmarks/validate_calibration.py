"""Virtual-cohort validation of the personalisation (issue 4, "Must show").

N virtual patients are drawn from the population prior of the personal parameters of
``psma-pbrpk`` (corrected variant; ``calibration.priors``: kidney, SG and three lesion receptor
densities, kidney and SG release rates; every other parameter at its population value). Each
patient has a pre-therapy 68Ga-PSMA-11 PET (150 MBq, 3 nmol; PET 60 min p.i., EANM/SNMMI
procedure guideline, Fendler et al., Eur J Nucl Med Mol Imaging 2017;44:1014) one week before a
7.4 GBq cycle of 177Lu-PSMA-617 (57.09 nmol, regimen.TYPICAL_NMOL_PER_GBQ), and quantitative
SPECT at 4 h and 24 h after the therapy (clinically used early time points, e.g. EANM
dosimetry guidance for 177Lu-PSMA, Sjogreen Gleisner et al., EJNMMI Phys 2022;9:30).
Regions measured on every scan: Kidney, SG, Tumor1, Tumor2, TumorRest, Liver.

Observations are the model's region activities with the noise of ``calibration.noise_model``
(Gaussian, sigma = sqrt((c A)^2 + a^2), clipped at 0; organs: PET c = 0.10, SPECT c = 0.15;
lesions (Tumor1, Tumor2, TumorRest): PET c = 0.16, SPECT c = 0.18). The
virtual patients come from the same model and prior the fit uses (no model misspecification:
this validates the estimator and its uncertainty, not the model).

Protocols: (a) PET alone, (b) PET + SPECT 24 h, (c) PET + SPECT 4 h and 24 h (the issue's
table), and optionally (d) PET + SPECT 24 h and 96 h (a late scan; ``--protocols d``).
For each patient and protocol: ``calibration.fit`` (noise='model', one start at the prior
median; 4 starts if that does not converge), then ``twin.build.simulate_twin`` of the
therapy cycle alone (60 days, posterior draws) for the predicted TIA and its 90% interval.
Truth: the TIA of the true parameters (one vmapped ``simulate_batch`` for the whole cohort).

Reported per protocol and region group (kidney, salivary glands, lesions = the three lesion
regions pooled): median and 90th percentile of |TIA error| (relative), the median signed error,
and the fraction of patients whose true TIA lies in the 90% interval; plus fit failures and
time per fit. Written to ``<out>/calibration_cohort.md`` and ``.csv`` (per patient and region:
``calibration_cohort_patients.csv``) and a plot ``calibration_cohort.png``.

Run:  python benchmarks/validate_calibration.py            (8 patients, a quick check)
      python benchmarks/validate_calibration.py --n 100    (the README table)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

jax.config.update("jax_enable_x64", True)

from calibration import (Observations, default_prior, fit, model_spec, noise_model,  # noqa: E402
                         noise_sigma)
from pbpk_models.errors import FitError  # noqa: E402
from pbpk_models.regimen import Administration, Regimen  # noqa: E402
from pbpk_models.simulate import prepare, simulate_batch  # noqa: E402

MODEL, VARIANT = "psma-pbrpk", "corrected"
PET, LU = "ga68-psma-11", "lu177-psma-617"
T_THERAPY = 168.0                       # PET one week before the cycle (h)
PET_MBQ, PET_NMOL = 150.0, 3.0          # ~2 MBq/kg x 75 kg (EANM/SNMMI); 3 nmol (Begum 2019)
LU_MBQ, LU_NMOL = 7400.0, 57.09         # one Pluvicto cycle (regimen.TYPICAL_NMOL_PER_GBQ)
PET_TIMES = (1.0,)                      # h after the PET injection
REGIONS = ("Kidney", "SG", "Tumor1", "Tumor2", "TumorRest", "Liver")
PROTOCOLS = {"a": ("PET alone", ()), "b": ("PET + SPECT 24 h", (24.0,)),
             "c": ("PET + SPECT 4 h and 24 h", (4.0, 24.0)),
             # not in the table: a late scan, to show what determines kidney washout
             "d": ("PET + SPECT 24 h and 96 h", (24.0, 96.0))}
GROUPS = {"kidney": ("Kidney",), "salivary glands": ("SG",),
          "lesions": ("Tumor1", "Tumor2", "TumorRest")}
DAYS = 60.0
REGIMEN = Regimen((Administration(0.0, PET, PET_MBQ, PET_NMOL),
                   Administration(T_THERAPY, LU, LU_MBQ, LU_NMOL)))
THERAPY = Regimen((Administration(0.0, LU, LU_MBQ, LU_NMOL),))


def virtual_patients(n: int, seed: int):
    """(prior, true log-parameters (n, k)) drawn from the population prior."""
    spec = model_spec(MODEL, VARIANT)
    prior = default_prior(MODEL, spec)
    return spec, prior, prior.sample_log(n, seed)


def _params(model, prior, thetas):
    base = model.params_from({})
    idx = [model.parameter_names.index(nm) for nm in prior.names]
    P = np.tile(base, (len(thetas), 1))
    P[:, idx] = np.exp(thetas)
    return P


def true_activities(spec, prior, thetas, rp, mbq, nmol, times):
    """(n, n_regions_measured, n_times) MBq after one administration at t = 0."""
    reg = Regimen((Administration(0.0, rp, mbq, nmol),))
    model = prepare(spec, reg, np.asarray(times), days=max(times) / 24.0 + 1.0)[0]
    out = simulate_batch(model, reg, _params(model, prior, thetas), np.asarray(times),
                         days=max(times) / 24.0 + 1.0)
    if not np.all(out["ok"]):
        raise RuntimeError(f"{int((~out['ok']).sum())} virtual patients failed to solve")
    ri = [model.regions.index(r) for r in REGIONS]
    return np.asarray(out["activity_mbq"])[:, 0, ri, :]


def true_tia(spec, prior, thetas):
    model = prepare(spec, THERAPY, None, DAYS)[0]
    out = simulate_batch(model, THERAPY, _params(model, prior, thetas), days=DAYS)
    ri = [model.regions.index(r) for r in REGIONS]
    return np.asarray(out["tia_mbq_h"])[:, 0, ri]


def noisy(true, modality, rng):
    """true[patient, region, time] plus the noise of the region's class (organ or lesion)."""
    z = rng.standard_normal(true.shape)
    sigma = np.stack([noise_model(modality, r).sigma(true[:, j, :])
                      for j, r in enumerate(REGIONS)], axis=1)
    return np.clip(true + sigma * z, 0.0, None)


def observations(pet, spect, spect_times, i):
    """Observations of patient i: PET (all regions, PET_TIMES) + SPECT at spect_times."""
    rows = []
    for k, t in enumerate(PET_TIMES):
        rows += [(r, t, pet[i, j, k], "PET", PET) for j, r in enumerate(REGIONS)]
    for t in spect_times:
        k = list(SPECT_ALL + SPECT_LATE).index(t)
        rows += [(r, T_THERAPY + t, spect[i, j, k], "SPECT", LU) for j, r in enumerate(REGIONS)]
    c = list(zip(*rows))
    act = np.array(c[2], float)
    sig = noise_sigma(c[3], c[0], act)  # at the observed value
    return Observations(np.array(c[0], object), np.array(c[1], float), act, sig,
                        np.array(c[3], object), np.array(c[4], object), source="virtual")


SPECT_ALL = (4.0, 24.0)
SPECT_LATE = (96.0,)    # protocol d only (drawn from its own random stream)


def run_protocol(key, pet, spect, tia_true, n_samples, progress, patients=None,
                 checkpoint=None):
    from tqdm import tqdm

    from twin.build import simulate_twin

    label, times = PROTOCOLS[key]
    rows, fails, times_fit, evals = [], 0, [], []
    n = len(tia_true)
    for i in tqdm(range(*(patients or (0, n))), desc=f"({key}) {label}", disable=not progress, file=sys.stdout):
        obs = observations(pet, spect, times, i)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                post = fit(obs, REGIMEN, MODEL, variant=VARIANT, noise="model", n_starts=1)
            except FitError:
                try:
                    post = fit(obs, REGIMEN, MODEL, variant=VARIANT, noise="model",
                               n_starts=4, seed=i)
                except FitError:
                    fails += 1
                    continue
        times_fit.append(time.perf_counter() - t0)
        evals.append(post.diagnostics["evaluations"])
        pred = simulate_twin(post, THERAPY, days=DAYS, n_samples=n_samples, seed=i)
        for j, r in enumerate(REGIONS):
            k = pred.regions.index(r)
            rows.append({"protocol": key, "patient": i, "region": r,
                         "tia_true": tia_true[i, j], "tia_map": pred.tia_mbq_h[k],
                         "tia_median": pred.tia_median[k],
                         "tia_low": pred.tia_low[k], "tia_high": pred.tia_high[k]})
        if checkpoint is not None and len(times_fit) % 5 == 0:
            checkpoint(pd.DataFrame(rows), {"protocol": key, "failures": fails,
                                            "fit_s": times_fit})
    df = pd.DataFrame(rows)
    # point estimate: the posterior median of the TIA (smallest expected absolute error);
    # the TIA at the MAP parameters is kept for comparison
    df["rel_error"] = df["tia_median"] / df["tia_true"] - 1.0
    df["rel_error_map"] = df["tia_map"] / df["tia_true"] - 1.0
    df["covered"] = (df["tia_low"] <= df["tia_true"]) & (df["tia_true"] <= df["tia_high"])
    return df, {"protocol": key, "label": label, "failures": fails,
                "fit_s_median": float(np.median(times_fit)) if times_fit else np.nan,
                "evaluations_median": float(np.median(evals)) if evals else np.nan,
                "n_fitted": len(times_fit)}


def summarise(df, meta):
    out = []
    for m in meta:
        d = df[df["protocol"] == m["protocol"]]
        for g, regs in GROUPS.items():
            e = d[d["region"].isin(regs)]
            a = np.abs(e["rel_error"].to_numpy())
            out.append({"protocol": f"({m['protocol']}) {m['label']}", "region": g,
                        "n": len(e), "median_abs_error_pct": 100 * np.median(a),
                        "median_abs_error_map_pct":
                            100 * np.median(np.abs(e["rel_error_map"].to_numpy())),
                        "p90_abs_error_pct": 100 * np.quantile(a, 0.9),
                        "median_error_pct": 100 * np.median(e["rel_error"]),
                        "coverage_90_pct": 100 * e["covered"].mean(),
                        "fit_failures": m["failures"], "fit_s_median": m["fit_s_median"]})
    return pd.DataFrame(out)


def markdown(summary, n, n_samples, elapsed):
    lines = [f"Virtual cohort: {n} patients from the population prior (psma-pbrpk corrected), "
             f"noise of calibration.noise_model (organs and lesions), {n_samples} posterior draws per patient; "
             f"wall time {elapsed / 60:.1f} min (2 shared CPU cores, other jobs running).", "",
             "| protocol | region | median abs TIA error | 90th pct abs error | median signed error"
             " | 90% interval coverage | fit failures | median fit time | median abs error at MAP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['protocol']} | {r['region']} | {r['median_abs_error_pct']:.1f}% | "
                     f"{r['p90_abs_error_pct']:.1f}% | {r['median_error_pct']:+.1f}% | "
                     f"{r['coverage_90_pct']:.0f}% (n={r['n']}) | {r['fit_failures']} | "
                     f"{r['fit_s_median']:.1f} s | {r['median_abs_error_map_pct']:.1f}% |")
    lines += ["", "Goals (issue 4, protocol b): kidney median < 10%, lesions < 15%; coverage "
              "80-97%. Lesions pool Tumor1, Tumor2 and TumorRest (n = 3 x patients).",
              "Point estimate: posterior median of the TIA over the posterior draws (errors in "
              "the first three columns); the last column is the TIA at the MAP parameters. "
              "Fit: generalised least squares (noise-model sigma at the predicted activity)."]
    return "\n".join(lines) + "\n"


def plot(df, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GROUPS), figsize=(4 * len(GROUPS), 3.5), sharey=True)
    for ax, (g, regs) in zip(axes, GROUPS.items()):
        data = [100 * df[(df["protocol"] == k) & df["region"].isin(regs)]["rel_error"]
                for k in PROTOCOLS if k in set(df["protocol"])]
        ax.boxplot(data, whis=(5, 95), showfliers=True)
        ax.set_xticks(range(1, len(data) + 1), [k for k in PROTOCOLS if k in set(df["protocol"])])
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(g)
        ax.set_xlabel("protocol")
    axes[0].set_ylabel("TIA error (%)")
    fig.tight_layout()
    from twin.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def merge_runs(args):
    """Combine split runs (--patients) into one table, summary, markdown and plot."""
    from twin.atomic import write_csv_atomic, write_text_atomic

    frames, metas, partial = [], [], False
    for d in args.merge:
        if (d / "calibration_cohort_meta.csv").is_file():
            frames.append(pd.read_csv(d / "calibration_cohort_patients.csv"))
            metas.append(pd.read_csv(d / "calibration_cohort_meta.csv"))
            continue
        for f in sorted(d.glob("partial_*.csv")):  # a run stopped before its end
            part = pd.read_csv(f)
            part["rel_error"] = part["tia_median"] / part["tia_true"] - 1.0
            part["rel_error_map"] = part["tia_map"] / part["tia_true"] - 1.0
            part["covered"] = (part["tia_low"] <= part["tia_true"]) & \
                (part["tia_true"] <= part["tia_high"])
            frames.append(part.drop(columns=["fit_s"], errors="ignore"))
            n_fit = part["patient"].nunique()
            metas.append(pd.DataFrame([{"protocol": part["protocol"].iloc[0], "failures": 0,
                                        "fit_s_median": np.nan, "n_fitted": n_fit,
                                        "wall_s": np.nan}]))
            partial = True
    df = pd.concat(frames)
    df = df.sort_values(["protocol", "patient", "region"]).reset_index(drop=True)
    metas = pd.concat(metas)
    meta = []
    for key in [k for k in PROTOCOLS if k in set(df["protocol"])]:
        mk = metas[metas["protocol"] == key]
        w = mk["n_fitted"].to_numpy(float)
        meta.append({"protocol": key, "label": PROTOCOLS[key][0],
                     "failures": int(mk["failures"].sum()),
                     # median of the per-run medians weighted by patients (runs are similar)
                     "fit_s_median": float(np.nansum(mk["fit_s_median"] * w)
                                           / max(np.sum(w[np.isfinite(mk["fit_s_median"])]),
                                                 1e-12))})
    summary = summarise(df, meta)
    n = int(df.groupby("protocol")["patient"].nunique().max())
    wall = float(metas["wall_s"].max())
    write_csv_atomic(df, args.out / "calibration_cohort_patients.csv", index=False)
    write_csv_atomic(summary, args.out / "calibration_cohort.csv", index=False)
    counts = df.groupby("protocol")["patient"].nunique().to_dict()
    text = markdown(summary, n, args.samples, wall) + (
        f"\nPatients fitted per protocol: {counts}"
        + (" (some runs stopped before their end: the rows they had written so far)"
           if partial else "") + "\n") + (
        f"\nRun split over {len(args.merge)} processes in parallel (--patients, merged with "
        f"--merge); wall time is that of the longest; fit time is the patient-weighted mean of "
        f"the runs' medians.\n")
    write_text_atomic(args.out / "calibration_cohort.md", text)
    plot(df, args.out / "calibration_cohort.png")
    print(text)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="virtual patients")
    ap.add_argument("--samples", type=int, default=100, help="posterior draws per patient")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--protocols", default="abc",
                    help="subset of a, b, c (the issue's table) and d (PET + SPECT 24 h and 96 h)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                    help="output folder")
    ap.add_argument("--patients", default=None,
                    help="I:J: fit only patients I..J-1 of the cohort (to split a long run over "
                         "processes; merge with --merge)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="merge the calibration_cohort_patients.csv of split runs into --out "
                         "(no fitting)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--spect-organ-noise", type=float, default=None,
                    help="experiment: proportional SPECT noise of organ VOIs, in the simulated "
                         "data and in the fit's noise model alike (default: "
                         "calibration.NOISE['SPECT'], 0.15); shows how the kidney error depends "
                         "on SPECT quantification")
    args = ap.parse_args(argv)
    from twin.atomic import write_csv_atomic, write_text_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    if args.spect_organ_noise is not None:
        import dataclasses

        from calibration import NOISE

        if not 0 < args.spect_organ_noise < 1:
            ap.error("--spect-organ-noise must be in (0, 1)")
        # one table is read by the simulation (noise_model) and the fit (noise='model')
        NOISE["SPECT"] = dataclasses.replace(
            NOISE["SPECT"], proportional=args.spect_organ_noise,
            basis=f"experiment: {args.spect_organ_noise:.0%} (--spect-organ-noise)")
    if args.merge:
        return merge_runs(args)
    patients = tuple(int(x) for x in args.patients.split(":")) if args.patients else None
    t_start = time.perf_counter()
    spec, prior, thetas = virtual_patients(args.n, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    pet = noisy(true_activities(spec, prior, thetas, PET, PET_MBQ, PET_NMOL, PET_TIMES),
                "PET", rng)
    spect = noisy(true_activities(spec, prior, thetas, LU, LU_MBQ, LU_NMOL, SPECT_ALL),
                  "SPECT", rng)
    if "d" in args.protocols:
        late = noisy(true_activities(spec, prior, thetas, LU, LU_MBQ, LU_NMOL, SPECT_LATE),
                     "SPECT", np.random.default_rng(args.seed + 2))
        spect = np.concatenate([spect, late], axis=2)
    tia = true_tia(spec, prior, thetas)
    frames, meta = [], []
    for key in args.protocols:
        def checkpoint(rows, info, key=key):
            # a long run leaves its per-patient rows so far (inspect or merge if it is stopped)
            write_csv_atomic(rows.assign(fit_s=np.nan), args.out / f"partial_{key}.csv",
                             index=False)

        df, m = run_protocol(key, pet, spect, tia, args.samples, not args.no_progress,
                             patients, checkpoint)
        frames.append(df)
        meta.append(m)
        # partial results after each protocol (a long run can be inspected while it goes on)
        summary = summarise(pd.concat(frames), meta)
        elapsed = time.perf_counter() - t_start
        write_csv_atomic(pd.concat(frames), args.out / "calibration_cohort_patients.csv",
                         index=False)
        write_csv_atomic(summary, args.out / "calibration_cohort.csv", index=False)
        write_csv_atomic(pd.DataFrame(meta).assign(wall_s=elapsed),
                         args.out / "calibration_cohort_meta.csv", index=False)
        write_text_atomic(args.out / "calibration_cohort.md",
                          markdown(summary, args.n, args.samples, elapsed))
    df = pd.concat(frames)
    plot(df, args.out / "calibration_cohort.png")
    print(markdown(summary, args.n, args.samples, time.perf_counter() - t_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
