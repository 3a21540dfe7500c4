"""Validation of dosimetry-guided planning on a virtual cohort (issue 7, "Must show").

Virtual patients: true personal parameters drawn from the population prior of psma-pbrpk
(calibration.default_prior; sources there). For each patient:

* fixed regimen: 7.4 GBq x 6 every 6 weeks (VISION), evaluated on the truth;
* dosimetry-guided: cycle 1 at 7.4 GBq; cycle-1 SPECT (synthetic, SPECT noise model of
  calibration.NOISE) at 4, 24, 48 and 168 h of Kidney, SG and the three lesions updates the twin
  (population prior -> posterior, calibration.fit); cycles 2..6 are re-optimised under the same
  limits (kidney BED 40 Gy, red marrow 2 Gy, at the 95th posterior percentile), evaluated on
  the truth;
* prediction of the cumulative kidney BED of the fixed regimen: before therapy (population
  twin, MAP) and after cycle-1 SPECT (updated twin, MAP), against the truth.

Prints a table (and writes CSV + PNG to --out): lesion dose gained, patients over a limit with
each strategy, and the kidney-BED prediction error before/after re-planning.
Run: python benchmarks/validate_planning.py [--n 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="virtual patients")
    ap.add_argument("--samples", type=int, default=32, help="posterior samples per twin")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kidney-bed", type=float, default=40.0,
                    help="kidney BED limit (Gy): 40 without, 28 with risk factors (Bodei 2008)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/planning"))
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    import pandas as pd
    from tqdm import tqdm

    from calibration import synthetic_observations
    from pbpk_models.regimen import Regimen
    from twin.atomic import write_csv_atomic
    from twin.dosimetry.organ import organ_doses
    from twin.errors import PlanInfeasible, TwinError
    from twin.planning import Planner, PlanSettings, default_limits, posterior_from_prior

    rp = "lu177-psma-617"
    limits = default_limits()
    if args.kidney_bed != 40.0:
        from twin.planning import parse_limit

        limits[0] = parse_limit(f"Kidney:bed_gy<={args.kidney_bed:g}")
    prior_post = posterior_from_prior("psma-pbrpk")
    settings = PlanSettings(max_cycles=6, n_samples=args.samples, interval_weeks=6.0)
    base = Planner(prior_post, settings)
    model = base.model
    names = prior_post.names
    idx = [model.parameter_names.index(n) for n in names]
    truths = prior_post.prior.sample_log(args.n, args.seed)
    fixed = Regimen.cycles(rp, [7400.0] * 6, 6 * 168.0)
    design = [(r, t, rp, "SPECT") for r in ("Kidney", "SG", "Tumor1", "Tumor2", "TumorRest")
              for t in (4.0, 24.0, 48.0, 168.0)]
    ri = {r: j for j, r in enumerate(model.regions)}
    les = [ri[r] for r in base.lesions]

    def truth_eval(theta, regimen):
        p = model.default_params()
        p[idx] = np.exp(theta)
        d = organ_doses(model, regimen, p[None], points_per_cycle=settings.points_per_cycle)
        return (d.total("bed_gy")[0, ri["Kidney"]], d.total("dose_gy")[0, ri["RedMarrow"]],
                d.total("dose_gy")[0, les].mean())

    rows = []
    t0 = time.perf_counter()
    # pre-therapy twin's prediction of the fixed regimen (same for all: the population MAP)
    pre = base.padded_what_if(np.full(6, 7400.0), fixed.times_h, 6, [])
    pre_kid = pre.total("bed_gy")[0, ri["Kidney"]]
    for i in tqdm(range(args.n), desc="virtual patients"):
        th = truths[i]
        truth = dict(zip(names, np.exp(th)))
        k_fix, m_fix, l_fix = truth_eval(th, fixed)
        one = Regimen.cycles(rp, [7400.0], 6 * 168.0)
        obs = synthetic_observations(one, design, truth, "psma-pbrpk", seed=1000 + i)
        row = {"patient": i, "fixed_kidney_bed": k_fix, "fixed_marrow_dose": m_fix,
               "fixed_lesion_dose": l_fix, "pre_pred_kidney_bed": pre_kid}
        try:
            from twin.planning import replan

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan, post = replan(prior_post, obs, fixed, limits, settings,
                                    n_delivered=1, max_cycles=6)
            k_g, m_g, l_g = truth_eval(th, plan.regimen)
            post_planner = Planner(post, settings)
            post_pred = post_planner.padded_what_if(np.full(6, 7400.0), fixed.times_h, 6, [])
            row.update({"guided_kidney_bed": k_g, "guided_marrow_dose": m_g,
                        "guided_lesion_dose": l_g, "guided_cycles": len(plan.activities_mbq),
                        "guided_total_gbq": plan.activities_mbq.sum() / 1000,
                        "post_pred_kidney_bed": post_pred.total("bed_gy")[0, ri["Kidney"]],
                        "status": "ok"})
        except PlanInfeasible as exc:
            row.update({"status": f"infeasible: {exc.binding_limit}"})
        except TwinError as exc:
            row.update({"status": f"error: {exc}"})
        rows.append(row)
    elapsed = time.perf_counter() - t0
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(df, args.out / "validate_planning.csv")
    ok = df[df.status == "ok"]
    lim_k, lim_m = args.kidney_bed, 2.0
    over_fixed = int(((df.fixed_kidney_bed > lim_k) | (df.fixed_marrow_dose > lim_m)).sum())
    over_guided = int(((ok.guided_kidney_bed > lim_k) | (ok.guided_marrow_dose > lim_m)).sum())
    err_pre = np.abs(ok.pre_pred_kidney_bed / ok.fixed_kidney_bed - 1)
    err_post = np.abs(ok.post_pred_kidney_bed / ok.fixed_kidney_bed - 1)
    gain = ok.guided_lesion_dose / ok.fixed_lesion_dose - 1
    print(f"\n{len(df)} virtual patients, {len(ok)} planned ({elapsed:.0f} s)")
    print("| quantity | fixed 7.4 GBq x 6 | dosimetry-guided |")
    print("| --- | --- | --- |")
    print(f"| patients over a limit (true kidney BED > {lim_k:g} Gy or marrow > 2 Gy) | "
          f"{over_fixed} | {over_guided} (of {len(ok)}) |")
    print(f"| median true kidney BED (Gy) | {df.fixed_kidney_bed.median():.1f} | "
          f"{ok.guided_kidney_bed.median():.1f} |")
    print(f"| max true kidney BED (Gy) | {df.fixed_kidney_bed.max():.1f} | "
          f"{ok.guided_kidney_bed.max():.1f} |")
    print(f"| median true lesion dose, mean of 3 lesions (Gy) | {df.fixed_lesion_dose.median():.1f}"
          f" | {ok.guided_lesion_dose.median():.1f} |")
    print(f"| median lesion dose gain (guided / fixed - 1) | | {100 * gain.median():+.0f}% |")
    print(f"| median total activity (GBq) | 44.4 | {ok.guided_total_gbq.median():.1f} |")
    print(f"kidney BED prediction of the fixed regimen, median |relative error|: pre-therapy "
          f"{100 * err_pre.median():.0f}%, after cycle-1 SPECT {100 * err_post.median():.0f}% "
          f"(closer in {int((err_post < err_pre).sum())} of {len(ok)})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twin.atomic import atomic_path

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].scatter(df.fixed_kidney_bed, df.fixed_lesion_dose, label="7.4 GBq x 6")
    ax[0].scatter(ok.guided_kidney_bed, ok.guided_lesion_dose, marker="^", label="guided")
    ax[0].axvline(lim_k, color="r", lw=1)
    ax[0].set_xlabel("true cumulative kidney BED (Gy)")
    ax[0].set_ylabel("true mean lesion dose (Gy)")
    ax[0].legend(fontsize=8)
    ax[1].scatter(ok.fixed_kidney_bed, ok.pre_pred_kidney_bed, label="pre-therapy twin")
    ax[1].scatter(ok.fixed_kidney_bed, ok.post_pred_kidney_bed, marker="^",
                  label="after cycle-1 SPECT")
    m = float(np.nanmax([ok.fixed_kidney_bed.max(), ok.post_pred_kidney_bed.max(), pre_kid]))
    ax[1].plot([0, m], [0, m], "k:", lw=1)
    ax[1].set_xlabel("true kidney BED, 7.4 GBq x 6 (Gy)")
    ax[1].set_ylabel("predicted (Gy)")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(args.out / "validate_planning.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(f"wrote {args.out / 'validate_planning.csv'} and validate_planning.png")


if __name__ == "__main__":
    main()
