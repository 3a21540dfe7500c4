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
    from calibration.mbam.limits import apply_limit
    from calibration.mbam.reduce import _with_values, meaning_text
    from calibration.mbam.serialize import spec_to_dict
    from pbpk_models.library import build_spec

    doc = refresh(doc)
    spec = full_spec or build_spec(doc["base_model"], doc["base_variant"])
    for k, s in enumerate(doc["limits"]):
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


def finalize(src, dst) -> dict:
    """rebuild + verify a REDUCED.json written by ``twin reduce`` and write it to ``dst``
    (atomically) with a ``finalized`` header; used to ship pbpk_models/library/reduced/."""
    import datetime
    import json
    import sys

    from calibration.mbam.io import read_reduced
    from pbpk_models.atomic import write_text_atomic

    doc = rebuild(read_reduced(src))
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

    if len(sys.argv) != 4 or sys.argv[1] != "finalize":
        raise SystemExit("usage: python -m calibration.mbam.library finalize SRC.json DST.json")
    import jax

    jax.config.update("jax_enable_x64", True)
    v = finalize(sys.argv[2], sys.argv[3])
    print(f"verified: worst decision error {100 * v['worst_error']:.3g}% "
          f"({v['worst_prediction']})")
