"""``twin reduce``: MBAM model reduction for a measurement protocol.

Fixed interface (shared/CLI.md):
  twin reduce --model NAME [--variant V] --protocol PROTOCOL.json --out REDUCED.json
              [--tolerance 0.02]
Added options: --parameters (names, or "full": the sloppy full model), --engine, --max-rounds,
--max-time, --geodesic-steps, --geodesic-tol, --alternatives, --spectrum PNG.
Prints each accepted step (limit, meaning, parameters left, worst prediction error) and writes
REDUCED.json atomically after every accepted step, so an interrupted or failing reduction keeps
the hierarchy reached so far. REDUCED.json is itself a model for --model of simulate, fit and
reduce.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twin.errors import InputError, ModelError


def register(sub) -> None:
    p = sub.add_parser(
        "reduce", help="MBAM: reduce a model to what a PET/SPECT protocol can determine",
        description="Manifold Boundary Approximation Method (Transtrum & Qiu, PRL 2014): follow "
                    "a geodesic of the model manifold along its sloppiest direction to a "
                    "boundary, apply the limit it reveals (a rate to 0 or infinity, a pair "
                    "diverging with a finite ratio) symbolically, re-fit to the full model's "
                    "predictions, repeat while the worst relative error of the protocol's "
                    "predictions and of the preserved regions' TIA stays within --tolerance. "
                    "PROTOCOL.json: {\"regimen\": [{time_h, radiopharmaceutical, activity_mbq, "
                    "ligand_nmol}], \"observations\": [{region, time_h, modality, "
                    "relative_sigma}], \"preserve\": [REGION, ...]} (times in h from the "
                    "regimen's first administration).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="library model name (psma-pbrpk, sstr) or a REDUCED.json")
    p.add_argument("--variant", default=None, help="model variant (default: the model's first)")
    p.add_argument("--protocol", type=Path, required=True, help="PROTOCOL.json")
    p.add_argument("--out", type=Path, required=True, help="REDUCED.json to write")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="largest accepted relative error of any prediction (observations and "
                        "preserved TIA) of the reduced model against the full one")
    p.add_argument("--parameters", action="append", default=None, metavar="NAME[,NAME...]",
                   help="the MBAM parameter set: names, or 'full' (every free parameter but "
                        "physical constants: the sloppy full model). Default: the protocol's "
                        "'parameters', else the model's declared personal parameters")
    p.add_argument("--engine", choices=("auto", "affine", "spec"), default="auto",
                   help="affine: geometry of the full model through an affine log-parameter "
                        "map, one compile, bounded time (calibration.mbam.affine); spec: "
                        "recompile each reduced model (calibration.mbam.reduce); auto: affine "
                        "above 10 parameters")
    p.add_argument("--max-rounds", type=int, default=None, help="stop after this many limits")
    p.add_argument("--max-time", type=float, default=2400.0,
                   help="wall-time cap in seconds (affine engine); the steps accepted by then "
                        "are kept")
    p.add_argument("--geodesic-steps", type=int, default=None,
                   help="step budget of each geodesic (default 12 affine, 80 spec)")
    p.add_argument("--geodesic-tol", type=float, default=0.05,
                   help="relative tolerance of the geodesic integration (affine engine)")
    p.add_argument("--alternatives", type=int, default=2,
                   help="when the sloppiest direction's limit exceeds the tolerance, try this "
                        "many next-sloppiest directions (affine engine)")
    p.add_argument("--spectrum", type=Path, default=None,
                   help="also plot the sloppiness spectra of the hierarchy to this PNG")
    p.set_defaults(func=run)


def run(args) -> int:
    from calibration.fit import model_spec
    from calibration.mbam import Protocol, plot_spectrum, reduce_model
    from calibration.mbam.io import dumps_hierarchy, read_reduced
    from twin.atomic import write_text_atomic

    if not (args.tolerance > 0):
        raise InputError(f"--tolerance must be positive, got {args.tolerance}")
    if args.geodesic_steps is not None and args.geodesic_steps < 2:
        raise InputError("--geodesic-steps must be at least 2")
    if not (args.max_time > 0):
        raise InputError(f"--max-time must be positive, got {args.max_time}")
    spec = model_spec(args.model, args.variant)
    base_model, base_variant = args.model, args.variant or spec.variant
    names = None
    if str(args.model).endswith(".json"):
        doc = read_reduced(args.model)
        base_model, base_variant = doc["base_model"], doc["base_variant"]
        names = tuple(doc.get("personal") or ())
    protocol = Protocol.from_json(args.protocol)
    if args.parameters:
        names = tuple(n.strip() for item in args.parameters for n in item.split(",")
                      if n.strip())
    elif protocol.parameters:
        names = protocol.parameters
    if names is not None:
        names = protocol.resolve_parameters(spec, names)
    inputs = [args.protocol] + ([Path(args.model)] if str(args.model).endswith(".json") else [])

    import datetime
    import sys

    provenance = {"command": "twin " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("twin")
                  else " ".join(sys.argv),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds"),
                  "protocol_file": str(args.protocol), "tolerance": args.tolerance}

    def write(h):
        h.extra["produced"] = {**provenance, "engine": h.extra.get("engine", "spec"),
                               "status": h.status, "wall_time_s": round(h.time_s, 1)}
        write_text_atomic(args.out, dumps_hierarchy(h), inputs=inputs)

    def step(h):
        s = h.steps[-1]
        print(f"step {len(h.steps)}:"
              f" {s['limit']}  [{s['method']}]")
        print(f"  meaning: {s['meaning']}")
        print(f"  parameters left ({s['n_parameters_left']}): "
              f"{', '.join(s['parameters_left']) or '-'}")
        print(f"  worst prediction error {100 * s['worst_error']:.3g}% "
              f"({s['worst_prediction']})", flush=True)
        write(h)

    print(f"reducing {spec.name} over {len(names) if names else 'the declared'} parameters; "
          f"tolerance {args.tolerance:g}", flush=True)
    n_names = len(names) if names else 7
    engine = args.engine if args.engine != "auto" else ("affine" if n_names > 10 else "spec")
    if engine == "affine":
        from calibration.mbam.affine import reduce_affine
        from calibration.priors import PERSONAL

        if names is None:
            names = tuple(PERSONAL.get(base_model, ()))
        h = reduce_affine(spec, protocol, names, tolerance=args.tolerance,
                          max_rounds=args.max_rounds, max_time_s=args.max_time,
                          geodesic_steps=args.geodesic_steps or 12,
                          geodesic_tol=args.geodesic_tol, alternatives=args.alternatives,
                          base_model=base_model, base_variant=base_variant, callback=step,
                          log=lambda m: print(m, flush=True))
    else:
        h = reduce_model(spec, protocol, names, tolerance=args.tolerance,
                         max_rounds=args.max_rounds, base_model=base_model,
                         base_variant=base_variant,
                         geodesic_options={"max_steps": args.geodesic_steps or 80},
                         callback=step)
    write(h)
    if args.spectrum is not None:
        plot_spectrum([s for s in h.spectra], args.spectrum,
                      labels=[f"{len(n)} parameters" for n in h.names[:len(h.spectra)]])
    print(f"stopped: {h.status}")
    print(f"{len(h.full_names)} -> {h.n_parameters} parameters in {h.time_s:.1f} s; "
          f"wrote {args.out}")
    if h.status.startswith("failed"):
        raise ModelError(f"{h.status}; the hierarchy reached so far is in {args.out}")
    return 0
