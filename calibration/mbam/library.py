"""Shipped reduced models (``pbpk_models/library/reduced/*.json``) and a cheap sloppiness spectrum.

The files are REDUCED.json documents written by ``twin reduce`` (header ``produced``: command,
date, protocol, tolerance, engine, wall time). Loading one costs no computation:

    from calibration.mbam.library import load_shipped, sloppiness_at
    red = load_shipped("psma-pbrpk_pet1h_spect24h")
    red.spec            # the reduced ModelSpec (simulate / fit it like any model)
    red.model_path      # path usable as --model / model_spec(str(path))
    red.steps           # the limits, in order: limit, kind, meaning, worst_error, ...
    red.hierarchy       # per model of the chain: parameters, values, worst_error, eigenvalues
    red.parameters      # {name: value} of the reduced model (re-fitted to the full one)
    sloppiness_at(values, model="psma-pbrpk")   # spectrum at a fitted twin's parameters
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pbpk_models.errors import InputError

REDUCED_DIR = Path(__file__).resolve().parents[2] / "pbpk_models" / "library" / "reduced"


def shipped_names() -> list[str]:
    """Names of the shipped reduced models (file stems)."""
    return sorted(p.stem for p in REDUCED_DIR.glob("*.json"))


def shipped_path(name: str) -> Path:
    """Path of a shipped reduced model (``name`` with or without ``.json``)."""
    stem = name[:-5] if name.endswith(".json") else name
    path = REDUCED_DIR / f"{stem}.json"
    if not path.exists():
        raise InputError(f"no shipped reduced model {stem!r}; shipped: "
                         f"{', '.join(shipped_names()) or 'none'}")
    return path


@dataclass(frozen=True)
class ShippedReduction:
    """A REDUCED.json read without recomputation."""

    name: str
    model_path: Path
    spec: object
    doc: dict

    @property
    def steps(self) -> list:
        return list(self.doc["limits"])

    @property
    def hierarchy(self) -> list:
        return list(self.doc["hierarchy"])

    @property
    def parameters(self) -> dict:
        return dict(self.doc["parameters"])

    @property
    def personal(self) -> list:
        return list(self.doc["personal"])

    @property
    def full_parameters(self) -> list:
        return list(self.doc["hierarchy"][0]["parameters"])

    @property
    def parameter_map(self) -> dict:
        return dict(self.doc["parameter_map"])

    @property
    def produced(self) -> dict:
        return dict(self.doc.get("produced", {}))

    @property
    def protocol(self):
        from calibration.mbam.predictions import Protocol

        return Protocol.from_dict(self.doc["protocol"], str(self.model_path))

    def spectra(self) -> list:
        """Sloppiness spectra (eigenvalues of J^T J, descending) of the chain's models, as
        stored (None where a model's spectrum was not computed)."""
        return [m.get("eigenvalues") for m in self.doc["hierarchy"]]

    def preserved_tia(self) -> dict:
        """{label: full-model value} of the preserved TIA entries (MBq h) of the reference."""
        p = self.doc["predictions"]
        return {lab: v for lab, v in zip(p["labels"], p["full"]) if lab.startswith("TIA ")}


def load_shipped(name: str = "psma-pbrpk_pet1h_spect24h") -> ShippedReduction:
    """Load a shipped reduced model (hierarchy, steps, reduced ModelSpec) without recomputing."""
    from calibration.mbam.io import load_reduced

    path = shipped_path(name)
    spec, doc = load_reduced(path)
    return ShippedReduction(path.stem, path, spec, doc)


def sloppiness_at(values: dict | None = None, model="psma-pbrpk", names=None, protocol=None,
                  variant: str | None = None, fast: bool = True):
    """Sloppiness spectrum of ``model`` at ``values`` (e.g. a fitted twin's MAP parameters).

    ``model``: a library name, a REDUCED.json path, a :class:`ShippedReduction` or a ModelSpec;
    ``names``: the parameters whose directions are analysed (default: ``values``' keys);
    ``protocol``: a :class:`~calibration.mbam.predictions.Protocol` (default: the shipped
    psma-pbrpk protocol PET 1 h + SPECT 24 h). The prediction vector is the protocol's
    (observations and preserved TIA, weighted by their relative sigmas); J by forward mode
    through the solve at loose tolerance (``fast``: rtol 1e-6, as the MBAM geometry), one
    compile of the model (~1-2 min for psma-pbrpk on 2 cores), then each call ~1-10 s.
    Returns (eigenvalues descending, eigenvectors as columns in ``names`` order, names).
    """
    import jax
    import jax.numpy as jnp

    from calibration.fit import model_spec
    from calibration.mbam.affine import GEOMETRY_SETTINGS
    from calibration.mbam.predictions import MBAM_SETTINGS, prediction_map
    from pbpk_models.simulate import SolverSettings

    if isinstance(model, ShippedReduction):
        spec = model.spec
    elif isinstance(model, (str, Path)):
        spec = model_spec(str(model), variant)
    else:
        spec = model
    if protocol is None:
        protocol = load_shipped("psma-pbrpk_pet1h_spect24h").protocol
    values = dict(values or {})
    names = tuple(names or values)
    if not names:
        raise InputError("sloppiness_at: give the parameters to analyse (names or values)")
    import dataclasses

    protocol = dataclasses.replace(protocol, curve_times_h=())
    settings = SolverSettings(**(GEOMETRY_SETTINGS if fast else MBAM_SETTINGS))
    pm = prediction_map(spec, protocol, names, values=values, settings=settings)
    J = np.asarray(jax.jit(jax.jacfwd(pm.r))(jnp.asarray(pm.theta0)))
    w, V = np.linalg.eigh(J.T @ J)
    order = np.argsort(w)[::-1]
    return np.clip(w[order], 0.0, None), V[:, order], names


def rebuild(doc: dict, full_spec=None) -> dict:
    """Re-apply a REDUCED.json's chain of limits to the full model with the current symbolic
    code (:func:`calibration.mbam.limits.apply_limit`, same limits, same geodesic end points),
    then set the re-fitted values: refreshes ``model`` and each step's method, effects and
    meaning (a limit the code has since learnt to take exactly replaces its finite-distance
    approximation). The numbers of the reduction are unchanged; :func:`verify` checks the
    result."""
    from calibration.mbam.geometry import Limit
    from calibration.mbam.io import refresh
    from calibration.mbam.limits import apply_limit, retie, untie
    from calibration.mbam.reduce import _with_values, meaning_text
    from calibration.mbam.serialize import spec_to_dict
    from pbpk_models.library import build_spec

    doc = refresh(doc)
    spec = full_spec or build_spec(doc["base_model"], doc["base_variant"])
    for k, s in enumerate(doc["limits"]):
        if s.get("kind") == "untie":
            spec = untie(spec, s["parameters"][0], s["regions"])
            continue
        if s.get("kind") == "retie":
            spec = retie(spec, s["copies"])
            continue
        names_k = doc["hierarchy"][k]["parameters"]
        vals_k = doc["hierarchy"][k]["values"]
        boundary = dict(zip(names_k, map(float, np.exp(s["geodesic"]["theta_end"]))))
        lim = Limit(s["kind"], tuple(s["parameters"]), tuple(s["directions"]))
        red = apply_limit(spec, lim, vals_k, boundary)
        spec = red.spec
        s.update(method=red.method, effects=list(red.effects),
                 meaning=meaning_text(lim, list(red.effects)))
    spec = _with_values(spec, doc["parameters"], "MBAM re-fit to the full model")
    spec = spec.replace(name=f"{doc['base_model']}-reduced", variant=f"mbam-{doc['n_parameters']}")
    doc["model"] = spec_to_dict(spec)
    doc["n_model_parameters"] = len(spec.parameter_names)
    return doc


def verify(doc: dict) -> dict:
    """Worst relative error of the reduced ModelSpec's decision predictions (protocol
    observations and preserved TIA; its own compiled solve, Rosenbrock rtol 1e-9) against the
    full model's stored reference. Returns {worst_error, worst_prediction, errors}."""
    import jax
    import jax.numpy as jnp

    from calibration.mbam.predictions import Protocol, prediction_map
    from calibration.mbam.serialize import spec_from_dict

    spec = spec_from_dict(doc["model"])
    protocol = Protocol.from_dict(doc["protocol"], "REDUCED.json protocol")
    ref = np.asarray(doc["predictions"]["full"], float)
    names = tuple(doc.get("mbam_parameters") or doc["personal"])
    pm = prediction_map(spec, protocol, names, reference=ref, allow_empty=True)
    pred = np.asarray(jax.jit(pm.predict)(jnp.asarray(pm.theta0)))
    err = pm.decision_errors(pred)
    i = int(np.argmax(err))
    return {"worst_error": float(err[i]), "worst_prediction": pm.labels[i],
            "errors": {lab: float(e) for lab, e in zip(pm.labels, err)}}


def untie_doc(doc: dict, untie_list) -> dict:
    """A REDUCED.json document whose model has shared parameters split per region
    (:func:`calibration.mbam.limits.untie`; ``untie_list``: [(name, [region, ...]), ...]), to
    continue the reduction with ``twin reduce --model THIS.json --parameters ...`` over organ-wise
    limits. Each split is recorded in the chain as a step of kind ``untie`` (worst error 0: the
    model is unchanged), so :func:`rebuild` re-applies it; the copies map to the shared
    parameter in ``parameter_map``."""
    import copy

    from calibration.mbam.limits import untie
    from calibration.mbam.serialize import spec_from_dict, spec_to_dict

    doc = copy.deepcopy(doc)
    spec = spec_from_dict(doc["model"])
    names = list(doc.get("mbam_parameters") or doc["hierarchy"][-1]["parameters"])
    values = dict(doc["parameters"])
    for name, regions in untie_list:
        before = set(spec.parameter_names)
        spec = untie(spec, name, regions)
        new = [n for n in spec.parameter_names if n not in before]
        val = spec.parameter(name).value
        names += new
        values.update({n: val for n in new})
        pmap = doc["parameter_map"]
        for n in new:
            pmap[n] = pmap.get(name, name)
        doc["limits"].append({
            "limit": f"untie {name} in {', '.join(regions)}", "kind": "untie",
            "parameters": [name], "regions": list(regions), "directions": [],
            "meaning": f"{name} split into one copy per organ ({', '.join(new)}), all at the "
                       f"shared value: the model is unchanged; later limits may act on one "
                       f"organ", "method": "symbolic", "effects": [], "new_parameter": None,
            "parameters_left": list(names), "n_parameters_left": len(names),
            "worst_error": 0.0, "worst_prediction": "", "geodesic": None, "time_s": 0.0})
        doc["hierarchy"].append({"model": len(doc["hierarchy"]), "parameters": list(names),
                                 "values": dict(values), "worst_error":
                                 doc["hierarchy"][-1]["worst_error"], "eigenvalues": None})
    doc["model"] = spec_to_dict(spec)
    doc["parameters"] = values
    doc["mbam_parameters"] = names
    doc["n_parameters"] = len(names)
    doc["n_model_parameters"] = len(spec.parameter_names)
    return doc


def compose(first: dict, second: dict) -> dict:
    """One REDUCED.json for a reduction continued from another: ``second`` was produced by
    ``twin reduce --model FIRST.json ...`` (its chain starts at ``first``'s reduced model, its
    MBAM parameters possibly a subset). The result's chain is ``first``'s limits then
    ``second``'s, against the full model: parameter map composed, hierarchy concatenated (each
    later model listing every parameter: those ``second`` did not reduce over stay at ``first``'s
    re-fitted values, as they were during its reduction), reference predictions and protocol of
    ``first`` (the full model's), values of ``second`` over ``first``'s. No number is
    recomputed; :func:`rebuild` and :func:`verify` (``finalize``) re-apply and check it."""
    import copy

    import sympy as sp

    if first.get("base_model") != second.get("base_model"):
        raise InputError(f"cannot compose reductions of different models "
                         f"({first.get('base_model')} and {second.get('base_model')})")
    first, second = copy.deepcopy(first), copy.deepcopy(second)
    h2 = second["hierarchy"]
    start = list(h2[0]["parameters"])
    names1 = list(first.get("mbam_parameters") or first["hierarchy"][-1]["parameters"])
    vals1 = dict(first["parameters"])
    for n in start:
        if n not in vals1:
            raise InputError(f"the continued reduction's parameter {n} is not a parameter of "
                             f"the reduction it continues")
    fixed = [n for n in names1 if n not in start]       # held at first's values in ``second``
    fixed_log = [float(np.log(vals1[n])) for n in fixed]
    hier = list(first["hierarchy"])
    for k, e in enumerate(h2[1:], 1):
        e = dict(e)
        e["model"] = len(hier)
        e["parameters"] = list(e["parameters"]) + fixed
        e["values"] = {**dict(e["values"]), **{n: vals1[n] for n in fixed}}
        hier.append(e)
    limits = list(first["limits"])
    n1 = len(first["hierarchy"])
    for j, s in enumerate(second["limits"]):
        s = dict(s)
        geo = dict(s.get("geodesic") or {})
        if "theta_end" in geo:     # in the order of the model before the limit (rebuild)
            end = dict(zip(list(h2[j]["parameters"]) + fixed,
                           list(geo["theta_end"]) + fixed_log))
            geo["theta_end"] = [end[n] for n in hier[n1 - 1 + j]["parameters"]]
        s["geodesic"] = geo
        s["parameters_left"] = list(s["parameters_left"]) + fixed
        s["n_parameters_left"] = len(s["parameters_left"])
        limits.append(s)
    map1 = {k: sp.sympify(v) for k, v in first["parameter_map"].items()}
    sub = {sp.Symbol(k): v for k, v in map1.items()}
    pmap = {k: v for k, v in map1.items() if k not in start}
    for k, v in second["parameter_map"].items():
        pmap[k] = sp.sympify(v).xreplace(sub)
    final = list(second["hierarchy"][-1]["parameters"]) + fixed
    # organ copies of a PERSONAL parameter left by the chain follow it again (fixed ratio to it):
    # otherwise a patient's value would no longer reach those organs (psma-pbrpk:
    # Rden_TumorRest sets the liver and GI receptor amounts; with the copies fixed at the
    # population value the TIA error reached 4 % for 3x-typical Rden_TumorRest)
    from calibration.priors import PERSONAL

    pers = set(PERSONAL.get(first.get("base_model", ""), ()))
    vals2 = {**{n: vals1[n] for n in fixed}, **dict(second["parameters"])}
    copies = {}
    for n in final:
        base = n.rsplit("_in_", 1)[0] if "_in_" in n else None
        if base in pers and base in vals2:
            copies[n] = [base, vals2[n] / vals2[base]]
    if copies:
        final = [n for n in final if n not in copies]
        for n in copies:
            vals2.pop(n)
        limits.append({
            "limit": f"retie {', '.join(copies)}", "kind": "retie", "copies": copies,
            "parameters": list(copies), "directions": [],
            "meaning": "organ copies of a personal parameter follow it again at their re-fitted "
                       "ratio (" + ", ".join(f"{n} = {r:.4g} {b}" for n, (b, r) in
                                          copies.items()) + "): the patient's value reaches "
                       "these organs as in the full model", "method": "symbolic",
            "effects": [], "new_parameter": None, "parameters_left": list(final),
            "n_parameters_left": len(final), "worst_error": hier[-1]["worst_error"],
            "worst_prediction": "", "geodesic": None, "time_s": 0.0})
        hier.append({"model": len(hier), "parameters": list(final),
                     "values": {n: vals2[n] for n in final}, "worst_error":
                     hier[-1]["worst_error"], "eigenvalues": None})
    out = dict(first)
    out.update(
        produced={**second.get("produced", {}), "continues": first.get("produced", {}),
                  "composed_with": "calibration.mbam.library.compose"},
        engine={"stages": [first.get("engine", {}), second.get("engine", {})]},
        n_parameters=len(final),
        parameters=vals2,
        mbam_parameters=final,
        personal=list(first.get("personal") or []),
        limits=limits,
        rejected=list(first.get("rejected", [])) + list(second.get("rejected", [])),
        parameter_map={k: sp.sstr(v) for k, v in pmap.items() if k in final},
        hierarchy=hier,
        status=second["status"],
        time_s=float(first.get("time_s", 0.0)) + float(second.get("time_s", 0.0)),
        tolerance=max(float(first.get("tolerance", 0)), float(second.get("tolerance", 0))),
        model=second["model"],
        n_model_parameters=second.get("n_model_parameters"),
    )
    return out


def finalize(src, dst, continues=None) -> dict:
    """rebuild + verify a REDUCED.json written by ``twin reduce`` and write it to ``dst``
    (atomically) with a ``finalized`` header; used to ship pbpk_models/library/reduced/."""
    import datetime
    import json
    import sys

    from calibration.mbam.io import read_reduced
    from pbpk_models.atomic import write_text_atomic

    doc = read_reduced(src)
    if continues is not None:
        doc = compose(read_reduced(continues), doc)
    doc = rebuild(doc)
    ver = verify(doc)
    doc["verified"] = ver
    doc["finalized"] = {
        "command": "python -m calibration.mbam.library finalize " + " ".join(sys.argv[2:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": str(src), "note": "chain re-applied symbolically with the current code "
        "(calibration.mbam.library.rebuild), verified by the reduced model's own solve"}
    write_text_atomic(dst, json.dumps(doc, indent=1, allow_nan=False))
    return ver


if __name__ == "__main__":
    import sys

    argv = sys.argv[1:]
    cont = None
    if "--continues" in argv:
        i = argv.index("--continues")
        cont = argv[i + 1] if i + 1 < len(argv) else None
        argv = argv[:i] + argv[i + 2:]
    if len(argv) != 3 or argv[0] != "finalize" or ("--continues" in sys.argv and not cont):
        raise SystemExit("usage: python -m calibration.mbam.library finalize SRC.json DST.json "
                         "[--continues FIRST.json]  (--continues: SRC was reduced from "
                         "FIRST.json's model; the shipped chain is FIRST's limits then SRC's)")
    import jax

    jax.config.update("jax_enable_x64", True)
    v = finalize(argv[1], argv[2], cont)
    print(f"verified: worst decision error {100 * v['worst_error']:.3g}% "
          f"({v['worst_prediction']})")
