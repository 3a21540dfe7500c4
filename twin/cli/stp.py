"""``twin stp``: time-integrated activity from one (or a few) SPECT scans.

Fixed interface (shared/CLI.md):
  twin stp --observations OBS.csv --method hanscheid|madsen|twin|multi [--twin TWIN.json]
           --out TIA.csv
Output: ``region, tia_mbq_h`` and, where the method has one, the interval ``tia_low, tia_high``
(twin: posterior median and credible interval of the updated twin; multi: lognormal interval from the fit
covariance). Added options: --regimen, --radiopharmaceutical, --half-life-h REGION=H, --model,
--level, --samples, --stage2-samples, --seed, --update, --no-pet.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from twin.errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "stp", help="TIA from a single SPECT (Hanscheid, Madsen, twin prior) or several (multi)",
        description="Region time-integrated activity (MBq h) from SPECT region activities. "
                    "hanscheid: A(t) 2t/ln2 (J Nucl Med 2018;59:75). madsen: A(t) exp(lt)/l with a "
                    "population effective half-life (Med Phys 2018;45:2318; table in twin.stp, "
                    "or --half-life-h). twin: the PET-calibrated twin (--twin TWIN.json) updated "
                    "with the scan(s), 90% credible interval. multi: sums of exponentials fitted "
                    "to several scans, chosen by AICc, analytic tail. OBS.csv columns: region, "
                    "time_h, activity_mbq, sigma_mbq, modality, radiopharmaceutical; time_h in "
                    "hours after the administration (after the regimen's first administration "
                    "when --regimen is given).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--observations", type=Path, required=True, help="OBS.csv")
    p.add_argument("--method", required=True, choices=("hanscheid", "madsen", "twin", "multi"),
                   help="STP method, or multi for the multi-time-point fit")
    p.add_argument("--twin", type=Path, default=None,
                   help="TWIN.json (PET-calibrated twin; required for --method twin)")
    p.add_argument("--out", type=Path, required=True, help="TIA.csv to write")
    p.add_argument("--regimen", type=Path, default=None,
                   help="REGIMEN.csv of the therapy (twin: default the twin's own regimen; "
                        "other methods: shifts times to hours after the administration)")
    p.add_argument("--radiopharmaceutical", default=None,
                   help="which radiopharmaceutical's rows to use when OBS.csv holds several")
    p.add_argument("--half-life-h", action="append", default=[], metavar="REGION=H",
                   help="population effective half-life of a region in hours (madsen), "
                        "overriding the built-in table")
    p.add_argument("--model", default="auto",
                   choices=("auto", "mono", "bi_uptake", "bi", "tri"),
                   help="multi: the sum of exponentials (auto: by AICc)")
    p.add_argument("--level", type=float, default=0.90, help="interval level")
    p.add_argument("--samples", type=int, default=1000,
                   help="twin: draws from the twin (adaptive: stage 1; adaptive and importance: "
                        "at least 100)")
    p.add_argument("--stage2-samples", type=int, default=None,
                   help="twin, adaptive: stage-2 draws (default half of --samples; 0: one stage)")
    p.add_argument("--update", default="importance",
                   choices=("importance", "adaptive", "laplace"),
                   help="twin: how the SPECT updates the twin (default importance): adaptive "
                        "(the exact posterior "
                        "population prior x PET x SPECT, using the PET rows stored in TWIN.json, "
                        "by two-stage importance sampling with the twin as a defensive-mixture "
                        "proposal; twin x SPECT if the twin has no PET rows), importance (draws "
                        "from the twin's Laplace posterior weighted by the SPECT likelihood) or "
                        "laplace (MAP fit with the twin as prior, draws from its Laplace "
                        "posterior); all report the posterior median TIA. adaptive corrects a "
                        "too narrow PET twin (DOTATATE lesions) but was worse for PSMA kidneys "
                        "at 96 h in validation (docs/stp.md)")
    p.add_argument("--no-pet", action="store_true",
                   help="twin, adaptive: use the twin's Laplace posterior as the prior instead "
                        "of the population prior x its PET rows")
    p.add_argument("--seed", type=int, default=0, help="twin: seed of the draws")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from calibration import Observations
    from pbpk_models.radionuclides import parse_radiopharmaceutical
    from pbpk_models.regimen import Regimen
    from twin import stp
    from twin.atomic import write_csv_atomic

    if not 0 < args.level < 1:
        raise InputError(f"--level must be between 0 and 1, got {args.level}")
    obs = Observations.from_csv(args.observations)
    regimen = Regimen.from_csv(args.regimen) if args.regimen is not None else None
    from twin.cli.options import region_hours

    half_lives = region_hours(args.half_life_h, "--half-life-h")
    inputs = [args.observations, args.regimen, args.twin]
    caught = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.method == "twin":
            if args.twin is None:
                raise InputError("--method twin needs the PET-calibrated twin: --twin TWIN.json "
                                 "(made by twin fit)")
            if args.samples < 2:
                raise InputError("--samples must be at least 2")
            if args.stage2_samples is not None and args.stage2_samples < 0:
                raise InputError(f"--stage2-samples must be >= 0, got {args.stage2_samples}")
            rp = stp._single_rp(obs, args.radiopharmaceutical)
            obs = obs.select(radiopharmaceutical=rp)
            df, res = stp.twin_tia(obs, args.twin, regimen, level=args.level,
                                   n_samples=args.samples, seed=args.seed, update=args.update,
                                   n_stage2=args.stage2_samples, use_pet=not args.no_pet)
            if args.update == "adaptive":
                info = (f"twin update: target {res.target}, {len(res.weights)} draws, "
                        f"effective sample size {res.ess:.0f}")
            # fixed columns; tia_mbq_h is the posterior median (the MAP value is not written)
            df = df[["region", "tia_mbq_h", "tia_low", "tia_high"]]
        else:
            if args.twin is not None:
                raise InputError(f"--twin is used by --method twin only, not {args.method}")
            rp = stp._single_rp(obs, args.radiopharmaceutical)
            obs = obs.select(radiopharmaceutical=rp)
            offset = 0.0
            if regimen is not None:
                own = [a.time_h for a in regimen.administrations
                       if a.radiopharmaceutical.lower() == rp]
                if not own:
                    raise InputError(f"the regimen has no administration of {rp}")
                if len(own) > 1:
                    raise InputError(f"{args.method} handles one administration; the regimen "
                                     f"has {len(own)} of {rp} (use --method twin)")
                offset = own[0] - float(regimen.times_h.min())
            if args.method == "multi":
                from twin.kinetics import fit_regions

                lam = parse_radiopharmaceutical(rp).decay_constant_per_h
                shifted = Observations(obs.region, obs.time_h - offset, obs.activity_mbq,
                                       obs.sigma_mbq, obs.modality, obs.radiopharmaceutical,
                                       source=obs.source)
                if np.any(shifted.time_h < 0):
                    raise InputError("an observation is before the administration; times are "
                                     "hours after the regimen's first administration")
                full = fit_regions(shifted, lambda_phys_per_h=lam, model=args.model,
                                   level=args.level)
                df = full[["region", "tia_mbq_h", "tia_low", "tia_high"]]
                for _, r in full.iterrows():
                    print(f"{r['region']}: {r['model']}, {r['n_points']} points, "
                          f"extrapolated before first scan {r['tia_before_mbq_h']:.4g} MBq h, "
                          f"tail {r['tia_tail_mbq_h']:.4g} MBq h")
            else:
                df = stp.classical_stp(obs, args.method, radiopharmaceutical=rp,
                                       t_eff_h=half_lives, time_offset_h=offset)
                df = df[["region", "tia_mbq_h"]]
    write_csv_atomic(df, args.out, inputs=inputs)
    if args.method == "twin" and args.update == "adaptive":
        print(info)
    seen = set()
    for w in caught:
        msg = str(w.message)
        if msg not in seen:
            seen.add(msg)
            print(f"warning: {msg}")
    print(f"wrote {args.out} ({len(df)} regions, method {args.method})")
    return 0
