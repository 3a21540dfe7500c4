"""REDUCED.json: the hierarchy of a reduction, and a model like any other.

Layout: ``format`` ("twin-reduced-model"), ``version``, ``base_model``, ``base_variant``,
``n_parameters`` (MBAM parameters of the reduced model), ``n_parameters_full`` (of the full
model), ``n_model_parameters`` / ``n_model_parameters_full`` (all free parameters), ``parameters``
({name: value}, canonical units, re-fitted), ``personal`` (the reduced model's parameters to fit),
``limits`` (the chain of limits applied, in order: limit, kind, meaning, method, parameters
left, worst prediction error, geodesic diagnostics), ``parameter_map`` (each reduced parameter
as an expression of the full model's), ``hierarchy`` (per model: names, values, worst error,
sloppiness spectrum), ``status``, ``protocol``, ``tolerance``, ``model`` (the reduced ModelSpec,
:mod:`calibration.mbam.serialize`).
"""

from __future__ import annotations

import json
from pathlib import Path

import sympy as sp

from calibration.mbam.serialize import spec_from_dict, spec_to_dict
from pbpk_models.errors import InputError

FORMAT = "twin-reduced-model"
VERSION = 1


def hierarchy_to_dict(h) -> dict:
    full = h.specs[0]
    red = h.spec
    red = red.replace(name=f"{h.base_model}-reduced" if not red.name.endswith("-reduced")
                      else red.name, variant=f"mbam-{h.n_parameters}")
    return {
        "format": FORMAT, "version": VERSION,
        "produced": h.extra.get("produced", {}),
        "engine": {k: v for k, v in h.extra.items() if k != "produced"},
        "base_model": h.base_model, "base_variant": h.base_variant,
        "n_parameters": h.n_parameters, "n_parameters_full": len(h.full_names),
        "n_model_parameters": len(red.parameter_names),
        "n_model_parameters_full": len(full.parameter_names),
        "parameters": dict(h.values[-1]),
        "personal": list(h.extra.get("personal", h.names[-1])),
        "mbam_parameters": list(h.names[-1]),
        "limits": [s for s in h.steps if not s.get("rejected")],
        "rejected": [s for s in h.steps if s.get("rejected")],
        "parameter_map": {k: sp.sstr(v) for k, v in h.parameter_map.items()},
        "hierarchy": [{"model": k, "parameters": list(n), "values": v, "worst_error": e,
                       "eigenvalues": h.spectra[k] if k < len(h.spectra) else None}
                      for k, (n, v, e) in enumerate(zip(h.names, h.values, h.errors))],
        "status": h.status, "time_s": h.time_s, "tolerance": h.tolerance,
        "protocol": h.protocol.to_dict(),
        "predictions": {"labels": list(h.labels), "full": [float(x) for x in h.reference]},
        "model": spec_to_dict(red),
    }


def personal_parameters(base_model: str, names, parameter_map: dict) -> list:
    """The reduced model's parameters to personalise: those of the base model's declared
    personal parameters (:data:`calibration.priors.PERSONAL`) it keeps, and the combinations
    whose expression involves one of them; [] when the base model declares none."""
    from calibration.priors import PERSONAL

    pers = set(PERSONAL.get(base_model, ()))
    out = []
    for n in names:
        expr = parameter_map.get(n, n)
        syms = {str(x) for x in sp.sympify(expr).free_symbols} if not isinstance(
            expr, sp.Basic) else {str(x) for x in expr.free_symbols}
        if n not in pers and n.startswith(tuple(f"{x}_in_" for x in syms & pers)) and \
                len(syms) == 1:
            continue   # an organ's copy of a personal parameter (library.untie_doc): kept at
            #            the population value, its organ's share is not personalised
        if n in pers or syms & pers:
            out.append(n)
    return out


def refresh(doc: dict) -> dict:
    """Recompute the derived fields of a REDUCED.json document with the current code (the
    personal parameters and each limit's meaning); no number changes."""
    from calibration.mbam.geometry import Limit
    from calibration.mbam.reduce import meaning_text

    doc = dict(doc)
    names = doc.get("mbam_parameters") or doc["hierarchy"][-1]["parameters"]
    doc["mbam_parameters"] = list(names)
    pers = personal_parameters(doc["base_model"], names, doc.get("parameter_map", {}))
    if pers:
        doc["personal"] = pers
    for key in ("limits", "rejected"):
        for s in doc.get(key, []):
            if s.get("kind") in ("untie", "retie"):   # not limits (library.untie_doc, compose)
                continue
            lim = Limit(s["kind"], tuple(s["parameters"]), tuple(s["directions"]))
            s["meaning"] = meaning_text(lim, s.get("effects", []))
    return doc


def dumps_hierarchy(h) -> str:
    return json.dumps(hierarchy_to_dict(h), indent=1, allow_nan=False)


def read_reduced(path) -> dict:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"reduced-model file {path} does not exist (make it with `twin "
                         f"reduce ... --out {path.name}`)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or "model" not in d:
        raise InputError(f"{path} is not a reduced-model file (written by `twin reduce`)")
    return d


def load_reduced(path):
    """(ModelSpec, document) of a REDUCED.json."""
    d = read_reduced(path)
    return spec_from_dict(d["model"]), d


def reduced_prior(path, spec, personal=None, overrides=None):
    """Prior of a reduced model's parameters: the base model's population prior for parameters
    the reduction kept unchanged; the model default with calibration.priors.DEFAULT_CV (an
    assumption, with a warning) for new combinations."""
    from calibration.priors import default_prior

    d = read_reduced(path)
    if personal is None:
        personal = d.get("personal") or []
        if not personal:
            raise InputError(f"{path}: the reduced model has no parameters left to fit; "
                             f"simulate it instead")
    return default_prior(d.get("base_model", ""), spec, personal, overrides)
