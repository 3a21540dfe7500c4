"""``twin replan``: after cycle k, update the twin with new SPECT data and re-plan the rest.

Fixed interface (shared/CLI.md):
  twin replan --twin TWIN.json --observations CYCLE.csv --delivered PLAN.csv --out PLAN2.csv
The twin's posterior is the prior of the update; the cycles of PLAN.csv given at or before the
last observation are the delivered ones (kept as given); the remaining cycles (up to the plan's
number of rows, or --max-cycles in total) are re-optimised under the limits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twin.errors import InputError


def register(sub) -> None:
    from twin.cli.plan import add_common

    p = sub.add_parser(
        "replan", help="update a twin with the latest SPECT data and re-plan the next cycles",
        description="Adaptive re-planning: fit the observations of the delivered cycles with "
                    "the twin's posterior as prior, keep the delivered cycles, and re-optimise "
                    "the remaining ones under the limits (default: kidney BED 40 Gy, red "
                    "marrow 2 Gy). Writes the whole regimen (delivered + new) as PLAN2.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--twin", type=Path, required=True, help="TWIN.json before these data")
    p.add_argument("--observations", type=Path, required=True,
                   help="OBS.csv (region, time_h, activity_mbq, sigma_mbq, modality, "
                        "radiopharmaceutical), time from the first delivered cycle")
    p.add_argument("--delivered", type=Path, required=True,
                   help="regimen CSV of what was given (the previous PLAN.csv)")
    add_common(p, plan=False)
    p.add_argument("--max-cycles", type=int, default=None,
                   help="total cycles including the delivered ones (default: rows of "
                        "--delivered, at least one more than delivered)")
    p.add_argument("--delivered-cycles", type=int, default=None,
                   help="how many leading rows of --delivered were given (default: those at or "
                        "before the last observation)")
    p.add_argument("--next-h", type=float, default=None,
                   help="time of the next cycle (h); default: the next planned row")
    p.add_argument("--starts", type=int, default=2, help="optimiser starts of the update fit")
    p.add_argument("--max-nfev", type=int, default=40,
                   help="residual evaluations per start of the update fit")
    p.add_argument("--twin-out", type=Path, default=None, help="write the updated TWIN.json")
    p.add_argument("--out", type=Path, required=True, help="PLAN2.csv")
    p.add_argument("--summary", type=Path, default=None, help="SUMMARY.csv")
    p.set_defaults(func=run)


def run(args) -> int:
    from calibration import Observations, read_twin
    from calibration.twinfile import write_twin
    from pbpk_models.regimen import Regimen
    from twin.cli.plan import (lesion_response_from, limits_from, parse_repair, settings_from,
                               write_outputs)
    from twin.planning import replan

    if args.starts < 1 or args.max_nfev < 1:
        raise InputError("--starts and --max-nfev must be at least 1")
    for f in (args.twin, args.observations, args.delivered):
        if not f.is_file():
            raise InputError(f"{f} does not exist")
    limits = limits_from(args)
    settings = settings_from(args)
    response = lesion_response_from(args)
    extra = {} if response is None else {"lesion_response": response}
    posterior, _ = read_twin(args.twin)
    obs = Observations.from_csv(args.observations)
    delivered = Regimen.from_csv(args.delivered)
    plan, new_post = replan(posterior, obs, delivered, limits, settings,
                            n_delivered=args.delivered_cycles, max_cycles=args.max_cycles,
                            next_h=args.next_h,
                            fit_kw={"n_starts": args.starts, "max_nfev": args.max_nfev},
                            repair_half_time_h=parse_repair(args.repair) or None, **extra)
    inputs = [args.twin, args.observations, args.delivered]
    if args.twin_out is not None:
        write_twin(args.twin_out, new_post, Regimen(plan.regimen.administrations[:plan.n_fixed]))
    write_outputs(plan, args, inputs)
    print(f"delivered cycles kept: {plan.n_fixed}")
    if response is not None:
        print(f"lesion response: {response.describe()}")
    return 0
