"""The MBAM loop: geodesic -> limit -> symbolic reduction -> re-fit, repeated.

Each round (Transtrum & Qiu, PRL 2014;113:098701; steps in shared/data/methods/mbam.md):
1. r(theta) of the current model at its current parameters, weighted with the *full* model's
   reference predictions (so every model in the chain is judged against the same target);
2. geodesic from there along the sloppiest direction to a boundary; the limit read off it;
3. the limit applied to the ModelSpec (:func:`calibration.mbam.limits.apply_limit`);
4. the reduced model re-fitted to the full model's predictions by the same least squares as
   :func:`calibration.fit.fit` (scipy trust-region ``least_squares`` with the exact forward-mode
   Jacobian), starting from the boundary point;
5. accepted if its worst relative prediction error (observations and preserved TIA) is within
   ``tolerance``; otherwise the previous model is final.
The chain (limits, meanings, parameters left, errors, spectra) is a :class:`Hierarchy`, saved as
REDUCED.json, which is itself a model (:func:`calibration.mbam.io.load_reduced`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from calibration.mbam.geometry import cached_least_squares_fns, geodesic, identify_limit
from calibration.mbam.limits import apply_limit
from calibration.mbam.predictions import Protocol, prediction_map
from pbpk_models.errors import InputError, ModelError


@dataclass
class Hierarchy:
    """Models from full to reduced; ``steps[k]`` the limit that led to model k+1."""

    base_model: str
    base_variant: str
    full_names: tuple
    protocol: Protocol
    tolerance: float
    reference: np.ndarray
    labels: tuple
    specs: list = field(default_factory=list)
    names: list = field(default_factory=list)       # MBAM parameter names per model
    values: list = field(default_factory=list)      # {name: value} per model
    errors: list = field(default_factory=list)      # worst relative error per model
    spectra: list = field(default_factory=list)     # eigenvalues of g at each model
    steps: list = field(default_factory=list)
    parameter_map: dict = field(default_factory=dict)  # name -> sympy expr of full parameters
    status: str = "running"
    time_s: float = 0.0
    extra: dict = field(default_factory=dict)   # engine diagnostics, provenance header

    @property
    def spec(self):
        return self.specs[-1]

    @property
    def n_parameters(self) -> int:
        return len(self.names[-1])


def _with_values(spec, values: dict, source: str):
    """``spec`` with new values; a ligand-specific parameter's copies for other ligands
    (``spec.ligands``) are scaled by the same factor (they keep their ratio to it, as the
    prediction map varies them)."""
    import dataclasses

    old = {p.name: p.value for p in spec.parameters}
    params = tuple(dataclasses.replace(p, value=float(values[p.name]), source=source)
                   if p.name in values else p for p in spec.parameters)
    ligands = {}
    for lig, table in spec.ligands.items():
        t = {}
        for k, p in table.items():
            if k in values and old.get(k, 0) > 0:
                p = dataclasses.replace(p, value=p.value * float(values[k]) / old[k])
            t[k] = p
        ligands[lig] = t
    return spec.replace(parameters=params, ligands=ligands)


def _errors(pred, ref):
    scale = np.maximum(np.abs(ref), 1e-12 + 1e-9 * np.max(np.abs(ref)))
    return np.abs(np.asarray(pred) - ref) / scale


def refit(spec, protocol, names, start: dict, reference, max_nfev: int = 50):
    """Least squares of the model's predictions to ``reference`` (the full model's), in log
    space, from ``start``. Returns ({name: value}, raw predictions)."""
    import jax
    import jax.numpy as jnp
    from scipy.optimize import least_squares

    pm = prediction_map(spec, protocol, names, values=start, reference=reference,
                        allow_empty=True)
    target = np.asarray(reference) / np.asarray(pm.scale)
    if not names:
        pred = np.asarray(jax.jit(pm.predict)(jnp.zeros(0)))
        return {}, pred
    fn = jax.jit(lambda th: (pm.r(th), jax.jacfwd(pm.r)(th)))
    fun, jac = cached_least_squares_fns(lambda th: fn(jnp.asarray(th)), target)

    th0 = np.asarray(pm.theta0, float)
    res = least_squares(fun, th0, jac=jac, method="trf",
                        x_scale="jac", max_nfev=max_nfev, xtol=1e-10, ftol=1e-10, gtol=1e-10)
    theta = res.x
    pred = np.asarray(jax.jit(pm.predict)(jnp.asarray(theta)))
    return dict(zip(names, map(float, np.exp(theta)))), pred


def reduce_model(spec, protocol: Protocol, names=None, *, tolerance: float = 0.02,
                 max_rounds: int | None = None, base_model: str | None = None,
                 base_variant: str | None = None, geodesic_options=None, callback=None,
                 values=None) -> Hierarchy:
    """Reduce ``spec`` for ``protocol`` over the MBAM parameters ``names``.

    ``names``: default the protocol's ``parameters``, else the model's declared personal
    parameters (:data:`calibration.priors.PERSONAL`). ``callback(hierarchy)`` is called after
    each accepted step (the CLI writes the partial REDUCED.json there). The hierarchy's
    ``status`` says why the loop stopped: 'complete' (no parameter left), 'tolerance' (the next
    reduction would exceed it), 'no limit' (the geodesic found no stable limit), 'failed: ...'
    (a geodesic or solve failed; the models reached so far are kept).
    """
    from calibration.priors import PERSONAL

    t_start = time.perf_counter()
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise InputError(f"tolerance must be a positive number, got {tolerance}")
    if names is None:
        names = protocol.parameters or PERSONAL.get(base_model or spec.name, ())
    names = tuple(dict.fromkeys(protocol.resolve_parameters(spec, names)))
    if not names:
        raise InputError(f"model {spec.name} has no parameters to reduce: no personal "
                         f"parameters are declared; name them (--parameters NAME,...)")
    import dataclasses

    from calibration.mbam.predictions import curve_times_for

    # the geometry-only curves are fixed for the whole chain (the reference's shape)
    protocol = dataclasses.replace(protocol, curve_times_h=curve_times_for(protocol, len(names)))
    pm = prediction_map(spec, protocol, names, values=values)
    ref = pm.__dict__["reference"]
    nd = pm.n_decision
    start_values = {n: float(v) for n, v in zip(names, np.exp(pm.theta0))}
    h = Hierarchy(base_model or spec.name, base_variant or spec.variant, names, protocol,
                  tolerance, ref, pm.labels)
    h.specs.append(_with_values(spec, start_values, "MBAM start")
                   if values else spec)
    h.names.append(names)
    h.values.append(start_values)
    h.errors.append(0.0)
    h.parameter_map = {n: sp.Symbol(n) for n in names}
    geo_opts = dict(geodesic_options or {})
    rounds = 0
    while True:
        cur_spec, cur_names, cur_vals = h.specs[-1], h.names[-1], h.values[-1]
        if not cur_names:
            h.status = "complete"
            break
        if max_rounds is not None and rounds >= max_rounds:
            h.status = "max rounds"
            break
        rounds += 1
        try:
            pm = prediction_map(cur_spec, protocol, cur_names, values=cur_vals, reference=ref)
            geo = geodesic(pm.r, pm.theta0, **geo_opts)
            h.spectra.append(np.sort(geo.eigenvalues0)[::-1].tolist())
        except (ModelError, FloatingPointError, ValueError) as exc:
            h.status = f"failed: geodesic at model {len(h.specs) - 1}: {exc}"
            break
        if geo.reason == "failed" or geo.n_steps == 0:
            h.status = (f"failed: the geodesic from model {len(h.specs) - 1} failed "
                        f"({'; '.join(geo.notes)}); the models reached so far are kept")
            break
        limit = identify_limit(geo, cur_names)
        if limit is None:
            h.status = (f"no limit: the geodesic ({geo.reason}, {geo.n_steps} steps) found no "
                        f"stable limit; try more steps")
            break
        boundary = dict(zip(cur_names, map(float, np.exp(geo.theta[-1]))))
        try:
            red = apply_limit(cur_spec, limit, cur_vals, boundary)
            new_names = [n for n in cur_names if n not in red.removed]
            start = {n: boundary[n] for n in new_names}
            if red.new_parameter:
                new_names.append(red.new_parameter[0])
                start[red.new_parameter[0]] = red.new_parameter[1]
            new_vals, pred = refit(red.spec, protocol, tuple(new_names), start, ref)
        except (ModelError, InputError) as exc:
            h.status = f"failed: applying {limit.describe()}: {exc}"
            break
        err = _errors(pred[:nd], ref[:nd])   # acceptance: the decision entries only
        worst = float(np.max(err)) if err.size else 0.0
        if not np.isfinite(worst) or worst > tolerance:
            h.status = (f"tolerance: the next limit ({limit.describe()}) would give a worst "
                        f"prediction error of {worst:.3g} > {tolerance:g}")
            h.steps.append({**_step_record(limit, red, geo, worst, new_names, err, h.labels),
                            "rejected": True})
            break
        # parameter map
        pmap = dict(h.parameter_map)
        if red.new_parameter:
            expr = sp.sympify(red.new_parameter[2]).xreplace(pmap)
            pmap[red.new_parameter[0]] = expr
        for n in red.removed:
            pmap.pop(n, None)
        h.parameter_map = pmap
        h.specs.append(_with_values(red.spec, new_vals, "MBAM re-fit to the full model"))
        h.names.append(tuple(new_names))
        h.values.append(new_vals)
        h.errors.append(worst)
        h.steps.append(_step_record(limit, red, geo, worst, new_names, err, h.labels))
        h.time_s = time.perf_counter() - t_start
        if callback is not None:
            callback(h)
    h.time_s = time.perf_counter() - t_start
    return h


def _base_name(n: str) -> str:
    return n.split("[")[0]


def _hint(kind: str, name: str, up: bool) -> str:
    """Physiological meaning of one parameter going to 0 (up False) or infinity (up True)."""
    for sep, op in (("_times_", "*"), ("_over_", "/"), ("_eq_", "=")):
        if sep in name:
            a, b = name.split(sep, 1)
            inner = _hint(kind, a, up) if sep != "_eq_" else ""
            return (f"the combination {a} {op} {b} -> {'inf' if up else '0'}"
                    + (f" ({inner})" if inner else ""))
    organ = name.split("_", 1)[1] if "_" in name else ""
    if "_in_" in name:      # an organ's copy of a shared parameter (library.untie_doc)
        organ = name.rsplit("_in_", 1)[1]
    if name.startswith("lambdaRel"):
        return (f"{organ}: internalised ligand released at once (no retention after "
                f"internalisation)" if up else
                f"{organ}: irreversible trapping (no release of internalised ligand)")
    if name.startswith("lambdaIntern"):
        return (f"{organ}: bound ligand internalised at once" if up else
                f"{organ}: no internalisation (retention by receptor binding only)")
    if name.startswith("kPS") or name.startswith("PS"):
        return (f"{organ}: flow-limited (capillary exchange no longer limits uptake)" if up
                else f"{organ}: capillary wall impermeable (no extravasation)")
    if name.startswith("fF") or (name.startswith("f_") and organ):
        return (f"{organ}: perfusion not limiting (permeability-limited uptake)" if up else
                f"{organ}: perfusion negligible for the protocol")
    if name.startswith("Rden"):
        return (f"{organ}: receptor excess, binding linear (no saturation)" if up else
                f"{organ}: non-specific (no receptor binding)")
    if name == "TER_Kidney":
        return "renal filtration instantaneous" if up else "no renal filtration"
    if name == "phi":
        return "all filtered" if up else "filtered fraction negligible"
    if name == "f_exc":
        return "all filtrate excreted" if up else "filtrate reabsorbed"
    if name == "k_on":
        return "association instantaneous" if up else "no association"
    if name == "k_off":
        return "dissociation instantaneous" if up else "binding irreversible"
    return ""


def meaning(limit, red, spec=None) -> str:
    """Physiological meaning of a limit, from the parameters and the structural effects."""
    return meaning_text(limit, list(red.effects))


def meaning_text(limit, effects) -> str:
    text = limit.describe()
    names = [_base_name(n) for n in limit.names]
    hint = ""
    if limit.kind == "ratio" and {"k_on", "k_off"} <= set(names):
        hint = "equilibrium binding (fast association and dissociation at fixed K_D)"
    elif limit.kind == "product" and {"phi", "TER_Kidney"} <= set(names):
        hint = ("only the filtered clearance phi * GFR is determined: filtration fraction and "
                "filtration rate are one parameter")
    elif limit.kind in ("zero", "infinity"):
        hint = _hint(limit.kind, names[0], limit.kind == "infinity")
    elif limit.kind in ("ratio", "product"):
        parts = [_hint("", n, d > 0) for n, d in zip(names, limit.directions)]
        parts = [p for p in parts if p]
        comb = "ratio" if limit.kind == "ratio" else "product"
        hint = (f"only the {comb} {names[0]} {'/' if comb == 'ratio' else '*'} {names[1]} is "
                f"determined" + (f" ({'; '.join(parts)})" if parts else ""))
    elif limit.kind == "equal":
        hint = "the two rates cannot be told apart: one rate"
    parts = [p for p in (hint, "; ".join(effects)) if p]
    return f"{text}: {' | '.join(parts)}" if parts else text


def _limit_record(limit, red, worst, new_names, err, labels) -> dict:
    """The part of a step's record shared by both engines: the limit, its meaning and result."""
    i = int(np.argmax(err)) if len(err) else 0
    return {
        "limit": limit.describe(), "kind": limit.kind, "parameters": list(limit.names),
        "directions": list(limit.directions), "meaning": meaning(limit, red),
        "method": red.method, "effects": list(red.effects),
        "new_parameter": (None if red.new_parameter is None else
                          {"name": red.new_parameter[0], "value": red.new_parameter[1],
                           "expression": red.new_parameter[2]}),
        "parameters_left": list(new_names), "n_parameters_left": len(new_names),
        "worst_error": worst, "worst_prediction": labels[i] if len(err) else "",
    }


def _step_record_affine(limit, red, geo, worst, new_names, err, labels, k, dt) -> dict:
    rec = _limit_record(limit, red, worst, new_names, err, labels)
    rec["geodesic"] = {"reason": geo["reason"], "steps": int(geo["n_steps"]), "direction": k,
                       "sigma_min_rel_end": float(geo["sigma"][-1]),
                       "theta_end": geo["u"][-1].tolist()}
    rec["time_s"] = dt
    return rec


def _step_record(limit, red, geo, worst, new_names, err, labels) -> dict:
    rec = _limit_record(limit, red, worst, new_names, err, labels)
    rec["geodesic"] = {"reason": geo.reason, "steps": geo.n_steps,
                       "sigma_min_end": (float(geo.sigma_min[-1]) if len(geo.sigma_min)
                                         else None),
                       "theta_end": geo.theta[-1].tolist()}
    return rec


