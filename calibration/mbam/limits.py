"""Apply a manifold-boundary limit to the symbolic model (a ModelSpec), giving a ModelSpec.

Every limit is reduced to one scalar q -> infinity: p -> inf (q = p), p -> 0 (p = 1/q); a pair
with a finite ratio (p1 = c p2, then p2 -> inf or 0, c a new parameter); a pair with a finite
product (p1 = c / p2, p2 -> 0); a fold p2 = p1 (no limit, a substitution). Then every expression
of the spec (derived parameters, rates, binding terms, volumes) is replaced by its limit
(``sympy.limit``, all symbols positive):

- finite limits replace the expression (a rate -> 0 drops its transfer: the process is gone; a
  receptor amount -> 0 drops the binding: the organ becomes non-specific);
- a receptor amount -> infinity with finite k_on, k_off, volume: binding is linear (free
  receptors R0 - B ~ R0) and becomes two transfers, free -> bound at k_on R0 / V (fast) and
  bound -> free at k_off;
- rates -> infinity are fast processes, each ~ c_i q. The compartments connected by fast
  transfers equilibrate instantly: the fast generator's stationary distribution f (solved
  symbolically) gives each member's share of the group's amount (quasi-equilibrium when the
  exchange is two-way, e.g. permeability -> inf merges vascular and interstitial pools: a
  flow-limited organ; quasi-steady state when it is one-way, the emptied member's share is 0 and
  its inflows go straight on). The group becomes one compartment; slow transfers out of member j
  leave at rate x f_j; a binding on member j's free ligand sees f_j of the pool (volume V / f_j).
- Anything the language cannot express exactly (e.g. k_on, k_off -> inf at fixed K_D: equilibrium
  binding needs an algebraic constraint the compartment language does not have; fast groups
  spanning several regions or sinks) falls back to the documented numerical substitution: q is
  fixed at a large value (``NUMERIC_FACTOR`` beyond the geodesic's end point), removing the
  parameter while staying numerically at the limit. The result says which method was used.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import sympy as sp

from calibration.mbam.geometry import Limit
from pbpk_models.errors import InputError, ModelError
from pbpk_models.spec import Binding, Compartment, ModelSpec, Parameter, Transfer

# The numerical fallback fixes q at this factor beyond the geodesic's end (assumption: the
# geodesic ends where the predictions no longer depend on q within the singular-value
# threshold; 100 x further is deep inside the limit and still well conditioned for Rodas5P).
NUMERIC_FACTOR = 100.0
_Q = sp.Symbol("q_mbam", positive=True)


@dataclass
class Reduction:
    spec: ModelSpec
    method: str                      # 'symbolic' | 'numerical'
    effects: list = field(default_factory=list)
    removed: tuple = ()              # parameters removed from the MBAM set
    new_parameter: tuple | None = None   # (name, value, expression in old parameters)


class _NotSymbolic(Exception):
    pass


def _pos(expr):
    """expr with every symbol positive (for limits), and the map back."""
    e = sp.sympify(expr)
    fw = {s: sp.Symbol(s.name, positive=True) for s in e.free_symbols if s != _Q}
    return e.xreplace(fw)


def _unpos(expr):
    return expr.xreplace({s: sp.Symbol(s.name) for s in expr.free_symbols})


def _lim(expr):
    e = _pos(expr)
    if _Q not in e.free_symbols:
        return expr
    L = sp.limit(e, _Q, sp.oo)
    if L.has(sp.nan) or L.has(sp.zoo) or isinstance(L, sp.AccumBounds):
        raise _NotSymbolic(f"no limit of {expr}")
    if L not in (sp.oo, -sp.oo) and (L.has(sp.oo) or L.has(-sp.oo)):
        # e.g. oo*sign(1/(1/20 - hematocrit/20)): sympy cannot tell the sign of a factor that
        # is positive for every physical value (haematocrit < 1). Every expression taken to
        # the limit here (rate, volume, receptor amount) is non-negative, so an unbounded
        # one diverges to +oo (before this, such a rate was not recognised as fast and a
        # fast two-way exchange was taken as one-way: the pool was emptied, not merged).
        return sp.oo
    return _unpos(L) if L not in (sp.oo, -sp.oo) else L


def _lead(expr):
    """c with expr ~ c q for q -> inf (finite, positive), else _NotSymbolic."""
    c = sp.limit(_pos(expr) / _Q, _Q, sp.oo)
    if c in (0, sp.oo, -sp.oo) or c.has(sp.nan) or c.has(sp.zoo):
        raise _NotSymbolic(f"{expr} does not grow linearly with the limit")
    return _unpos(c)


def _resolve_all(spec: ModelSpec) -> ModelSpec:
    """Spec with every derived parameter substituted into the expressions that use it."""
    res = spec.resolved_derived()

    def r(e):
        if e is None:
            return None
        e = sp.sympify(e)
        for _ in range(4):
            e = e.xreplace({sp.Symbol(k): v for k, v in res.items() if sp.Symbol(k) in
                            e.free_symbols})
        return e

    return spec.replace(
        derived=dict(res),
        compartments=tuple(dataclasses.replace(c, volume=r(c.volume)) for c in spec.compartments),
        transfers=tuple(dataclasses.replace(t, rate=r(t.rate)) for t in spec.transfers),
        bindings=tuple(dataclasses.replace(b, receptor=r(b.receptor), volume=r(b.volume),
                                           k_on=r(b.k_on), k_off=r(b.k_off))
                       for b in spec.bindings),
        region_volumes={k: r(v) for k, v in spec.region_volumes.items()})


def _drop_parameter(spec: ModelSpec, names) -> ModelSpec:
    names = set(names)
    ligands = {lig: {k: v for k, v in t.items() if k not in names}
               for lig, t in spec.ligands.items()}
    return spec.replace(parameters=tuple(p for p in spec.parameters if p.name not in names),
                        ligand_parameters=frozenset(spec.ligand_parameters - names),
                        ligands=ligands)


def _subs_all(spec: ModelSpec, subs: dict) -> ModelSpec:
    """Substitute symbols (ligand copies renamed too) in every expression."""
    def s(e):
        return None if e is None else sp.sympify(e).xreplace(subs)

    return spec.replace(
        derived={k: s(v) for k, v in spec.derived.items()},
        compartments=tuple(dataclasses.replace(c, volume=s(c.volume)) for c in spec.compartments),
        transfers=tuple(dataclasses.replace(t, rate=s(t.rate)) for t in spec.transfers),
        bindings=tuple(dataclasses.replace(b, receptor=s(b.receptor), volume=s(b.volume),
                                           k_on=s(b.k_on), k_off=s(b.k_off))
                       for b in spec.bindings),
        region_volumes={k: s(v) for k, v in spec.region_volumes.items()})


def _q_limit(spec: ModelSpec, effects: list) -> ModelSpec:
    """Take q -> inf in a spec whose expressions contain the symbol _Q (see module doc)."""
    spec = _resolve_all(spec)
    has = lambda e: e is not None and _Q in sp.sympify(e).free_symbols  # noqa: E731
    # plain expressions: volumes, derived, region volumes must stay finite and positive
    comps = []
    for c in spec.compartments:
        v = c.volume
        if has(v):
            v = _lim(v)
            if v in (sp.oo, 0):
                raise _NotSymbolic(f"the volume of {c.name} goes to {v}")
        comps.append(dataclasses.replace(c, volume=v))
    derived = {}
    for k, v in spec.derived.items():
        if has(v):
            v = _lim(v)
            if v == sp.oo:
                v = sp.oo  # only harmful if used; used expressions are checked below
        derived[k] = v
    rv = {}
    for k, v in spec.region_volumes.items():
        if has(v):
            v = _lim(v)
            if v in (sp.oo, 0):
                raise _NotSymbolic(f"the volume of region {k} goes to {v}")
        rv[k] = v
    transfers, fast = [], []
    for t in spec.transfers:
        if has(t.rate):
            L = _lim(t.rate)
            if L == sp.oo:
                fast.append((t, _lead(t.rate)))
                continue
            if L == 0:
                effects.append(f"{t.process or 'transfer'} {t.source}->{t.target} removed "
                               f"(rate -> 0)")
                continue
            t = dataclasses.replace(t, rate=L)
        transfers.append(t)
    bindings = []
    for b in spec.bindings:
        if not any(has(x) for x in (b.receptor, b.volume, b.k_on, b.k_off)):
            bindings.append(b)
            continue
        R, V, kon, koff = (_lim(x) for x in (b.receptor, b.volume, b.k_on, b.k_off))
        if R == 0 or kon == 0:
            effects.append(f"binding {b.free}->{b.bound} removed (receptor -> 0: "
                           f"{b.organ or b.free} is non-specific)")
            continue
        if R == sp.oo and all(x not in (sp.oo, 0) for x in (V, kon, koff)):
            effects.append(f"binding {b.free}->{b.bound} linear and instantaneous (receptor "
                           f"capacity -> inf: no saturation)")
            rate = b.k_on * b.receptor / b.volume
            fast.append((Transfer(b.free, b.bound, rate, "all", "binding"), _lead(rate)))
            transfers.append(Transfer(b.bound, b.free, koff, "all", "unbinding"))
            continue
        if any(x in (sp.oo, 0) for x in (R, V, kon, koff)):
            raise _NotSymbolic(f"binding {b.free}->{b.bound}: the limit needs an algebraic "
                               f"equilibrium constraint")
        bindings.append(dataclasses.replace(b, receptor=R, volume=V, k_on=kon, k_off=koff))
    spec = spec.replace(compartments=tuple(comps), derived=derived, region_volumes=rv,
                        transfers=tuple(transfers), bindings=tuple(bindings))
    if fast:
        spec = _merge_fast(spec, fast, effects)
    # nothing may still depend on q
    for t in spec.transfers:
        if has(t.rate) or sp.sympify(t.rate).has(sp.oo):
            raise _NotSymbolic(f"rate {t.source}->{t.target} still depends on the limit")
    return spec


def _empty_into_sinks(spec: ModelSpec, fast, effects):
    """Fast one-way transfers into a sink (e.g. release -> inf): the source pool is in
    quasi-steady state at amount 0; its inflows leave the body directly. Returns (spec, the
    fast transfers left)."""
    rest = [(t, c) for t, c in fast if t.target not in spec.sinks]
    into = [(t, c) for t, c in fast if t.target in spec.sinks]
    if not into:
        return spec, fast
    transfers = list(spec.transfers)
    comps = list(spec.compartments)
    for t, _ in into:
        src = t.source
        if t.species != "all":
            raise _NotSymbolic("a fast transfer acts on some species only")
        if any(r.source == src or r.target == src for r, _ in rest) or \
                sum(1 for r, _ in into if r.source == src) > 1:
            raise _NotSymbolic(f"{src} has several fast transfers")
        if src == spec.dosing_compartment:
            raise _NotSymbolic(f"the dosing compartment {src} would be emptied at once")
        if any(src in (b.free, b.bound) for b in spec.bindings):
            raise _NotSymbolic(f"{src} takes part in a binding")
        region = next(c.region for c in comps if c.name == src)
        if not any(c.region == region and c.name != src for c in comps):
            raise _NotSymbolic(f"{src} is the only compartment of region {region}")
        transfers = [dataclasses.replace(x, target=t.target) if x.target == src else x
                     for x in transfers if x.source != src]
        comps = [c for c in comps if c.name != src]
        effects.append(f"{src} in quasi-steady state (emptied at once into {t.target}: what "
                       f"enters it leaves the body directly)")
    spec = spec.replace(compartments=tuple(comps), transfers=tuple(transfers),
                        no_decay=frozenset(n for n in spec.no_decay
                                           if n in {c.name for c in comps}))
    return spec, rest


def _merge_fast(spec: ModelSpec, fast, effects) -> ModelSpec:
    spec, fast = _empty_into_sinks(spec, fast, effects)
    if not fast:
        return spec
    names = [c.name for c in spec.compartments]
    # groups: connected components of the fast graph
    parent = {n: n for n in names}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for t, _ in fast:
        if t.target in spec.sinks:
            raise _NotSymbolic(f"a fast transfer {t.source}->{t.target} leaves the body")
        if t.species != "all":
            raise _NotSymbolic("a fast transfer acts on some species only")
        parent[find(t.source)] = find(t.target)
    groups = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    groups = [g for g in groups.values() if len(g) > 1]
    comp = {c.name: c for c in spec.compartments}
    transfers = list(spec.transfers)
    bindings = list(spec.bindings)
    dosing = spec.dosing_compartment
    no_decay = set(spec.no_decay)
    for g in groups:
        # stationary distribution of the fast generator on the group
        f = sp.symbols(f"f0:{len(g)}", nonnegative=True)
        eqs = [sum(f) - 1]
        for j, n in enumerate(g):
            inflow = sum((c * f[g.index(t.source)] for t, c in fast
                          if t.target == n and t.source in g), sp.Integer(0))
            outflow = sum((c for t, c in fast if t.source == n), sp.Integer(0))
            eqs.append(inflow - outflow * f[j])
        sol = sp.solve(eqs, f, dict=True)
        if len(sol) != 1 or any(fi not in sol[0] for fi in f):
            raise _NotSymbolic(f"fast exchange among {g} has no unique equilibrium")
        share = {n: sp.simplify(_unpos(sp.sympify(sol[0][f[j]]))) for j, n in enumerate(g)}
        live = [n for n in g if share[n] != 0]
        regions = {comp[n].region for n in live}
        if len(regions) != 1:
            raise _NotSymbolic(f"fast exchange joins regions {sorted(regions)}")
        if {n in no_decay for n in live} not in ({True}, {False}):
            raise _NotSymbolic("fast exchange joins pools that decay differently")
        merged = live[0] if len(live) == 1 else "+".join(live)
        vols = [comp[n].volume for n in live]
        volume = None if any(v is None for v in vols) else sp.Add(*vols)
        kind = "+".join(dict.fromkeys(comp[n].kind for n in live))
        new_c = Compartment(merged, comp[live[0]].region, volume, kind)
        # rewire transfers
        out = []
        for t in transfers:
            s_in, d_in = t.source in g, t.target in g
            if s_in and d_in:
                continue  # internal (slow part of a fast exchange): irrelevant in the limit
            if s_in:
                if share[t.source] == 0:
                    continue
                t = dataclasses.replace(t, source=merged, rate=t.rate * share[t.source])
            if d_in:
                t = dataclasses.replace(t, target=merged)
            out.append(t)
        transfers = out
        nb = []
        for b in bindings:
            if b.bound in g:
                raise _NotSymbolic(f"the bound pool {b.bound} joins a fast exchange")
            if b.free in g:
                if share[b.free] == 0:
                    effects.append(f"binding {b.free}->{b.bound} removed (its free pool is "
                                   f"emptied at once)")
                    continue
                b = dataclasses.replace(b, free=merged, volume=b.volume / share[b.free])
            nb.append(b)
        bindings = nb
        if dosing in g:
            dosing = merged
        if any(n in no_decay for n in g):
            no_decay -= set(g)
            no_decay.add(merged)
        comps = []
        for c in spec.compartments:
            if c.name == live[0]:
                comps.append(new_c)
            elif c.name not in g:
                comps.append(c)
        gone = [n for n in g if share[n] == 0]
        if len(live) > 1:
            effects.append(f"{' and '.join(live)} in quasi-equilibrium (fast exchange): one pool "
                           f"{merged}, shares " + ", ".join(f"{n}: {sp.sstr(share[n])}"
                                                             for n in live))
        if gone:
            effects.append(f"{', '.join(gone)} in quasi-steady state (emptied at once into "
                           f"{merged})")
        spec = spec.replace(compartments=tuple(comps), transfers=tuple(transfers),
                            bindings=tuple(bindings), dosing_compartment=dosing,
                            no_decay=frozenset(no_decay))
        comp = {c.name: c for c in spec.compartments}
    return spec


def _prune(spec: ModelSpec) -> ModelSpec:
    """Drop compartments nothing can reach from the dosing compartment (when their region keeps
    another compartment), with their transfers and bindings."""
    reach = {spec.dosing_compartment}
    changed = True
    while changed:
        changed = False
        for t in spec.transfers:
            if t.source in reach and t.target not in reach and t.target not in spec.sinks:
                reach.add(t.target)
                changed = True
        for b in spec.bindings:
            for a, c in ((b.free, b.bound), (b.bound, b.free)):
                if a in reach and c not in reach:
                    reach.add(c)
                    changed = True
    keep = []
    placeholder = set()
    for c in spec.compartments:
        others = [d for d in spec.compartments if d.region == c.region and d.name in reach]
        if c.name in reach:
            keep.append(c)
        elif not others and c.region not in placeholder:
            # a region nothing reaches keeps ONE empty pool (its region stays defined; its
            # mass comes from region_volumes, not from the compartments): the others are
            # states that stay at 0 whatever the parameters
            placeholder.add(c.region)
            keep.append(c)
    names = {c.name for c in keep}
    return spec.replace(
        compartments=tuple(keep),
        transfers=tuple(t for t in spec.transfers if t.source in names
                        and (t.target in names or t.target in spec.sinks)),
        bindings=tuple(b for b in spec.bindings if b.free in names and b.bound in names),
        no_decay=frozenset(n for n in spec.no_decay if n in names))


def _ligand_combination(spec, base, a, b, op, cname, cval):
    """A combination of ligand-specific parameters is ligand-specific: each other ligand's copy
    keeps its ratio to the principal one (e.g. k_on/k_off = 1/K_D of PSMA-11 differs from
    PSMA-617's)."""
    lp = spec.ligand_parameters
    if a not in lp and b not in lp:
        return base
    va, vb = spec.parameter(a).value, spec.parameter(b).value
    ligands = {lig: dict(t) for lig, t in base.ligands.items()}
    for lig, table in spec.ligands.items():
        fa = table[a].value / va if a in table and va > 0 else 1.0
        fb = table[b].value / vb if b in table and vb > 0 else 1.0
        f = fa / fb if op == "ratio" else fa * fb
        if abs(f - 1.0) > 1e-12:
            p = base.parameter(cname)
            ligands.setdefault(lig, {})[cname] = dataclasses.replace(
                p, value=cval * f, description=f"{p.description} ({lig})")
    return base.replace(ligand_parameters=frozenset(base.ligand_parameters | {cname}),
                        ligands=ligands)


def _ratio_name(a, b, op):
    return f"{a}_over_{b}" if op == "ratio" else f"{a}_times_{b}"


def apply_limit(spec: ModelSpec, limit: Limit, values: dict, boundary: dict) -> Reduction:
    """Apply ``limit`` to ``spec``.

    ``values``: current parameter values (canonical units) of the MBAM parameters;
    ``boundary``: their values at the geodesic's end (for new combinations and the numerical
    fallback). Returns a :class:`Reduction` (its spec has the limit's parameters removed and
    any new combination added as a free parameter).
    """
    effects: list = []
    names = limit.names
    for n in names:
        spec.parameter(n)
    if limit.kind == "equal":
        a, b = names
        new = f"{a}_eq_{b}"
        val = math.sqrt(boundary[a] * boundary[b])
        pa = spec.parameter(a)
        newp = Parameter(new, val, pa.unit, f"{a} = {b} (merged by MBAM)", "MBAM reduction",
                         pa.kind)
        s = _subs_all(spec, {sp.Symbol(a): sp.Symbol(new), sp.Symbol(b): sp.Symbol(new)})
        s = _drop_parameter(s, names).replace(parameters=_drop_parameter(s, names).parameters
                                              + (newp,))
        effects.append(f"{a} and {b} merge into one rate {new}")
        return Reduction(_prune(s), "symbolic", effects, names,
                         (new, val, f"sqrt({a}*{b})"))
    q = _Q
    new = None
    if limit.kind in ("zero", "infinity"):
        p = names[0]
        subs = {sp.Symbol(p): q if limit.kind == "infinity" else 1 / q}
        qval = boundary[p] if limit.kind == "infinity" else 1 / boundary[p]
        removed = (p,)
    else:
        a, b = names
        op = limit.kind
        cname = _ratio_name(a, b, op)
        cval = boundary[a] / boundary[b] if op == "ratio" else boundary[a] * boundary[b]
        up = limit.directions[1] > 0
        qb = q if up else 1 / q
        subs = {sp.Symbol(b): qb,
                sp.Symbol(a): sp.Symbol(cname) * qb if op == "ratio" else sp.Symbol(cname) / qb}
        qval = boundary[b] if up else 1 / boundary[b]
        removed = (a, b)
        pa = spec.parameter(a)
        new = (cname, cval, f"{a}/{b}" if op == "ratio" else f"{a}*{b}")
        newp = Parameter(cname, cval, f"({pa.unit}) {'/' if op == 'ratio' else '*'} "
                         f"({spec.parameter(b).unit})",
                         f"finite combination {new[2]} kept by MBAM", "MBAM reduction", pa.kind)
    base = _subs_all(spec, subs)
    base = _drop_parameter(base, removed)
    if new is not None:
        base = base.replace(parameters=base.parameters + (newp,))
        base = _ligand_combination(spec, base, a, b, op, cname, cval)
    try:
        red = _prune(_q_limit(base, effects))
        red.resolved_derived()
        method = "symbolic"
    except (_NotSymbolic, NotImplementedError, ModelError, TypeError, ValueError) as exc:
        qfix = qval * NUMERIC_FACTOR
        effects = [f"numerical limit: {exc}; the limit is approximated by fixing it "
                   f"{NUMERIC_FACTOR:g}x beyond the geodesic's end"]
        red = _subs_all(base, {q: sp.Float(qfix)})
        method = "numerical"
    return Reduction(red, method, effects, removed, new)


def untie(spec: ModelSpec, name: str, regions) -> ModelSpec:
    """``spec`` with the shared parameter ``name`` split: in each of ``regions`` its transfers
    and bindings use their own copy ``{name}_in_{region}`` (same value, unit, source), elsewhere
    ``name`` itself. The model is unchanged (every copy at the shared value); MBAM can then take
    a limit in one organ only (e.g. permeability -> inf in the lungs but not in the muscle: one
    flow-limited organ). A transfer belongs to its source compartment's region (its target's
    for a source outside the compartments), a binding to its free pool's region."""
    p = spec.parameter(name)
    if name in spec.ligand_parameters:
        raise InputError(f"untie: {name} is ligand-specific; untie a shared physiological "
                         f"parameter")
    region_of = {c.name: c.region for c in spec.compartments}
    regions = list(dict.fromkeys(regions))
    unknown = [r for r in regions if r not in spec.regions]
    if unknown:
        raise InputError(f"untie {name}: unknown regions {unknown}; the model's: "
                         f"{', '.join(spec.regions)}")
    s0 = sp.Symbol(name)
    copies = {r: sp.Symbol(f"{name}_in_{r}") for r in regions}

    def sub(expr, region):
        if expr is None or region not in copies:
            return expr
        return sp.sympify(expr).xreplace({s0: copies[region]})

    transfers = tuple(dataclasses.replace(
        t, rate=sub(t.rate, region_of.get(t.source, region_of.get(t.target))))
        for t in spec.transfers)
    bindings = tuple(dataclasses.replace(
        b, receptor=sub(b.receptor, region_of[b.free]), volume=sub(b.volume, region_of[b.free]),
        k_on=sub(b.k_on, region_of[b.free]), k_off=sub(b.k_off, region_of[b.free]))
        for b in spec.bindings)
    used = {str(x) for t in transfers for x in sp.sympify(t.rate).free_symbols}
    used |= {str(x) for b in bindings for e in (b.receptor, b.volume, b.k_on, b.k_off)
             for x in sp.sympify(e).free_symbols}
    new = tuple(dataclasses.replace(p, name=str(c), description=f"{p.description} ({r}; "
                                    f"untied from {name} by MBAM)")
                for r, c in copies.items() if str(c) in used)
    return spec.replace(transfers=transfers, bindings=bindings,
                        parameters=spec.parameters + new)


def retie(spec: ModelSpec, copies: dict) -> ModelSpec:
    """Inverse of :func:`untie` at a fixed ratio: ``copies`` {copy: [parameter, ratio]}; each
    copy's symbol becomes ``ratio * parameter`` and the copy is no longer a parameter."""
    subs = {sp.Symbol(c): sp.Float(r) * sp.Symbol(b) for c, (b, r) in copies.items()}
    for c, (b, _) in copies.items():
        spec.parameter(b)
    spec = _subs_all(spec, subs)
    return _drop_parameter(spec, list(copies))
