"""Validation of an MBAM reduction of psma-pbrpk for the protocol PET 1 h + SPECT 24 h.

Virtual cohort: the 7 personal parameters drawn from the population prior
(calibration.default_prior, seeded), every other parameter at its library value. For each patient
the full model (psma-pbrpk) gives the true therapy TIA (Lu-177-PSMA-617, 60 d) and the protocol's
PET/SPECT observations (calibration.synthetic_observations, noise of calibration.fit.NOISE).

0. ``--direct N``: the reduction error alone, fit-free: both models at each patient's true
   personal parameters (the reduced model keeps them), vmapped (goal < 2 %).
1. The reduced model (REDUCED.json) fitted to the NOISE-FREE observations; its Kidney / SG /
   lesion TIA against the full model's true TIA (identifiability of the protocol + reduction).
2. Calibration: the full and the reduced model fitted (calibration.fit, the same data, priors and
   settings) to the NOISY observations: fit time, failure rate (FitError or non-finite TIA), and
   the TIA error of each fit against the truth.

    python benchmarks/validate_mbam.py --reduced pbpk_models/library/reduced/X.json --n 100 \\
        [--max-time 1800] [--out benchmarks/results/mbam]

Writes validate_<stem>.csv (one row per patient) and validate_<stem>.md (summary, command, n,
seed, date). ``--max-time`` stops after the patient in progress (n done is reported). Timings
on a shared 2-core CPU; compare the ratio.
"""

import argparse
import datetime
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

HERE = Path(__file__).parent
REGIONS = ("Kidney", "SG", "Tumor1", "Tumor2", "TumorRest")


def direct_cohort(red_path, n, seed, out_dir):
    """Reduction error over the cohort without any fit: the reduced model keeps the 7 personal
    parameters, so each patient's true values go into both models (every other parameter at the
    model's own value: the library's for the full model, the re-fitted ones for the reduced);
    vmapped Rosenbrock (rtol 1e-8) for both. Returns the summary lines."""
    import pandas as pd

    from calibration import default_prior, model_spec
    from calibration.priors import PERSONAL
    from pbpk_models.model import compile_model
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import SolverSettings, simulate_batch
    from pbpk_models.atomic import write_csv_atomic

    full = model_spec("psma-pbrpk")
    red = model_spec(str(red_path))
    names = PERSONAL["psma-pbrpk"]
    draws = np.exp(default_prior("psma-pbrpk", full, names).sample_log(n, seed))
    reg = Regimen.single("lu177-psma-617", 7400.0, 57.09)
    st = SolverSettings(rtol=1e-8, atol=1e-10, method="rosenbrock", adjoint="forward")
    tia = {}
    for label, spec in (("full", full), ("reduced", red)):
        m = compile_model(spec, reg.radiopharmaceuticals)
        P = np.repeat(m.params_from({})[None], n, axis=0)
        for j, k in enumerate(names):
            P[:, m.parameter_names.index(k)] = draws[:, j]
        out = simulate_batch(spec, reg, P, np.array([1.0, 24.0]), settings=st)
        idx = [m.regions.index(r) for r in REGIONS]
        tia[label] = np.asarray(out["tia_mbq_h"])[:, 0, idx]
    err = tia["reduced"] / tia["full"] - 1
    df = pd.DataFrame({**{f"true_{k}": draws[:, j] for j, k in enumerate(names)},
                       **{f"err_{r}": err[:, i] for i, r in enumerate(REGIONS)}})
    write_csv_atomic(df, out_dir / f"direct_{Path(red_path).stem}.csv")
    lines = ["| region | median abs | p95 abs | max abs | patients within 2 % |",
             "|---|---|---|---|---|"]
    for i, r in enumerate(REGIONS):
        e = np.abs(err[:, i])
        lines.append(f"| {r} | {np.median(e):.3%} | {np.percentile(e, 95):.3%} | "
                     f"{e.max():.3%} | {np.mean(e < 0.02):.0%} |")
    return lines


