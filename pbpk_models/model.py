"""Compile a :class:`~pbpk_models.spec.ModelSpec` into a JAX vector field.

The structure of every radioligand model in the language is

    dy/dt = K(p) y + N(y, p)

with K the linear operator of all first-order processes (flows, exchange, filtration, excretion,
internalisation, release, decay, the linear parts of binding, and the time-integral states), and
N the only non-linearity: the loss of free receptors to bound ligand of every species,
``N_bound,s = -k_on,s / V * free_s * sum_s' bound_s'`` (and its opposite on ``free_s``). K is
assembled once per parameter vector, outside the time loop, so a right-hand side costs one
dense mat-vec plus a gather and scatter.

State vector layout (all amounts nmol): ``species x compartments`` (species-major), then one
sink per species and sink (urine, released), then per labelled species and region the time
integral of the region's labelled amount (nmol h), from which the exact region TIA follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from pbpk_models import radionuclides as rn
from pbpk_models import units as u
from pbpk_models.errors import InputError, ModelError, PrecisionError
from pbpk_models.spec import ModelSpec


def require_x64(what: str = "this computation") -> None:
    """Raise PrecisionError unless JAX's 64-bit mode is on (PBPK needs float64)."""
    import jax

    if not jax.config.read("jax_enable_x64"):
        raise PrecisionError(
            f"{what} needs JAX's 64-bit mode (rates span six orders of magnitude). Enable it "
            "before any JAX computation: `jax.config.update('jax_enable_x64', True)` or set the "
            "environment variable JAX_ENABLE_X64=1.")


@dataclass(frozen=True)
class Species:
    name: str          # 'lu177-psma-617' (labelled) or 'psma-617' (unlabelled)
    labelled: bool
    ligand: str
    nuclide: str | None = None


