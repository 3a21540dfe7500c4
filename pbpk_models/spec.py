"""The declarative model language: compartments, transfers, receptor binding, decay.

A :class:`ModelSpec` describes a radioligand PBPK model once, symbolically (SymPy expressions of
named parameters), in canonical units (h, mL, nmol). It is compiled for the radiopharmaceuticals
of a regimen into a JAX vector field (:mod:`pbpk_models.model`), and it can be rewritten
symbolically (model reduction replaces processes and parameters).

Species. Every compartment holds an amount (nmol) of every species: one *labelled* species per
radiopharmaceutical (``lu177-psma-617``) and one *unlabelled* species per ligand (``psma-617``).
Physical decay turns a labelled species into the unlabelled species of its ligand in every
compartment: decayed ligand stays where it is and still competes for receptors.

Processes.
- :class:`Transfer`: first-order transport ``source -> target`` at ``rate`` (1/h) times the source
  amount (blood flow, capillary exchange, filtration, excretion, reabsorption, internalisation,
  release). ``target`` may be a sink (urine, released), which accumulates what leaves the body.
- :class:`Binding`: saturable binding of every species in ``free`` (a compartment of volume
  ``volume`` mL) to one receptor pool of ``receptor`` nmol shared by all species and ligands:
  ``flux_s = k_on_s / V * free_s * (R0 - sum_s' bound_s') - k_off_s * bound_s``.

Ligand-specific parameters (affinity, internalisation, release, filtered fraction) have a bare
name for the model's principal ligand and ``NAME[ligand]`` for any other ligand, so that one
patient's physiology is shared by the imaging and the therapy ligand.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Mapping

import sympy as sp

from pbpk_models.errors import InputError, ModelError

SPECIES_FILTERS = ("all", "labelled", "unlabelled")


@dataclass(frozen=True)
class Parameter:
    """A free parameter of a model, its default value in canonical units, and its source."""

    name: str
    value: float
    unit: str
    description: str = ""
    source: str = ""
    kind: str = "physiological"  # physiological | ligand | structural
    lower: float = 0.0
    upper: float = math.inf

    def __post_init__(self):
        if not (math.isfinite(self.value)):
            raise ModelError(f"parameter {self.name}: value must be finite, got {self.value}")


@dataclass(frozen=True)
class Compartment:
    """A well-mixed space. ``volume`` (mL) is None for amount-only pools (bound, internalised)."""

    name: str
    region: str
    volume: sp.Expr | None = None
    kind: str = ""


@dataclass(frozen=True)
class Transfer:
    """First-order transport of ``species`` from ``source`` to ``target`` at ``rate`` (1/h)."""

    source: str
    target: str
    rate: sp.Expr
    species: str = "all"
    process: str = ""

    def __post_init__(self):
        if self.species not in SPECIES_FILTERS:
            raise ModelError(f"transfer species must be one of {SPECIES_FILTERS}")


@dataclass(frozen=True)
class Binding:
    """Saturable receptor binding of free ligand in ``free`` into ``bound``.

    ``receptor``: total receptor amount R0 (nmol); ``volume``: volume of ``free`` (mL);
    ``k_on`` (mL/nmol/h) and ``k_off`` (1/h) are expressions of ligand-specific parameters.
    """

    free: str
    bound: str
    receptor: sp.Expr
    volume: sp.Expr
    k_on: sp.Expr
    k_off: sp.Expr
    organ: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """A complete model description. Immutable; derive variants with :meth:`replace`."""

    name: str
    variant: str
    description: str
    parameters: tuple[Parameter, ...]
    derived: Mapping[str, sp.Expr]
    compartments: tuple[Compartment, ...]
    transfers: tuple[Transfer, ...]
    bindings: tuple[Binding, ...]
    sinks: tuple[str, ...]
    dosing_compartment: str
    principal_ligand: str
    ligand_parameters: frozenset
    # per non-principal ligand: {bare parameter name: Parameter with the ligand's value}
    ligands: Mapping[str, Mapping[str, Parameter]] = field(default_factory=dict)
    # compartments in which the labelled species does not decay (a published defect)
    no_decay: frozenset = frozenset()
    # nuclide -> decay constant (1/h) overriding radioactivedecay (a published value)
    decay_overrides: Mapping[str, float] = field(default_factory=dict)
    # region -> tissue volume expression (mL) for regions that have a mass
    region_volumes: Mapping[str, sp.Expr] = field(default_factory=dict)
    # region -> density (g/mL) used for its mass
    densities: Mapping[str, float] = field(default_factory=dict)
    default_radiopharmaceutical: str = ""
    # radiopharmaceutical -> model ligand where the label changes the ligand's behaviour
    # (e.g. 'ga68-dotatate' -> 'ga-dotatate': the metal changes sst2 affinity tenfold)
    radiopharmaceutical_ligands: Mapping[str, str] = field(default_factory=dict)
    references: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    # -- structure ---------------------------------------------------------------------------
    def __post_init__(self):
        names = [c.name for c in self.compartments]
        if len(set(names)) != len(names):
            raise ModelError(f"{self.name}: duplicate compartment names")
        known = set(names) | set(self.sinks)
        for t in self.transfers:
            if t.source not in names or t.target not in known:
                raise ModelError(f"{self.name}: transfer {t.source}->{t.target} names an unknown "
                                 f"compartment")
        for b in self.bindings:
            if b.free not in names or b.bound not in names:
                raise ModelError(f"{self.name}: binding {b.free}->{b.bound} unknown compartment")
        if self.dosing_compartment not in names:
            raise ModelError(f"{self.name}: dosing compartment {self.dosing_compartment} unknown")
        pnames = [p.name for p in self.parameters]
        if len(set(pnames)) != len(pnames):
            raise ModelError(f"{self.name}: duplicate parameter names")
        clash = set(pnames) & set(self.derived)
        if clash:
            raise ModelError(f"{self.name}: names both free and derived: {sorted(clash)}")

    @property
    def regions(self) -> tuple[str, ...]:
        seen = []
        for c in self.compartments:
            if c.region not in seen:
                seen.append(c.region)
        return tuple(seen)

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    # -- parameters --------------------------------------------------------------------------
    def all_parameters(self) -> tuple[Parameter, ...]:
        """Free parameters including the ``NAME[ligand]`` copies of secondary ligands."""
        out = list(self.parameters)
        for lig, table in self.ligands.items():
            for p in self.parameters:
                if p.name in self.ligand_parameters:
                    q = table.get(p.name)
                    if q is None:
                        q = dataclasses.replace(
                            p, source=f"assumed equal to the {self.principal_ligand} value "
                                      f"(no published value for {lig}); {p.source}")
                    out.append(dataclasses.replace(q, name=f"{p.name}[{lig}]", kind="ligand"))
        return tuple(out)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.all_parameters())

    def parameter(self, name: str) -> Parameter:
        for p in self.all_parameters():
            if p.name == name:
                return p
        raise InputError(self._unknown_parameter_message(name))

    def _unknown_parameter_message(self, name: str) -> str:
        import difflib

        names = list(self.parameter_names) + list(self.derived)
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return (f"model {self.name} has no parameter {name!r}{hint} "
                f"(list them with `twin simulate --model {self.name} --list-parameters`)")

    def with_values(self, values: Mapping[str, float]) -> "ModelSpec":
        """New spec with changed default values (canonical units).

        Setting a derived parameter turns it into a free parameter with that value (the
        expression no longer applies).
        """
        params = {p.name: p for p in self.parameters}
        derived = dict(self.derived)
        ligands = {k: dict(v) for k, v in self.ligands.items()}
        for name, value in values.items():
            value = float(value)
            if not math.isfinite(value):
                raise InputError(f"parameter {name}: value must be finite, got {value}")
            if name in params:
                p = params[name]
                if value < p.lower or value > p.upper:
                    raise InputError(f"parameter {name}={value:g} {p.unit} is outside its "
                                     f"allowed range [{p.lower:g}, {p.upper:g}]")
                params[name] = dataclasses.replace(p, value=value, source="set by the user")
            elif name in derived:
                if value < 0:
                    raise InputError(f"parameter {name} must not be negative, got {value:g}")
                derived.pop(name)
                params[name] = Parameter(name, value, unit="(as derived)",
                                         description=f"fixed by the user; was derived",
                                         source="set by the user")
            elif "[" in name and name.endswith("]"):
                base, lig = name[:-1].split("[", 1)
                if lig not in ligands or base not in self.ligand_parameters:
                    raise InputError(self._unknown_parameter_message(name))
                p = ligands[lig].get(base) or params[base]
                if value < 0:
                    raise InputError(f"parameter {name} must not be negative, got {value:g}")
                ligands[lig][base] = dataclasses.replace(p, value=value, source="set by the user")
            else:
                raise InputError(self._unknown_parameter_message(name))
        return self.replace(parameters=tuple(params.values()), derived=derived, ligands=ligands)

    def resolved_derived(self) -> dict[str, sp.Expr]:
        """Derived parameters as expressions of free parameters only (substituted recursively)."""
        out: dict[str, sp.Expr] = {}
        pending = dict(self.derived)
        for _ in range(len(pending) + 1):
            progressed = False
            for name, expr in list(pending.items()):
                deps = {s.name for s in expr.free_symbols}
                unresolved = deps & set(pending)
                if not unresolved:
                    out[name] = expr.xreplace({sp.Symbol(k): v for k, v in out.items()
                                           if k in deps})
                    pending.pop(name)
                    progressed = True
            if not pending:
                break
            if not progressed:
                raise ModelError(f"{self.name}: circular derived parameters {sorted(pending)}")
        return out

    def default_values(self) -> dict[str, float]:
        return {p.name: p.value for p in self.all_parameters()}

    def evaluate(self, expr: sp.Expr, values: Mapping[str, float] | None = None) -> float:
        """Numerical value of an expression at the default (or given) parameter values."""
        vals = self.default_values()
        if values:
            vals.update(values)
        resolved = self.resolved_derived()
        e = sp.sympify(expr).xreplace({sp.Symbol(k): v for k, v in resolved.items()})
        return float(e.xreplace({sp.Symbol(k): v for k, v in vals.items()}))

    def derived_value(self, name: str, values: Mapping[str, float] | None = None) -> float:
        if name in self.derived:
            return self.evaluate(sp.Symbol(name), values)
        return self.parameter(name).value if not values or name not in values else values[name]

    def substitute_ligand(self, expr: sp.Expr, ligand: str) -> sp.Expr:
        """Rename ligand-specific symbols in ``expr`` for a non-principal ligand."""
        if ligand == self.principal_ligand:
            return expr
        if ligand not in self.ligands:
            raise InputError(f"model {self.name} knows no ligand {ligand!r}; known: "
                             f"{[self.principal_ligand, *self.ligands]}")
        resolved = self.resolved_derived()
        e = sp.sympify(expr)
        # expand derived symbols that depend on ligand parameters, then rename
        for _ in range(3):
            e = e.xreplace({sp.Symbol(k): v for k, v in resolved.items()
                        if sp.Symbol(k) in e.free_symbols
                        and {s.name for s in v.free_symbols} & self.ligand_parameters})
        return e.xreplace({sp.Symbol(n): sp.Symbol(f"{n}[{ligand}]") for n in self.ligand_parameters})

    @property
    def known_ligands(self) -> tuple[str, ...]:
        return (self.principal_ligand, *self.ligands)

    def compartment(self, name: str) -> Compartment:
        for c in self.compartments:
            if c.name == name:
                return c
        raise ModelError(f"{self.name}: no compartment {name}")

    def region_compartments(self, region: str) -> tuple[str, ...]:
        return tuple(c.name for c in self.compartments if c.region == region)


def sym(name: str) -> sp.Symbol:
    """The SymPy symbol of a parameter (plain symbols, so that substitution by name works)."""
    return sp.Symbol(name)
