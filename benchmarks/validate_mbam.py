"""Validation of the MBAM reduction of psma-pbrpk for the protocol PET 1 h + SPECT 24 h.

For a virtual cohort (personal parameters drawn from the population prior,
calibration.default_prior), each patient's PET/SPECT observations are simulated with the full
model (calibration.synthetic_observations: noise of calibration.fit.NOISE), then fitted with the
full model (psma-pbrpk) and with the reduced one (REDUCED.json through the same calibration.fit);
reported: parameters before/after, the meaning of each limit, the kidney / salivary-gland /
lesion TIA error of the reduced fit against the full model's true TIA, and fit time and failure
rate, full vs reduced.

    python benchmarks/validate_mbam.py --reduced REDUCED.json [--n 10]   # --n 100: the issue's

Timings on a shared 2-core CPU; compare the ratio.
"""

import argparse
import os
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


def main():
    from calibration import default_prior, fit, model_spec, synthetic_observations
    from calibration.mbam.io import read_reduced
    from calibration.priors import PERSONAL
    from pbpk_models.errors import FitError
    from pbpk_models.regimen import Administration, Regimen
    from pbpk_models.simulate import simulate

    ap = argparse.ArgumentParser()
    ap.add_argument("--reduced", type=Path, required=True, help="REDUCED.json (twin reduce)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    doc = read_reduced(a.reduced)
    print(f"parameters: {doc['n_parameters_full']} -> {doc['n_parameters']} "
          f"({', '.join(doc['personal'])}); status: {doc['status']}")
    for i, s in enumerate(doc["limits"], 1):
        print(f"  limit {i}: {s['limit']} [{s['method']}]: {s['meaning']}")
    full = model_spec("psma-pbrpk")
    names = PERSONAL["psma-pbrpk"]
    prior = default_prior("psma-pbrpk", full, names)
    draws = np.exp(prior.sample_log(a.n, a.seed))
    reg = Regimen((Administration(0.0, "ga68-psma-11", 150.0, 3.0),
                   Administration(168.0, "lu177-psma-617", 7400.0, 57.09)))
    design = [(r, 1.0, "ga68-psma-11", "PET") for r in REGIONS] + \
             [(r, 192.0, "lu177-psma-617", "SPECT") for r in REGIONS]
    ther = Regimen((Administration(0.0, "lu177-psma-617", 7400.0, 57.09),))
    errs, times, fails = [], {"full": [], "reduced": []}, {"full": 0, "reduced": 0}
    red_path = str(a.reduced)
    red_spec = model_spec(red_path)
    for k in range(a.n):
        truth = dict(zip(names, map(float, draws[k])))
        obs = synthetic_observations(reg, design, truth, "psma-pbrpk", seed=a.seed + k)
        tia_true = simulate(full, ther, truth).tia()
        row = {}
        for label, model in (("full", "psma-pbrpk"), ("reduced", red_path)):
            t = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    post = fit(obs, reg, model, n_starts=2)
            except FitError:
                fails[label] += 1
                continue
            finally:
                times[label].append(time.perf_counter() - t)
            p = dict(zip(post.names, map(float, np.exp(post.theta_map))))
            spec = full if label == "full" else red_spec
            row[label] = simulate(spec, ther, p).tia()
        if "reduced" in row:
            errs.append([row["reduced"][r] / tia_true[r] - 1 for r in REGIONS])
            # reduced vs full fitted model (the reduction's own error, not the data's)
            if "full" in row:
                errs[-1] += [row["reduced"][r] / row["full"][r] - 1 for r in REGIONS]
        print(f"patient {k + 1}/{a.n} done", flush=True)
    E = np.array([e for e in errs if len(e) == 2 * len(REGIONS)])
    print("\nTIA error of the reduced model's fit (median |error|, 95th percentile):")
    for j, r in enumerate(REGIONS):
        if len(E):
            print(f"  {r:10s} vs truth {np.median(np.abs(E[:, j])):.3%} "
                  f"(p95 {np.percentile(np.abs(E[:, j]), 95):.3%}); vs the full model's fit "
                  f"{np.median(np.abs(E[:, 5 + j])):.3%} "
                  f"(p95 {np.percentile(np.abs(E[:, 5 + j]), 95):.3%})")
    for label in ("full", "reduced"):
        t = np.array(times[label])
        print(f"fit {label:8s}: median {np.median(t):.2f} s, failures {fails[label]}/{a.n}")
    print(f"fit time ratio full/reduced: "
          f"{np.median(times['full']) / np.median(times['reduced']):.2f}x")


if __name__ == "__main__":
    main()