class Model:
    """A model compiled for the radiopharmaceuticals of a regimen.

    Hashable by identity, so it can be a static argument of jitted functions; build it once
    through :func:`compile_model` (cached).
    """

    def __init__(self, spec: ModelSpec, radiopharmaceuticals: tuple[str, ...], mode: str = "full"):
        if mode not in ("full", "total"):
            raise ModelError(f"mode must be 'full' or 'total', not {mode!r}")
        self.mode = mode
        if not radiopharmaceuticals:
            radiopharmaceuticals = (spec.default_radiopharmaceutical,)
        rps = []
        for r in radiopharmaceuticals:
            rp = rn.parse_radiopharmaceutical(r)
            if rp.name in spec.radiopharmaceutical_ligands:
                rp = rn.Radiopharmaceutical(rp.name, rp.nuclide,
                                            spec.radiopharmaceutical_ligands[rp.name])
            if rp.ligand not in spec.known_ligands:
                raise InputError(
                    f"model {spec.name} does not describe ligand {rp.ligand!r} (of {rp.name}); it "
                    f"knows {', '.join(spec.known_ligands)}")
            if rp not in rps:
                rps.append(rp)
        self.spec = spec
        self.radiopharmaceuticals = tuple(rps)
        ligands = [spec.principal_ligand] if any(
            r.ligand == spec.principal_ligand for r in rps) else []
        for r in rps:
            if r.ligand not in ligands:
                ligands.append(r.ligand)
        self.ligands = tuple(ligands)
        if mode == "total":
            # Total-ligand form: one species (labelled + unlabelled of the single ligand), no
            # decay; valid when labelled and unlabelled ligand obey the same equations
            # (see total_form_applies).
            if len(rps) != 1 or not total_form_applies(spec):
                raise ModelError("the total-ligand form needs one radiopharmaceutical and a model "
                                 "whose labelled and unlabelled ligand follow the same equations")
            self.species = (Species(rps[0].ligand, False, rps[0].ligand),)
        else:
            self.species = tuple(
                [Species(r.name, True, r.ligand, r.nuclide) for r in rps]
                + [Species(lig, False, lig) for lig in ligands])
        self.compartments = tuple(c.name for c in spec.compartments)
        self.regions = spec.regions
        self.sinks = spec.sinks
        self.parameter_names = spec.parameter_names
        self.decay_constants_per_h = np.array(
            [spec.decay_overrides.get(r.nuclide, rn.decay_constant_per_h(r.nuclide)) for r in rps])
        self.mbq_per_nmol = np.array([u.mbq_per_nmol(lam) for lam in self.decay_constants_per_h])
        nc, ns = len(self.compartments), len(self.species)
        self.n_amount_states = nc * ns
        self.sink_offset = nc * ns
        self.acc_offset = self.sink_offset + ns * len(self.sinks)
        self.n_states = self.acc_offset + len(rps) * len(self.regions)
        self._build()

    # -- indices -------------------------------------------------------------------------------
    def index(self, species: int, compartment: str) -> int:
        return species * len(self.compartments) + self.compartments.index(compartment)

    def sink_index(self, species: int, sink: str) -> int:
        return self.sink_offset + species * len(self.sinks) + self.sinks.index(sink)

    def acc_index(self, rp: int, region: str) -> int:
        return self.acc_offset + rp * len(self.regions) + self.regions.index(region)

    def binding_state_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """State indices of the free and bound partners of each binding, shape (bindings, species).

        Row ``b`` holds, for every species (hot and cold ligand), the index of the free ligand
        state and of the receptor-bound state of ``spec.bindings[b]``.
        """
        return self._free_idx.copy(), self._bound_idx.copy()

    def state_names(self) -> tuple[str, ...]:
        names = [f"{c}.{s.name}" for s in self.species for c in self.compartments]
        names += [f"{k}.{s.name}" for s in self.species for k in self.sinks]
        names += [f"TIA:{r}.{rp.name}" for rp in self.radiopharmaceuticals for r in self.regions]
        return tuple(names)

    # -- assembly ------------------------------------------------------------------------------
    def _build(self) -> None:
        spec = self.spec
        resolved = spec.resolved_derived()
        exprs: list[sp.Expr] = []
        expr_index: dict[sp.Expr, int] = {}

        def eid(expr) -> int:
            e = sp.sympify(expr)
            for _ in range(4):  # derived parameters may be nested (already resolved, but safe)
                e = e.xreplace({sp.Symbol(k): v for k, v in resolved.items()
                            if sp.Symbol(k) in e.free_symbols})
            if e not in expr_index:
                expr_index[e] = len(exprs)
                exprs.append(e)
            return expr_index[e]

        rows, cols, signs, ids = [], [], [], []
        self._rate_desc: dict[int, str] = {}
        const_rows, const_cols, const_vals = [], [], []

        def add(dst, src, rate_id, sign=1.0):
            rows.append(dst)
            cols.append(src)
            signs.append(sign)
            ids.append(rate_id)

        comp_set = set(self.compartments)
        for s_i, s in enumerate(self.species):
            for t in spec.transfers:
                if t.species == "labelled" and not s.labelled:
                    continue
                if t.species == "unlabelled" and s.labelled:
                    continue
                r = eid(spec.substitute_ligand(t.rate, s.ligand))
                self._rate_desc.setdefault(r, f"{t.process or 'transfer'} {t.source}->{t.target}")
                src = self.index(s_i, t.source)
                dst = self.index(s_i, t.target) if t.target in comp_set else \
                    self.sink_index(s_i, t.target)
                add(dst, src, r, 1.0)
                add(src, src, r, -1.0)
            for b in spec.bindings:
                kon_r0_v = eid(spec.substitute_ligand(b.k_on * b.receptor / b.volume, s.ligand))
                koff = eid(spec.substitute_ligand(b.k_off, s.ligand))
                f, bd = self.index(s_i, b.free), self.index(s_i, b.bound)
                add(bd, f, kon_r0_v, 1.0)
                add(f, f, kon_r0_v, -1.0)
                add(f, bd, koff, 1.0)
                add(bd, bd, koff, -1.0)
        # physical decay of labelled species into their ligand's unlabelled species
        for rp_i, rp in enumerate(self.radiopharmaceuticals):
            lam = float(self.decay_constants_per_h[rp_i])
            s_hot = rp_i
            if self.mode == "full":
                s_cold = len(self.radiopharmaceuticals) + self.ligands.index(rp.ligand)
                for c in self.compartments:
                    if c in spec.no_decay:
                        continue
                    const_rows += [self.index(s_cold, c), self.index(s_hot, c)]
                    const_cols += [self.index(s_hot, c), self.index(s_hot, c)]
                    const_vals += [lam, -lam]
            # time integrals of the labelled amount per region
            for c in spec.compartments:
                const_rows.append(self.acc_index(rp_i, c.region))
                const_cols.append(self.index(s_hot, c.name))
                const_vals.append(1.0)
        # binding non-linearity
        nb = len(spec.bindings)
        ns = len(self.species)
        self._free_idx = np.array([[self.index(s, b.free) for s in range(ns)]
                                   for b in spec.bindings], dtype=np.int32).reshape(nb, ns)
        self._bound_idx = np.array([[self.index(s, b.bound) for s in range(ns)]
                                    for b in spec.bindings], dtype=np.int32).reshape(nb, ns)
        kon_v_ids = np.array([[eid(spec.substitute_ligand(b.k_on / b.volume, s.ligand))
                               for s in self.species] for b in spec.bindings],
                             dtype=np.int32).reshape(nb, ns)
        self._kon_v_ids = kon_v_ids
        self._rows = np.array(rows, dtype=np.int32)
        self._cols = np.array(cols, dtype=np.int32)
        self._signs = np.array(signs)
        self._ids = np.array(ids, dtype=np.int32)
        self._const_K = np.zeros((self.n_states, self.n_states))
        np.add.at(self._const_K, (np.array(const_rows), np.array(const_cols)), np.array(const_vals))
        # sparse layout of K: constant entries first, then parameter-dependent ones, sorted by
        # row for a fast segment sum
        all_rows = np.concatenate([np.array(const_rows, dtype=np.int32), self._rows])
        all_cols = np.concatenate([np.array(const_cols, dtype=np.int32), self._cols])
        order = np.argsort(all_rows, kind="stable")
        self._sparse_order = order
        self.sparse_rows = all_rows[order]
        self.sparse_cols = all_cols[order]
        self._const_vals = np.array(const_vals, dtype=np.float64)
        self.rate_expressions = tuple(exprs)
        # the free parameters used by the rates must all be known
        names = set(self.parameter_names)
        used = set().union(*(e.free_symbols for e in exprs)) if exprs else set()
        unknown = {s.name for s in used} - names
        if unknown:
            raise ModelError(f"{spec.name}: expressions use undefined parameters {sorted(unknown)}")
        p = sp.IndexedBase("p")
        subs = {sp.Symbol(n): p[i] for i, n in enumerate(self.parameter_names)}
        indexed = [e.xreplace(subs) for e in exprs]
        self._rate_fn_np = sp.lambdify([p], indexed, modules="numpy", cse=True)
        self._rate_fn_jax = sp.lambdify([p], indexed, modules="jax", cse=True)
        # region selection: labelled amount per (rp, region)
        nrp, nreg = len(self.radiopharmaceuticals), len(self.regions)
        sel = np.zeros((nrp * nreg, self.n_states))
        for rp_i in range(nrp):
            for c in spec.compartments:
                sel[rp_i * nreg + self.regions.index(c.region), self.index(rp_i, c.name)] = 1.0
        self._region_selector = sel
        self.dosing_index = np.array(
            [self.index(s, spec.dosing_compartment) for s in range(ns)], dtype=np.int32)

    # -- numerical pieces ----------------------------------------------------------------------
    def default_params(self) -> np.ndarray:
        """Default free-parameter vector (canonical units), aligned with ``parameter_names``."""
        vals = self.spec.default_values()
        return np.array([vals[n] for n in self.parameter_names], dtype=np.float64)

    def check_params(self, p) -> None:
        """Raise InputError if parameters make a rate, volume or flow negative or non-finite.

        (For example body weight so low that the remainder volume V_Rest becomes negative, or
        organ flow fractions adding up to more than the cardiac output.)
        """
        p = np.asarray(p, dtype=np.float64)
        if not np.all(np.isfinite(p)):
            bad = [n for n, v in zip(self.parameter_names, p) if not np.isfinite(v)]
            raise InputError(f"parameters must be finite: {', '.join(bad)}")
        neg = [n for n, v in zip(self.parameter_names, p) if v < 0]
        if neg:
            raise InputError(f"parameters must not be negative: {', '.join(neg)}")
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.array(self._rate_fn_np(p), dtype=np.float64)
        bad = [i for i in range(len(r)) if not np.isfinite(r[i]) or r[i] < 0]
        if bad:
            what = sorted({self._rate_desc.get(i, str(self.rate_expressions[i])) for i in bad})
            raise InputError(
                "these parameters make a rate negative or infinite (a negative volume or flow, "
                f"e.g. flow fractions adding up to more than the total): {'; '.join(what[:5])}")

    def params_from(self, values=None, base=None) -> np.ndarray:
        """Parameter vector from a {name: value} mapping on top of ``base`` (default values)."""
        p = np.array(self.default_params() if base is None else base, dtype=np.float64)
        for k, v in (values or {}).items():
            if k not in self.parameter_names:
                raise InputError(self.spec._unknown_parameter_message(k))
            p[self.parameter_names.index(k)] = float(v)
        return p

    def rates(self, p):
        """Values of all distinct rate expressions (JAX) at parameter vector ``p``."""
        import jax.numpy as jnp

        out = self._rate_fn_jax(p)
        return jnp.stack([jnp.asarray(r, dtype=jnp.result_type(p)) * jnp.ones((), p.dtype)
                          for r in out])

    def operator(self, p):
        """(K_values, kon_over_V) at parameter vector ``p``.

        K is kept sparse: ``K_values[i]`` is the entry at (``sparse_rows[i]``, ``sparse_cols[i]``)
        (duplicates add up); a compartment model has a few hundred non-zeros in thousands.
        """
        import jax.numpy as jnp

        r = self.rates(p)
        vals = jnp.concatenate([jnp.asarray(self._const_vals, dtype=p.dtype),
                                self._signs * r[self._ids]])[self._sparse_order]
        kon_v = r[self._kon_v_ids]
        return vals, kon_v

    def dense_operator(self, p):
        """K as a dense (n_states, n_states) array (for tests and closed forms)."""
        import jax.numpy as jnp

        vals, _ = self.operator(p)
        return jnp.zeros((self.n_states, self.n_states), p.dtype).at[
            self.sparse_rows, self.sparse_cols].add(vals)

    def vector_field(self, t, y, args):
        """dy/dt for diffrax: ``args = (K, kon_over_V, t_admin)``, K and kon/V from
        :meth:`operator`; ``t_admin`` (total form only) is the administration time."""
        import jax.numpy as jnp

        import jax

        vals, kon_v, t_admin = args
        free = y[self._free_idx]
        bound = y[self._bound_idx]
        q = kon_v * free * bound.sum(axis=1, keepdims=True)
        dy = jax.ops.segment_sum(vals * y[self.sparse_cols], self.sparse_rows,
                                 num_segments=self.n_states, indices_are_sorted=True)
        dy = dy.at[self._free_idx.ravel()].add(q.ravel())
        dy = dy.at[self._bound_idx.ravel()].add(-q.ravel())
        if self.mode == "total":
            # the labelled fraction decays physically: weight the time-integral states
            w = jnp.exp(-self.decay_constants_per_h[0] * (t - t_admin))
            dy = dy.at[self.acc_offset:].multiply(w)
        return dy

    def jacobian(self, t, y, args):
        """Analytic dense Jacobian d(vector_field)/dy, (n_states, n_states): K plus the
        derivative of the binding term (``args`` as for :meth:`vector_field`)."""
        import jax.numpy as jnp

        vals, kon_v, t_admin = args
        n = self.n_states
        J = jnp.zeros((n, n), y.dtype).at[self.sparse_rows, self.sparse_cols].add(vals)
        fi, bi = self._free_idx, self._bound_idx          # (nb, ns)
        btot = y[bi].sum(axis=1, keepdims=True)           # (nb, 1)
        d_free = kon_v * btot                             # dq[b,s]/d free[b,s]
        d_bound = kon_v * y[fi]                           # dq[b,s]/d bound[b,s'] (any s')
        ns = fi.shape[1]
        J = J.at[fi, fi].add(d_free).at[bi, fi].add(-d_free)
        r_f = np.repeat(fi[:, :, None], ns, axis=2)       # (nb, ns, ns): row free[b,s]
        r_b = np.repeat(bi[:, :, None], ns, axis=2)
        c_b = np.repeat(bi[:, None, :], ns, axis=1)       # column bound[b,s']
        dq = jnp.broadcast_to(d_bound[:, :, None], r_f.shape)
        J = J.at[r_f, c_b].add(dq).at[r_b, c_b].add(-dq)
        if self.mode == "total":
            w = jnp.exp(-self.decay_constants_per_h[0] * (t - t_admin))
            J = J.at[self.acc_offset:].multiply(w)
        return J

    def vector_field_numpy(self, p: np.ndarray):
        """A plain NumPy right-hand side f(t, y) at parameters ``p`` (for scipy baselines)."""
        r = np.array(self._rate_fn_np(np.asarray(p)), dtype=np.float64)
        K = self._const_K.copy()
        np.add.at(K, (self._rows, self._cols), self._signs * r[self._ids])
        kon_v = r[self._kon_v_ids]
        fi, bi = self._free_idx, self._bound_idx
        # scatter matrices, so that the right-hand side is two mat-vecs (fair to scipy)
        n = self.n_states
        Pf = np.zeros((n, fi.size))
        Pf[fi.ravel(), np.arange(fi.size)] = 1.0
        Pb = np.zeros((n, bi.size))
        Pb[bi.ravel(), np.arange(bi.size)] = 1.0
        P = Pf - Pb
        if self.mode == "total":
            raise ModelError("vector_field_numpy is for the full form")

        def f(t, y):
            q = kon_v * y[fi] * y[bi].sum(axis=1, keepdims=True)
            return K @ y + P @ q.ravel()

        def jac(t, y):
            J = K.copy()
            free, bound = y[fi], y[bi]
            btot = bound.sum(axis=1)
            for b in range(fi.shape[0]):
                for s in range(fi.shape[1]):
                    J[fi[b, s], fi[b, s]] += kon_v[b, s] * btot[b]
                    J[bi[b, s], fi[b, s]] -= kon_v[b, s] * btot[b]
                    for s2 in range(fi.shape[1]):
                        J[fi[b, s], bi[b, s2]] += kon_v[b, s] * free[b, s]
                        J[bi[b, s], bi[b, s2]] -= kon_v[b, s] * free[b, s]
            return J

        return f, jac

    # -- symbolic form -------------------------------------------------------------------------
    def symbolic_rhs(self) -> tuple[tuple[sp.Symbol, ...], sp.Matrix]:
        """The right-hand side as SymPy expressions of state and free-parameter symbols."""
        y = sp.symbols([f"y{i}" for i in range(self.n_states)])
        rhs = [sp.Integer(0)] * self.n_states
        for r, c, s, i in zip(self._rows, self._cols, self._signs, self._ids):
            rhs[r] += s * self.rate_expressions[i] * y[c]
        for r in range(self.n_states):
            for c in np.nonzero(self._const_K[r])[0]:
                rhs[r] += self._const_K[r, c] * y[c]
        for b in range(self._free_idx.shape[0]):
            btot = sum(y[j] for j in self._bound_idx[b])
            for s in range(self._free_idx.shape[1]):
                q = self.rate_expressions[self._kon_v_ids[b, s]] * y[self._free_idx[b, s]] * btot
                rhs[self._free_idx[b, s]] += q
                rhs[self._bound_idx[b, s]] -= q
        return tuple(y), sp.Matrix(rhs)

    # -- outputs -------------------------------------------------------------------------------
    def region_amounts(self, y):
        """Labelled amount (nmol) per (rp, region) for states ``y`` (..., n_states)."""
        nrp, nreg = len(self.radiopharmaceuticals), len(self.regions)
        out = y @ self._region_selector.T
        return out.reshape(y.shape[:-1] + (nrp, nreg))

    def total_nmol(self, y):
        """All ligand in the body plus sinks (nmol); conserved exactly by the equations."""
        return y[..., : self.acc_offset].sum(axis=-1)

    def region_masses_g(self, p=None) -> dict[str, float]:
        """Tissue mass (g) of each region that has one: volume times density.

        The model's organ volumes are ICRP reference masses entered as volumes (e.g. kidney
        0.311, ICRP 23 / ICRP 89 reference kidney mass 0.31 kg), so the default density is
        1 g/mL; a spec may give others in ``densities``.
        """
        values = None
        if p is not None:
            values = dict(zip(self.parameter_names, np.asarray(p, dtype=float)))
        out = {}
        for region, expr in self.spec.region_volumes.items():
            v = self.spec.evaluate(expr, values)
            out[region] = v * self.spec.densities.get(region, 1.0)
        return out


def total_form_applies(spec: ModelSpec) -> bool:
    """True when labelled and unlabelled ligand follow identical equations.

    Then, after a single administration at t0 with labelled fraction f, the labelled amount in
    every compartment is exactly f * exp(-lambda (t - t0)) times the total ligand amount: the
    total ligand obeys the decay-free equations, and the labelled ligand obeys the same
    (time-varying, given the free receptors) linear equations with an extra -lambda, from the
    proportional initial state. The published PSMA variant breaks this (skin exchange, no decay
    in the reabsorbed kidney pool).
    """
    return not spec.no_decay and all(t.species == "all" for t in spec.transfers)


_CACHE: dict = {}


def compile_model(spec: ModelSpec, radiopharmaceuticals=(), mode: str = "full") -> Model:
    """Compile ``spec`` for the given radiopharmaceuticals (cached per spec object and set)."""
    key = (id(spec), tuple(radiopharmaceuticals), mode)
    hit = _CACHE.get(key)
    if hit is None or hit[0] is not spec:
        if len(_CACHE) > 64:
            _CACHE.clear()
        hit = (spec, Model(spec, tuple(radiopharmaceuticals), mode))
        _CACHE[key] = hit
    return hit[1]
