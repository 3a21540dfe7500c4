"""ModelSpec <-> JSON (the ``model`` entry of REDUCED.json).

Expressions are stored as SymPy text with every parameter symbol written ``S<i>``, ``<i>`` an
index into the ``symbols`` table (parameter names such as ``k_on[psma-11]`` are not valid Python
names). They are read back with :func:`sympy.parse_expr` (which evaluates Python text: read
REDUCED.json files you made or trust, like any model file).
"""

from __future__ import annotations

import math

import sympy as sp

from pbpk_models.errors import InputError
from pbpk_models.spec import Binding, Compartment, ModelSpec, Parameter, Transfer


class _Table:
    def __init__(self, names=()):
        self.names = list(names)

    def enc(self, expr):
        if expr is None:
            return None
        e = sp.sympify(expr)
        subs = {}
        for s in sorted(e.free_symbols, key=lambda s: s.name):
            if s.name not in self.names:
                self.names.append(s.name)
            subs[s] = sp.Symbol(f"S{self.names.index(s.name)}")
        return sp.sstr(e.xreplace(subs), full_prec=True)

    def dec(self, text):
        if text is None:
            return None
        local = {f"S{i}": sp.Symbol(n) for i, n in enumerate(self.names)}
        try:
            return sp.parse_expr(str(text), local_dict=local)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a malformed file
            raise InputError(f"malformed expression {text!r} in the model file: {exc}") from None


def _param(p: Parameter) -> dict:
    return {"name": p.name, "value": p.value, "unit": p.unit, "description": p.description,
            "source": p.source, "kind": p.kind, "lower": p.lower,
            "upper": None if math.isinf(p.upper) else p.upper}


def _unparam(d: dict) -> Parameter:
    return Parameter(d["name"], float(d["value"]), d.get("unit", ""), d.get("description", ""),
                     d.get("source", ""), d.get("kind", "physiological"),
                     float(d.get("lower", 0.0)),
                     math.inf if d.get("upper") is None else float(d["upper"]))


def spec_to_dict(spec: ModelSpec) -> dict:
    t = _Table()
    out = {
        "name": spec.name, "variant": spec.variant, "description": spec.description,
        "parameters": [_param(p) for p in spec.parameters],
        "derived": {k: t.enc(v) for k, v in spec.derived.items()},
        "compartments": [{"name": c.name, "region": c.region, "volume": t.enc(c.volume),
                          "kind": c.kind} for c in spec.compartments],
        "transfers": [{"source": x.source, "target": x.target, "rate": t.enc(x.rate),
                       "species": x.species, "process": x.process} for x in spec.transfers],
        "bindings": [{"free": b.free, "bound": b.bound, "receptor": t.enc(b.receptor),
                      "volume": t.enc(b.volume), "k_on": t.enc(b.k_on), "k_off": t.enc(b.k_off),
                      "organ": b.organ} for b in spec.bindings],
        "sinks": list(spec.sinks),
        "dosing_compartment": spec.dosing_compartment,
        "principal_ligand": spec.principal_ligand,
        "ligand_parameters": sorted(spec.ligand_parameters),
        "ligands": {lig: {k: _param(p) for k, p in table.items()}
                    for lig, table in spec.ligands.items()},
        "no_decay": sorted(spec.no_decay),
        "decay_overrides": dict(spec.decay_overrides),
        "region_volumes": {k: t.enc(v) for k, v in spec.region_volumes.items()},
        "densities": dict(spec.densities),
        "default_radiopharmaceutical": spec.default_radiopharmaceutical,
        "radiopharmaceutical_ligands": dict(spec.radiopharmaceutical_ligands),
        "references": list(spec.references),
        "notes": list(spec.notes),
    }
    out["symbols"] = t.names
    return out


def spec_from_dict(d: dict) -> ModelSpec:
    try:
        t = _Table(d["symbols"])
        return ModelSpec(
            name=d["name"], variant=d["variant"], description=d.get("description", ""),
            parameters=tuple(_unparam(p) for p in d["parameters"]),
            derived={k: t.dec(v) for k, v in d["derived"].items()},
            compartments=tuple(Compartment(c["name"], c["region"], t.dec(c["volume"]),
                                           c.get("kind", "")) for c in d["compartments"]),
            transfers=tuple(Transfer(x["source"], x["target"], t.dec(x["rate"]),
                                     x.get("species", "all"), x.get("process", ""))
                            for x in d["transfers"]),
            bindings=tuple(Binding(b["free"], b["bound"], t.dec(b["receptor"]),
                                   t.dec(b["volume"]), t.dec(b["k_on"]), t.dec(b["k_off"]),
                                   b.get("organ", "")) for b in d["bindings"]),
            sinks=tuple(d["sinks"]), dosing_compartment=d["dosing_compartment"],
            principal_ligand=d["principal_ligand"],
            ligand_parameters=frozenset(d["ligand_parameters"]),
            ligands={lig: {k: _unparam(p) for k, p in table.items()}
                     for lig, table in d.get("ligands", {}).items()},
            no_decay=frozenset(d.get("no_decay", ())),
            decay_overrides={k: float(v) for k, v in d.get("decay_overrides", {}).items()},
            region_volumes={k: t.dec(v) for k, v in d.get("region_volumes", {}).items()},
            densities={k: float(v) for k, v in d.get("densities", {}).items()},
            default_radiopharmaceutical=d.get("default_radiopharmaceutical", ""),
            radiopharmaceutical_ligands=dict(d.get("radiopharmaceutical_ligands", {})),
            references=tuple(d.get("references", ())), notes=tuple(d.get("notes", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed model in the reduced-model file: {exc!r}") from None
