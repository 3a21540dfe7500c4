"""``twin demo``: the pipeline on the built-in synthetic patient.

Stages so far: the population-typical 177Lu-PSMA-617 twin (``psma-pbrpk``, corrected variant)
simulated for 7.4 GBq; organ TIA and self-dose per GBq against published clinical ranges.
Writes DIR/regions.csv and DIR/provenance.json.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

# Published clinical ranges of absorbed dose per administered activity (Gy/GBq), for the table.
# 177Lu-PSMA-617: kidneys 0.39 (Violet J et al., J Nucl Med 2019;60:517) to 0.82 +/- 0.25
# (Mol Imaging Radionucl Ther 2017, PMC5472088); salivary glands 0.44-0.72 (Hohberg M et al.,
# Mol Imaging Biol 2016;18:437: 0.72) to 1.90 +/- 1.19 (parotid, PMC5472088).
# 177Lu-DOTATATE: kidneys 0.38 +/- 0.19 (EJNMMI Phys 2018, doi:10.1186/s40658-018-0232-9) to
# 0.57 +/- 0.09 (Clin Nucl Med 2013); spleen 0.85 (Lutathera label) to 1.17 +/- 0.14 (Clin Nucl
# Med 2013). See shared/data/pbpk/clinical_reference.md and docs/research/.
CLINICAL_RANGES_GY_PER_GBQ = {
    "lu177-psma-617": {"Kidney": (0.39, 0.82), "SG": (0.44, 1.90)},
    "lu177-dotatate": {"Kidney": (0.38, 0.57), "Spleen": (0.85, 1.17)},
}


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the pipeline on the built-in synthetic patient",
                       description="Simulate the population-typical 177Lu-PSMA-617 twin for "
                                   "7.4 GBq and print organ TIA and absorbed dose per GBq next to "
                                   "published clinical ranges. Outputs go to --out.")
    p.add_argument("--out", type=Path, default=Path("twin-demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="smaller, faster run")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic patient")
    p.set_defaults(func=run)


def run(args) -> int:
    import pbpk_models
    from pbpk_models import radionuclides as rn
    from pbpk_models.library import build_spec
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import simulate
    from twin.atomic import write_csv_atomic, write_text_atomic
    from twin.cli.simulate import region_table
    from twin.errors import InputError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.time()
    print("[1/1] population-typical 177Lu-PSMA-617 twin, 7.4 GBq ...", flush=True)
    spec = build_spec("psma-pbrpk", "corrected")
    regimen = Regimen.single("lu177-psma-617", 7400.0)
    result = simulate(spec, regimen, days=60.0)
    table = region_table(result, rn.energy_per_decay_mev("Lu-177"))
    ranges = CLINICAL_RANGES_GY_PER_GBQ["lu177-psma-617"]
    table["clinical_gy_per_gbq"] = [
        f"{ranges[r][0]}-{ranges[r][1]}" if r in ranges else "" for r in table["region"]]
    timings["simulate_s"] = round(time.time() - t0, 2)
    write_csv_atomic(table, out / "regions.csv")
    import jax
    import numpy as np

    provenance = {
        "twin_version": __import__("twin").__version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "model": {"name": spec.name, "variant": spec.variant, "references": spec.references},
        "parameters": {n: float(v) for n, v in zip(result.model.parameter_names,
                                                    np.asarray(result.params))},
        "regimen": regimen.to_frame().to_dict(orient="records"),
        "seed": args.seed,
        "timings": timings,
        "pbpk_models": pbpk_models.__name__,
    }
    write_text_atomic(out / "provenance.json", json.dumps(provenance, indent=2))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out / 'regions.csv'} and {out / 'provenance.json'}")
    return 0
