"""``twin simulate``: one bolus or a regimen through a PBPK model; region TIA, TIAC and dose.

Fixed interface (shared/CLI.md):
  twin simulate --model NAME [--variant published|corrected] --hot-nmol H --cold-nmol C
                [--set NAME=VALUE ...] [--days D] --out FILE.csv
  twin simulate --model NAME --regimen REGIMEN.csv [...] --out FILE.csv
Output columns: region, tia_mbq_h, tiac_h, dose_gy_per_gbq (self-dose of the non-penetrating
emissions, regions with a mass), and with a regimen also dose_gy and bed_gy (added by later stages).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twin.errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "simulate", help="simulate a PBPK model for one bolus or a regimen; write region TIA",
        description="Simulate a radioligand PBPK model and write one row per region: "
                    "region, tia_mbq_h (MBq h), tiac_h (TIA / administered activity, h), "
                    "dose_gy_per_gbq (self-dose of electrons and alphas per GBq administered). "
                    "Give either --hot-nmol/--cold-nmol (one bolus at t = 0) or --regimen.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="library model name (psma-pbrpk, sstr); not with --twin")
    p.add_argument("--twin", type=Path, default=None,
                   help="a personalised twin (TWIN.json from `twin fit`): simulate it, with 90%% "
                        "credible intervals tia_low, tia_high from its posterior")
    p.add_argument("--samples", type=int, default=200,
                   help="posterior samples for the credible interval (with --twin)")
    p.add_argument("--variant", default=None,
                   help="model variant: psma-pbrpk has 'corrected' (default) and 'published'")
    p.add_argument("--radiopharmaceutical", default=None,
                   help="for a bolus: which labelled ligand (default: the model's therapy "
                        "radiopharmaceutical, e.g. lu177-psma-617)")
    p.add_argument("--hot-nmol", type=float, default=None,
                   help="labelled ligand of the bolus, nmol (activity = amount x molar activity)")
    p.add_argument("--cold-nmol", type=float, default=None,
                   help="unlabelled ligand of the bolus, nmol")
    p.add_argument("--regimen", type=Path, default=None,
                   help="CSV with columns time_h, radiopharmaceutical, activity_mbq, ligand_nmol")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="change a parameter; VALUE in the parameter's canonical unit or with a "
                        "unit, e.g. Rden_Kidney=45nmol/L or k_off=0.368/min (repeatable)")
    p.add_argument("--days", type=float, default=60.0,
                   help="simulated span after the last administration, days (TIA up to its end)")
    p.add_argument("--out", type=Path, default=None, help="output CSV")
    p.add_argument("--curves", type=Path, default=None,
                   help="also write region activity curves (region, time_h, activity_mbq)")
    p.add_argument("--list-parameters", action="store_true",
                   help="print the model's parameters with units and sources, and exit")
    p.set_defaults(func=run)


def parse_sets(spec, sets) -> dict[str, float]:
    from pbpk_models.units import parse_quantity

    values = {}
    for item in sets:
        if "=" not in item:
            raise InputError(f"--set takes NAME=VALUE, got {item!r}")
        name, text = item.split("=", 1)
        name = name.strip()
        if name in spec.derived:
            values[name] = _parse_any(text, name)
            continue
        par = spec.parameter(name)  # raises InputError with suggestions
        values[name] = parse_quantity(text, par.unit, what=name)
    return values


def _parse_any(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{name} is a derived parameter: give a plain number in its canonical "
                         f"unit") from None


def parameter_table(spec):
    import pandas as pd

    rows = [{"name": p.name, "value": p.value, "unit": p.unit, "kind": p.kind,
             "description": p.description, "source": p.source} for p in spec.all_parameters()]
    return pd.DataFrame(rows)


def region_table(result, energy_mev: float, rp_index: int = 0):
    """One row per region: region, tia_mbq_h, tiac_h, dose_gy_per_gbq (NaN without a mass)."""
    import numpy as np
    import pandas as pd

    from pbpk_models import units as u

    masses = result.model.region_masses_g(result.params)
    rp = result.radiopharmaceuticals[rp_index]
    tia = result.tia(rp)
    tiac = result.tiac_h(rp)
    rows = []
    for region in result.regions:
        m = masses.get(region)
        dose = tiac[region] * u.gy_per_mbq_h(energy_mev, m) * 1000.0 if m else np.nan
        rows.append({"region": region, "tia_mbq_h": tia[region], "tiac_h": tiac[region],
                     "dose_gy_per_gbq": dose})
    return pd.DataFrame(rows)


# Model regions with complete radiobiological parameters (alpha/beta and repair half-time) in
# twin.dosimetry.radiobiology.TISSUES; BED is left empty for the others.
BED_TISSUES = {"Kidney": "kidney"}


def regimen_time_grid(regimen, days: float):
    """Output times (h) dense enough for dose-rate integrals: after each administration a
    geometric grid from 1 min to 1 week, and a uniform grid over the whole span."""
    import numpy as np

    t_adm = regimen.unique_times()
    t_end = t_adm[-1] + 24.0 * days
    parts = [np.linspace(t_adm[0], t_end, 1201)]
    for t in t_adm:
        parts.append(t + np.geomspace(1.0 / 60.0, 168.0, 200))
    grid = np.unique(np.concatenate(parts + [t_adm]))
    return grid[grid <= t_end]


def add_regimen_dose(table, result, energy_mev: float):
    """Add dose_gy (self-dose of the whole regimen) and bed_gy (Lea-Catcheside BED of the
    sampled dose-rate curve, regions in BED_TISSUES) to a region table."""
    import numpy as np

    from pbpk_models import units as u
    from twin.dosimetry.radiobiology import bed, tissue

    masses = result.model.region_masses_g(result.params)
    lam = float(result.model.decay_constants_per_h[0])
    dose, beds = [], []
    for region, tia in zip(table["region"], table["tia_mbq_h"]):
        m = masses.get(region)
        if not m:
            dose.append(np.nan)
            beds.append(np.nan)
            continue
        s = u.gy_per_mbq_h(energy_mev, m)
        dose.append(tia * s)
        if region in BED_TISSUES:
            t = tissue(BED_TISSUES[region])
            rate = result.activity(region, result.radiopharmaceuticals[0]) * s
            beds.append(bed(result.times_h, rate, t.alpha_beta_gy, t.repair_half_time_h,
                            tail_decay_per_h=lam))
        else:
            beds.append(np.nan)
    table = table.copy()
    table["dose_gy"] = dose
    table["bed_gy"] = beds
    return table


def run(args) -> int:
    from pbpk_models import radionuclides as rn
    from calibration.fit import model_spec
    from pbpk_models.regimen import Administration, Regimen
    from pbpk_models.simulate import simulate
    from twin.atomic import write_csv_atomic

    if args.twin is not None:
        return run_twin(args)
    if args.model is None:
        raise InputError("give --model NAME (e.g. psma-pbrpk) or --twin TWIN.json")
    spec = model_spec(args.model, args.variant)  # name or REDUCED.json
    if args.list_parameters:
        print(parameter_table(spec).to_string(index=False))
        return 0
    if args.out is None:
        raise InputError("give --out FILE.csv")
    values = parse_sets(spec, args.sets)
    if values:
        spec = spec.with_values(values)
    if args.regimen is not None:
        if args.hot_nmol is not None or args.cold_nmol is not None:
            raise InputError("give either --regimen or --hot-nmol/--cold-nmol, not both")
        regimen = Regimen.from_csv(args.regimen)
    else:
        if args.hot_nmol is None or args.cold_nmol is None:
            raise InputError("give --hot-nmol and --cold-nmol (nmol) for one bolus, or --regimen")
        for name, v in (("--hot-nmol", args.hot_nmol), ("--cold-nmol", args.cold_nmol)):
            if not v == v or v < 0:
                raise InputError(f"{name} must be a non-negative number, got {v}")
        if args.hot_nmol == 0:
            raise InputError("--hot-nmol must be positive (TIAC is per administered activity)")
        rp_name = args.radiopharmaceutical or spec.default_radiopharmaceutical
        rp = rn.parse_radiopharmaceutical(rp_name)
        lam = spec.decay_overrides.get(rp.nuclide, rn.decay_constant_per_h(rp.nuclide))
        from pbpk_models.units import nmol_to_mbq

        activity = nmol_to_mbq(args.hot_nmol, lam)
        regimen = Regimen((Administration(0.0, rp.name, activity,
                                          args.hot_nmol + args.cold_nmol),))
    inputs = [p for p in (args.regimen,) if p is not None]
    times = regimen_time_grid(regimen, args.days) if args.regimen is not None else None
    result = simulate(spec, regimen, times_h=times, days=args.days)
    if len(result.radiopharmaceuticals) > 1:
        print("note: several radiopharmaceuticals; the table is for "
              f"{result.radiopharmaceuticals[0]}")
    nuclide = result.model.radiopharmaceuticals[0].nuclide
    table = region_table(result, rn.energy_per_decay_mev(nuclide))
    if args.regimen is not None:
        table = add_regimen_dose(table, result, rn.energy_per_decay_mev(nuclide))
    write_csv_atomic(table, args.out, inputs=inputs)
    if args.curves is not None:
        write_csv_atomic(result.to_frame(), args.curves, inputs=inputs)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {args.out}")
    return 0


def run_twin(args) -> int:
    """``twin simulate --twin TWIN.json [--regimen R.csv] [--days D] --out FILE.csv``."""
    import numpy as np

    from calibration import model_spec, read_twin
    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u
    from pbpk_models.model import compile_model
    from pbpk_models.regimen import Regimen
    from twin.atomic import write_csv_atomic
    from twin.build import simulate_twin

    if args.model is not None or args.hot_nmol is not None or args.cold_nmol is not None:
        raise InputError("--twin carries its model; do not combine it with --model or a bolus "
                         "(give --regimen to simulate another regimen)")
    if args.out is None:
        raise InputError("give --out FILE.csv")
    if not args.twin.is_file():
        raise InputError(f"twin file {args.twin} does not exist")
    posterior, fitted_regimen = read_twin(args.twin)
    regimen = Regimen.from_csv(args.regimen) if args.regimen is not None else fitted_regimen
    # with --regimen, one organ-dosimetry solve gives TIA, dose and BED (MAP = row 0): one
    # compiled program instead of a TIA solve plus a separate MAP dose solve
    pred = simulate_twin(posterior, regimen, days=args.days, n_samples=args.samples,
                         doses=args.regimen is not None)
    table = pred.to_frame()
    spec = model_spec(posterior.model_name, posterior.variant)
    model = compile_model(spec, (pred.radiopharmaceutical,))
    p = model.params_from(posterior.fixed)
    for name, theta in zip(posterior.names, posterior.theta_map):
        p[model.parameter_names.index(name)] = float(np.exp(theta))
    masses = model.region_masses_g(p)
    e = rn.energy_per_decay_mev(model.radiopharmaceuticals[0].nuclide)
    table["dose_gy_per_gbq"] = [
        t * u.gy_per_mbq_h(e, masses[r]) * 1000.0 if r in masses else np.nan
        for r, t in zip(table["region"], table["tiac_h"])]
    table = table[["region", "tia_mbq_h", "tiac_h", "dose_gy_per_gbq", "tia_low", "tia_high"]]
    if args.regimen is not None:
        # whole-regimen dose and BED at the MAP (twin.dosimetry.organ; same radiopharmaceutical)
        idx = {r: j for j, r in enumerate(pred.regions)}
        table["dose_gy"] = [pred.dose_gy[idx[r]] for r in table["region"]]
        table["bed_gy"] = [pred.bed_gy[idx[r]] for r in table["region"]]
    inputs = [x for x in (args.twin, args.regimen) if x is not None]
    write_csv_atomic(table, args.out, inputs=inputs)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {args.out}")
    return 0
