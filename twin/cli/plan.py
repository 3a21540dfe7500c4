"""``twin plan``: optimise activity and number of cycles for a twin under organ limits.

Fixed interface (shared/CLI.md):
  twin plan --twin TWIN.json --limit REGION:dose_gy|bed_gy<=X ... [--activity-gbq LO:HI]
            [--max-cycles N] [--interval-weeks W] [--quantile Q] --out PLAN.csv
            [--summary SUMMARY.csv]
PLAN.csv is a regimen file (time_h, radiopharmaceutical, activity_mbq, ligand_nmol), one row per
cycle, on the twin's clock (see --start-h: by default the plan starts at the twin's therapy
time; cycles the twin was fitted with are kept as delivered rows); SUMMARY.csv has per region the planned cumulative dose and BED with their 90% credible
interval, the limit, its value at the quantile and the margin.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twin.errors import InputError


def add_common(p, *, plan: bool = True) -> None:
    p.add_argument("--limit", dest="limits", action="append", default=[],
                   metavar="REGION:dose_gy|bed_gy<=X",
                   help="organ limit on the cumulative absorbed dose or BED (Gy) of a model "
                        "region, e.g. Kidney:bed_gy<=40 (Bodei 2008; 28 with risk factors) or "
                        "RedMarrow:dose_gy<=2 (Benua 1962); repeatable"
                        + ("" if plan else "; default: those two"))
    p.add_argument("--activity-gbq", default="3.7:11.1", metavar="LO:HI",
                   help="activity per cycle, GBq (bounds)")
    p.add_argument("--interval-weeks", type=float, default=6.0, help="weeks between cycles")
    p.add_argument("--quantile", type=float, default=0.95,
                   help="posterior quantile at which every limit must hold")
    p.add_argument("--objective", choices=("mean", "min"), default="mean",
                   help="maximise the mean lesion dose/BED or that of the least-treated lesion")
    p.add_argument("--samples", type=int, default=48, help="posterior samples")
    p.add_argument("--repair-half-time", dest="repair", action="append", default=[],
                   metavar="REGION=HOURS",
                   help="repair half-time for a region without one in the references (needed "
                        "for its BED); repeatable")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of cumulative BED/dose per organ against cycle with the limits")
    p.add_argument("--lesion-response", default=None, metavar="MODEL",
                   help="optional lesion response between cycles (receptor loss lowers the "
                        "lesion dose per GBq of later cycles; docs/planning.md): a preset "
                        "'roth2022-g1' / 'roth2022-g2' (177Lu-DOTATATE, tumour dose -6%% / -14%% "
                        "per cycle, Roth et al. J Nucl Med 2022;63:399), 'per-cycle:rate=R', or "
                        "'lq:alpha_gy=A,clearance_half_time_h=H[,doubling_time_h=T]' (your own "
                        "parameters; no cited default exists). Default: none (cycles identical)")


def register(sub) -> None:
    p = sub.add_parser(
        "plan", help="optimise activity per cycle and number of cycles under organ limits",
        description="Choose the regimen (number of cycles and activity per cycle, at a fixed "
                    "interval) that maximises the posterior mean lesion dose (or BED) of a "
                    "twin while every limit holds at the given posterior quantile. Writes "
                    "PLAN.csv (a regimen file) and optionally SUMMARY.csv and a plot.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--twin", type=Path, required=True, help="TWIN.json (from `twin fit`)")
    add_common(p)
    p.add_argument("--max-cycles", type=int, default=6,
                   help="at most this many therapy cycles in total (including cycles the twin "
                        "already has in its regimen)")
    p.add_argument("--start-h", type=float, default=None,
                   help="time of the first new cycle, hours on the twin's clock (from the first "
                        "administration in TWIN.json). Default: the twin's therapy time - one "
                        "interval after the last therapy cycle in the twin's regimen (those "
                        "cycles are kept as delivered rows of PLAN.csv); for a pre-therapy (PET) "
                        "twin, its last administration (0 h for one PET at 0 h), so PLAN.csv "
                        "starts with cycle 1. Earlier times are in the past: an error")
    p.add_argument("--risk-factors", action="store_true",
                   help="with no --limit: use the kidney BED limit 28 Gy instead of 40 Gy")
    p.add_argument("--out", type=Path, required=True, help="PLAN.csv")
    p.add_argument("--summary", type=Path, default=None, help="SUMMARY.csv")
    p.set_defaults(func=run)


def parse_bounds(text: str) -> tuple[float, float]:
    parts = str(text).split(":")
    if len(parts) != 2:
        raise InputError(f"--activity-gbq takes LO:HI in GBq (e.g. 3.7:11.1), got {text!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise InputError(f"--activity-gbq: {text!r} is not two numbers LO:HI (GBq)") from None
    return lo, hi


def parse_repair(items) -> dict:
    from twin.cli.options import region_hours

    return region_hours(items, "--repair-half-time")


def settings_from(args, **extra):
    from twin.planning import PlanSettings

    s = PlanSettings(activity_gbq=parse_bounds(args.activity_gbq),
                     interval_weeks=args.interval_weeks, quantile=args.quantile,
                     objective=args.objective, n_samples=args.samples, **extra)
    s.validate()
    return s


def lesion_response_from(args):
    from twin.planning.response import parse_lesion_response

    return parse_lesion_response(getattr(args, "lesion_response", None))


def limits_from(args, risk_factors=False):
    from twin.planning import default_limits, parse_limit

    return [parse_limit(x) for x in args.limits] if args.limits else \
        default_limits(risk_factors)


def write_outputs(plan, args, inputs):
    from twin.atomic import write_csv_atomic
    from twin.planning import plot_cumulative

    summary = plan.summary()
    # everything is computed before the first file is written (no partial output on errors)
    write_csv_atomic(plan.to_frame(), args.out, inputs=inputs)
    if getattr(args, "summary", None) is not None:
        write_csv_atomic(summary, args.summary, inputs=inputs)
    if args.plot is not None:
        plot_cumulative(plan, args.plot, inputs=inputs)
    print(plan.to_frame().to_string(index=False))
    for lim in plan.limits:
        v = plan.limit_values[str(lim)]
        print(f"{lim}: q{plan.quantile:g} = {v:.3g} Gy (margin {lim.value - v:.3g} Gy; "
              f"{lim.source})")
    print(f"lesion {plan.lesion_metric} ({plan.settings.objective}), posterior mean: "
          f"{plan.objective_gy:.3g} Gy; binding: {plan.binding}")
    print(f"wrote {args.out}")


def run(args) -> int:
    from calibration import read_twin
    from twin.planning import plan_twin

    if args.max_cycles < 1:
        raise InputError("--max-cycles must be at least 1")
    if not args.twin.is_file():
        raise InputError(f"twin file {args.twin} does not exist")
    if args.start_h is not None and args.start_h < 0:
        raise InputError(f"--start-h {args.start_h:g} h is in the past (before time 0)")
    limits = limits_from(args, args.risk_factors)
    settings = settings_from(args, max_cycles=args.max_cycles)
    response = lesion_response_from(args)
    posterior, twin_regimen = read_twin(args.twin)
    extra = {} if response is None else {"lesion_response": response}
    plan = plan_twin(posterior, limits, settings, twin_regimen=twin_regimen,
                     start_h=args.start_h, max_cycles=args.max_cycles,
                     repair_half_time_h=parse_repair(args.repair) or None, **extra)
    write_outputs(plan, args, [args.twin])
    if response is not None:
        print(f"lesion response: {response.describe()}")
    if plan.n_fixed:
        print(f"kept the twin's {plan.n_fixed} delivered cycle(s) as the first rows")
    return 0
