"""``twin fit``: personalise a model to a patient's PET and SPECT region activities.

Fixed interface (shared/CLI.md):
  twin fit --model NAME [--variant V] --observations OBS.csv --regimen REGIMEN.csv --out TWIN.json
Added options: --personal, --prior NAME=MEAN:CV, --prior-twin, --set, --noise, --starts, --seed,
--coupled, --max-nfev. Writes TWIN.json (calibration.twinfile) atomically, only on success;
prints the identifiability table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twin.errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "fit", help="personalise a model to PET/SPECT region activities; write TWIN.json",
        description="MAP fit of a model's personal parameters (receptor densities, release "
                    "rates; lognormal population priors, log space) to region activities, with a "
                    "Laplace posterior and an identifiability report. OBS.csv columns: region, "
                    "time_h (h from the regimen's first administration), activity_mbq, "
                    "sigma_mbq, modality, radiopharmaceutical.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="library model name (psma-pbrpk)")
    p.add_argument("--variant", default=None, help="model variant (default: the model's first)")
    p.add_argument("--observations", type=Path, required=True, help="OBS.csv")
    p.add_argument("--regimen", type=Path, required=True,
                   help="REGIMEN.csv: time_h, radiopharmaceutical, activity_mbq, ligand_nmol")
    p.add_argument("--out", type=Path, required=True, help="TWIN.json to write")
    p.add_argument("--personal", action="append", default=None, metavar="NAME[,NAME...]",
                   help="parameters to fit (default: the model's declared personal parameters)")
    p.add_argument("--prior", action="append", default=[], metavar="NAME=MEAN:CV",
                   help="population prior of a personal parameter: mean in its canonical unit "
                        "(or with a unit, e.g. 45nmol/L) and coefficient of variation")
    p.add_argument("--prior-twin", type=Path, default=None,
                   help="use the posterior of an earlier TWIN.json as the prior (sequential "
                        "update)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a non-personal parameter for this patient, e.g. V_Kidney=290mL")
    p.add_argument("--noise", choices=("observations", "model"), default="observations",
                   help="sigma of each row from OBS.csv, or from the PET/SPECT noise model")
    p.add_argument("--starts", type=int, default=3, help="optimiser starts (multi-start)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    p.add_argument("--max-nfev", type=int, default=60, help="evaluations per start")
    p.add_argument("--coupled", action="store_true",
                   help="solve imaging and therapy administrations together (ligand competition)")
    p.add_argument("--region-group", action="append", default=[], metavar="OBS=REGION+REGION...",
                   help="an observed region that is the sum of model regions, e.g. the imaged "
                        "remainder of the body: Rest=Rest+Art+Vein+Muscle+Adipose+Skin+GI")
    p.set_defaults(func=run)


def parse_region_groups(items) -> dict:
    """{observed region: [model regions]} from --region-group OBS=A+B+C items."""
    out = {}
    for item in items:
        name, sep, rest = item.partition("=")
        members = [m.strip() for m in rest.split("+") if m.strip()]
        if not sep or not name.strip() or not members:
            raise InputError(f"--region-group takes OBS=REGION+REGION..., got {item!r}")
        out[name.strip()] = members
    return out


def _parse_priors(spec, items) -> dict:
    from pbpk_models.units import parse_quantity

    out = {}
    for item in items:
        if "=" not in item or ":" not in item.split("=", 1)[1]:
            raise InputError(f"--prior takes NAME=MEAN:CV, got {item!r}")
        name, rest = item.split("=", 1)
        mean_text, cv_text = rest.rsplit(":", 1)
        par = spec.parameter(name.strip())
        mean = parse_quantity(mean_text, par.unit, what=par.name)
        try:
            cv = float(cv_text)
        except ValueError:
            raise InputError(f"--prior {item}: CV must be a number, e.g. 0.3") from None
        out[par.name] = (mean, cv)
    return out


def run(args) -> int:
    from calibration import Observations, fit, format_identifiability, read_twin
    from calibration.twinfile import dumps_twin
    from calibration.fit import model_spec
    from pbpk_models.regimen import Regimen
    from twin.atomic import write_text_atomic
    from twin.cli.simulate import parse_sets

    spec = model_spec(args.model, args.variant)  # name or REDUCED.json
    observations = Observations.from_csv(args.observations)
    regimen = Regimen.from_csv(args.regimen)
    personal = None
    if args.personal:
        personal = [n.strip() for item in args.personal for n in item.split(",") if n.strip()]
    fixed = parse_sets(spec, args.sets)
    prior = None
    if args.prior_twin is not None:
        if args.prior or personal:
            raise InputError("--prior-twin sets the personal parameters and their prior; do not "
                             "combine it with --prior or --personal")
        previous, _ = read_twin(args.prior_twin)
        if previous.model_name != args.model:
            raise InputError(f"--prior-twin is a twin of {previous.model_name}, not {args.model}")
        prior = previous.as_prior()
    overrides = _parse_priors(spec, args.prior)
    if args.starts < 1:
        raise InputError("--starts must be at least 1")
    inputs = [args.observations, args.regimen, args.prior_twin]
    post = fit(observations, regimen, args.model, variant=args.variant, personal=personal,
               prior=prior, prior_overrides=overrides or None, fixed=fixed, noise=args.noise,
               coupled=args.coupled, n_starts=args.starts, seed=args.seed,
               max_nfev=args.max_nfev,
               region_groups=parse_region_groups(args.region_group) or None)
    write_text_atomic(args.out, dumps_twin(post, regimen), inputs=inputs)
    d = post.diagnostics
    print(format_identifiability(post.identifiability()))
    print(f"chi-square {d['chi2_data']:.3g} for {d['n_obs']} data points; "
          f"{d['n_converged']}/{d['n_starts']} starts converged; {d['time_s']:.1f} s")
    print(f"wrote {args.out}")
    return 0
