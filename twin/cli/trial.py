"""``twin trial``: a virtual dose-escalation trial, repeated many times.

Fixed interface (shared/CLI.md):
  twin trial --design 3+3|boin|crm --radiopharmaceutical R --levels-gbq a,b,...
             (--population P | --dlt-probabilities p1,p2,...) --n-trials N --seed S --out DIR/
Output: DIR/operating_characteristics.csv with ``level, activity_gbq, p_select_mtd,
mean_patients, p_dlt_observed`` first (then true_p_dlt, mean_dlts, and with a population the
per-level rates of response and of patients over the kidney and marrow limits);
DIR/summary.json; DIR/operating_characteristics.png; with a population DIR/pool.csv (each
virtual patient's doses and outcomes at every level) and DIR/population.csv (covariates).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twin.errors import InputError



def register(sub) -> None:
    p = sub.add_parser(
        "trial", help="simulate a dose-escalation design (3+3, BOIN, CRM) many times",
        description="Run N virtual dose-escalation trials over activity levels (GBq per cycle, "
                    "over the population's schedule: mcrpc 6 cycles every 6 weeks, net 4 every 8 "
                    "weeks) either on given true DLT probabilities or on a virtual population "
                    "whose DLTs follow from kidney and marrow NTCP of the simulated course "
                    "BED/dose. Populations: mcrpc (177Lu-PSMA-617, model psma-pbrpk) and net "
                    "(neuroendocrine tumours, 177Lu-DOTATATE, model sstr). Writes "
                    "DIR/operating_characteristics.csv "
                    "(level, activity_gbq, p_select_mtd, mean_patients, p_dlt_observed, ...), "
                    "summary.json and a PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--design", required=True, help="3+3, boin or crm")
    p.add_argument("--radiopharmaceutical", default=None,
                   help="therapy radiopharmaceutical: lu177-psma-617 (mcrpc) or lu177-dotatate "
                        "(net); default: the population's")
    p.add_argument("--levels-gbq", required=True,
                   help="increasing activity levels per cycle, GBq, comma-separated")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--population", help="virtual population name: mcrpc or net")
    g.add_argument("--dlt-probabilities",
                   help="true DLT probability of each level, comma-separated, in [0, 1]")
    p.add_argument("--n-trials", type=int, default=1000, help="number of simulated trials")
    p.add_argument("--seed", type=int, default=1, help="random seed (patients and outcomes)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--target", type=float, default=0.25,
                   help="target DLT rate (BOIN, CRM)")
    p.add_argument("--max-patients", type=int, default=30,
                   help="maximum sample size (BOIN, CRM; 3+3 stops by its rules)")
    p.add_argument("--cohort-size", type=int, default=3, help="cohort size (BOIN, CRM)")
    p.add_argument("--pool-size", type=int, default=200,
                   help="virtual patients simulated at every level (trials draw from them)")
    p.add_argument("--cycles", choices=("superpose", "full"), default="superpose",
                   help="superpose: one cycle simulated and multiplied by the number of cycles; "
                        "full: all cycles in one solve")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in str(text).split(",") if x.strip() != ""]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise InputError(f"{what} is empty; give comma-separated numbers")
    return vals


def run(args) -> int:
    import json

    from twin.atomic import write_csv_atomic, write_text_atomic
    from twin.trials.designs import DESIGNS
    from twin.trials.virtual import (check_levels, check_probabilities,
                                     plot_operating_characteristics, virtual_trial)

    design = args.design.lower()
    if design not in DESIGNS:
        raise InputError(f"unknown design {args.design!r}; choose one of {', '.join(DESIGNS)}")
    from pbpk_models.radionuclides import parse_radiopharmaceutical

    from twin.trials.populations import MODEL_OF, radiopharmaceutical_of

    if args.radiopharmaceutical is None:
        args.radiopharmaceutical = (radiopharmaceutical_of(args.population)
                                    if args.population is not None else "lu177-psma-617")
    parse_radiopharmaceutical(args.radiopharmaceutical)  # InputError for an unknown name
    levels = check_levels(parse_floats(args.levels_gbq, "--levels-gbq"))
    probs = None
    if args.dlt_probabilities is not None:
        probs = check_probabilities(parse_floats(args.dlt_probabilities, "--dlt-probabilities"),
                                    levels.size)
    if args.n_trials < 1:
        raise InputError(f"--n-trials must be at least 1, got {args.n_trials}")
    if args.pool_size < 1:
        raise InputError(f"--pool-size must be at least 1, got {args.pool_size}")
    if args.population is not None:
        pop = args.population.lower()
        if pop not in MODEL_OF:
            raise InputError(f"unknown population {args.population!r}; known: "
                             f"{', '.join(MODEL_OF)}")
        if radiopharmaceutical_of(pop) != args.radiopharmaceutical.lower():
            raise InputError(f"population {pop} is treated with {radiopharmaceutical_of(pop)}, "
                             f"not {args.radiopharmaceutical}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    opts = {} if design == "3+3" else {"target": args.target, "max_patients": args.max_patients,
                                        "cohort_size": args.cohort_size}
    vt = virtual_trial(design, levels, population=args.population, dlt_probabilities=probs,
                       n_trials=args.n_trials, seed=args.seed, pool_size=args.pool_size,
                       design_options=opts, cycle_mode=args.cycles,
                       progress=not args.no_progress)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(vt.table, out / "operating_characteristics.csv", index=False)
    summary = {**vt.results.summary(), "levels_gbq": levels.tolist(), "seed": args.seed,
               "radiopharmaceutical": args.radiopharmaceutical.lower(),
               "source": "population" if probs is None else "dlt-probabilities",
               "design_options": opts}
    if vt.pool is not None:
        summary.update({"population": args.population.lower(),
                        "population_version": vt.population.version,
                        "pool_size": args.pool_size, "cycles": vt.population.n_cycles,
                        "interval_weeks": vt.population.interval_weeks,
                        "cycle_mode": args.cycles})
        write_csv_atomic(vt.pool, out / "pool.csv", index=False)
        write_csv_atomic(vt.population.covariates, out / "population.csv", index=False)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    source = args.population.lower() if probs is None else "given DLT rates"
    plot_operating_characteristics(vt.table, out / "operating_characteristics.png",
                                   f"{design}, {source}, {args.n_trials} trials")
    cols = ["level", "activity_gbq", "p_select_mtd", "mean_patients", "p_dlt_observed",
            "true_p_dlt"]
    print(vt.table[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"P(no MTD) = {summary['p_no_mtd']:.3f}; wrote {out}/operating_characteristics.csv")
    return 0