def main():
    import pandas as pd

    from calibration import default_prior, fit, model_spec, synthetic_observations
    from calibration.mbam.io import read_reduced
    from calibration.priors import PERSONAL
    from pbpk_models.errors import FitError, ModelError
    from pbpk_models.regimen import Administration, Regimen
    from pbpk_models.simulate import simulate
    from twin.atomic import write_csv_atomic, write_text_atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", type=Path, required=True, help="REDUCED.json (twin reduce)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-time", type=float, default=1800.0)
    ap.add_argument("--n-starts", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "mbam")
    ap.add_argument("--direct", type=int, default=0,
                    help="only the fit-free reduction error over this many patients (vmapped)")
    a = ap.parse_args()
    if a.direct:
        a.out.mkdir(parents=True, exist_ok=True)
        lines = direct_cohort(a.reduced, a.direct, a.seed, a.out)
        text = "\n".join([f"# MBAM reduction error, fit-free: {Path(a.reduced).stem}", "",
                          f"command: `python {' '.join(sys.argv)}`  ",
                          f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat()}  ",
                          f"n = {a.direct} (seed {a.seed}); therapy TIA (Lu-177-PSMA-617, "
                          f"7.4 GBq, 60 d) of the reduced vs the full model at each patient's "
                          f"true personal parameters", "", *lines, ""])
        write_text_atomic(a.out / f"direct_{Path(a.reduced).stem}.md", text)
        print(text)
        return
    doc = read_reduced(a.reduced)
    lines = [f"parameters: {doc['n_parameters_full']} -> {doc['n_parameters']} "
             f"(personal of the reduced model: {', '.join(doc['personal'])}); status: "
             f"{doc['status']}"]
    for i, s in enumerate(doc["limits"], 1):
        lines.append(f"  limit {i}: {s['meaning']} [{s['method']}]")
    print("\n".join(lines), flush=True)
    full = model_spec("psma-pbrpk")
    names = PERSONAL["psma-pbrpk"]
    prior = default_prior("psma-pbrpk", full, names)
    draws = np.exp(prior.sample_log(a.n, a.seed))
    reg = Regimen((Administration(0.0, "ga68-psma-11", 150.0, 3.0),
                   Administration(168.0, "lu177-psma-617", 7400.0, 57.09)))
    design = [(r, 1.0, "ga68-psma-11", "PET") for r in REGIONS] + \
             [(r, 192.0, "lu177-psma-617", "SPECT") for r in REGIONS]
    ther = Regimen((Administration(0.0, "lu177-psma-617", 7400.0, 57.09),))
    red_path = str(a.reduced)
    red_spec = model_spec(red_path)
    rows = []
    t_start = time.perf_counter()
    for k in range(a.n):
        if time.perf_counter() - t_start > a.max_time:
            print(f"time cap reached after {k} patients", flush=True)
            break
        truth = dict(zip(names, map(float, draws[k])))
        tia_true = simulate(full, ther, truth).tia()
        row = {"patient": k + 1, **{f"true_{n}": v for n, v in truth.items()},
               **{f"tia_true_{r}": tia_true[r] for r in REGIONS}}
        obs_clean = synthetic_observations(reg, design, truth, "psma-pbrpk", seed=None)
        obs = synthetic_observations(reg, design, truth, "psma-pbrpk", seed=a.seed + k)
        for label, model, data in (("reduced_clean", red_path, obs_clean),
                                   ("full", "psma-pbrpk", obs), ("reduced", red_path, obs)):
            spec = full if model == "psma-pbrpk" else red_spec
            t = time.perf_counter()
            ok = True
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    post = fit(data, reg, model, n_starts=a.n_starts)
                p = dict(zip(post.names, map(float, np.exp(post.theta_map))))
                tia = simulate(spec, ther, p).tia()
                ok = all(np.isfinite(tia[r]) for r in REGIONS)
            except (FitError, ModelError):
                ok = False
            row[f"{label}_time_s"] = time.perf_counter() - t
            row[f"{label}_ok"] = ok
            for r in REGIONS:
                row[f"{label}_err_{r}"] = (tia[r] / tia_true[r] - 1) if ok else np.nan
        rows.append(row)
        print(f"patient {k + 1}/{a.n}: reduced fit to noise-free data vs truth "
              + ", ".join(f"{r} {100 * row[f'reduced_clean_err_{r}']:+.2f}%" for r in REGIONS)
              + f"; fit full {row['full_time_s']:.1f} s, reduced {row['reduced_time_s']:.1f} s",
              flush=True)
    df = pd.DataFrame(rows)
    stem = Path(red_path).stem
    a.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(df, a.out / f"validate_{stem}.csv")
    n = len(df)
    out = ["# MBAM validation: " + stem, "",
           f"command: `python {' '.join(sys.argv)}`  ", f"date: "
           f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}  ",
           f"n = {n} of {a.n} requested (seed {a.seed}); shared, loaded 2-core CPU", "",
           *[f"    {x}" for x in lines], "",
           "## Reduced model fitted (MAP, population prior) to NOISE-FREE data: TIA vs truth",
           "(identifiability of the protocol plus the reduction; the reduction alone: "
           "direct_<stem>.md)",
           "", "| region | median abs | p95 abs | max abs | patients within 2 % |",
           "|---|---|---|---|---|"]
    for r in REGIONS:
        e = np.abs(df[f"reduced_clean_err_{r}"].to_numpy(float))
        e = e[np.isfinite(e)]
        if len(e):
            out.append(f"| {r} | {np.median(e):.2%} | {np.percentile(e, 95):.2%} | "
                       f"{e.max():.2%} | {np.mean(e < 0.02):.0%} |")
    out += ["", "## Calibration on noisy data: full vs reduced", "",
            "| model | median fit time (s) | failures | median abs TIA error vs truth "
            "(Kidney / SG / Tumor1 / Tumor2 / TumorRest) |", "|---|---|---|---|"]
    for label in ("full", "reduced"):
        t = df[f"{label}_time_s"].to_numpy(float)
        fails = int((~df[f"{label}_ok"].astype(bool)).sum())
        errs = " / ".join(f"{np.nanmedian(np.abs(df[f'{label}_err_{r}'])):.1%}"
                          for r in REGIONS)
        out.append(f"| {label} | {np.median(t):.2f} | {fails}/{n} | {errs} |")
    ratio = np.median(df["full_time_s"]) / np.median(df["reduced_time_s"])
    out += ["", f"fit time ratio full/reduced (median): {ratio:.2f}x", ""]
    text = "\n".join(out)
    write_text_atomic(a.out / f"validate_{stem}.md", text)
    print(text)


if __name__ == "__main__":
    main()
