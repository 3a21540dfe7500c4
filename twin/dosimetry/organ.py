"""Organ and lesion dosimetry of a regimen on the PBPK model: TIA, dose and BED per cycle.

Public API (stable; imported by the planning and trials code)
-------------------------------------------------------------
``organ_doses(model, regimen, params_batch, *, radiopharmaceutical=None, tissues=None,
alpha_beta_gy=None, repair_half_time_h=None, points_per_cycle=64, days=60.0,
settings=POPULATION_SETTINGS) -> OrganDoses``

``OrganDoses`` (also indexable like a dict: ``res["dose_gy"]``):
    regions (R,), cycle_times_h (C,), radiopharmaceutical, activity_mbq (C,) administered per cycle,
    tia_mbq_h, dose_gy, bed_gy: arrays (n_patients, n_cycles, n_regions);
    masses_g (n_patients, R) (NaN: region without a mass); ok (n_patients,) solver success;
    alpha_beta_gy, repair_half_time_h (R,) used (NaN where not applicable);
    ``cumulative(key)`` -> (P, C, R) running sums over cycles; ``total(key)`` -> (P, R);
    ``to_frame(patient=None)`` -> tidy pandas table (patient, cycle, region, ...).

``default_tissues(regions)`` -> {region: tissue}: Kidney -> kidney, SG -> salivary,
RedMarrow -> red_marrow, Tumor* -> tumour (keys of ``twin.dosimetry.radiobiology.TISSUES``).

``organ_dosimetry_function(model, n_cycles, points_per_cycle, settings, rp_index)``: the
jit-compiled, vmapped pure function behind ``organ_doses`` (one compile per model, number of
cycles, grid size and solver settings; the cycles are a ``lax.scan``, so compile time does not
grow with their number); rows are (parameters, labelled and unlabelled nmol per cycle, S-value
per region), so a planner can batch candidate regimens x posterior samples.

``cycle_grid(admin_times_h, t_end_h, points_per_cycle)``: the output-time grid used,
(n_cycles, points_per_cycle).

What is computed
----------------
* TIA (MBq h) per cycle: the model's exact time-integral states (not quadrature), differenced
  at the administration times: TIA of cycle k = integral from t_k to t_{k+1} (the last cycle: to
  ``t_end`` = last administration + ``days``). The activity left from earlier cycles that decays
  during cycle k is counted in cycle k (177Lu-PSMA at 6-week intervals: ~1% of a cycle).
* Absorbed dose (Gy) = TIA x S, S = ``pbpk_models.units.gy_per_mbq_h(E, m)``: self-dose of the
  non-penetrating emissions (E = ``radionuclides.energy_per_decay_mev``, electrons and alphas
  fully absorbed in the region; photons and cross-dose neglected), m = the region's mass from
  ``model.region_masses_g(p)`` for each patient's parameters.
* BED (Gy), Lea-Catcheside: BED = D + G D^2 / (alpha/beta) with G D^2 =
  2 int Ddot(t) int_0^t Ddot(w) exp(-mu (t - w)) dw dt, mu = ln 2 / T_rep, from the dose-rate
  curve Ddot = A(t) S on a dense grid (:func:`cycle_grid`: each administration time and a
  geometric grid from 1 min up to the next administration), computed inside the same jitted
  function as the solve (Rodas5P stepping exactly onto the grid). The q-recursion
  q' = Ddot - mu q is solved exactly on each interval for a piecewise-linear Ddot and the z
  increments by 8-point Gauss-Legendre quadrature (the same scheme as the numpy
  :func:`twin.dosimetry.radiobiology.lea_catcheside`), in a ``lax.scan`` over the grid. D in
  BED is the exact TIA-based dose. The scan runs through the whole regimen (q carried over), and
  its z increments are attributed to the cycle in which they occur; so the total BED is the
  Lea-Catcheside BED of the whole dose-rate curve, and the per-cycle BEDs add up to it.
  Assumption (stated, standard for RPT cycles weeks apart): no interaction between cycles beyond
  that (full repair between cycles, no repopulation): with T_rep of hours and intervals of
  weeks, the cross-cycle part of G D^2 is of order exp(-mu x interval) ~ 0.
  Everything is integrated up to ``t_end``; the activity after it (< 0.2% of a cycle for
  177Lu at 60 days) is not counted, as in ``pbpk_models.simulate``.
* BED needs the tissue's alpha/beta and repair half-time. Defaults from ``TISSUES`` (with their
  sources); only the kidney has a repair half-time in the project's checked references
  (2.8 h, Barone 2005 / MIRD 20). For other regions BED is NaN unless the caller gives
  ``repair_half_time_h={region: hours}`` (and, for regions without a tissue, ``alpha_beta_gy``).
  No values are invented here.

Red marrow
----------
psma-pbrpk has a ``RedMarrow`` region (a perfused tissue compartment with its own volume,
fraction of free ligand ``fF_RedMarrow``); its dose here is the self-dose of the region's own
TIA (electrons, mass from the model). It is not the EANM blood-based marrow dose (Hindorf et al.
2010; :func:`twin.dosimetry.radiobiology.red_marrow_dose`), which also adds cross-dose from the
remainder of the body and tumours; compare with the clinical 0.03-0.11 Gy/GBq for 177Lu-PSMA-617
(see docs/planning.md for the numbers at the default parameters).

Units: time h, activity MBq, TIA MBq h, dose Gy, alpha/beta Gy, repair half-time h.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twin.errors import InputError, ModelError

# 8-point Gauss-Legendre nodes and weights on [0, 1] (as in radiobiology.lea_catcheside).
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
_GL_X = 0.5 * (_GL_X + 1.0)
_GL_W = 0.5 * _GL_W

# Rows per vmapped chunk inside lax.map (None: one vmap over all rows); see
# organ_dosimetry_function.
DEFAULT_BATCH_SIZE = 8

# First grid point after each administration (h): 1 minute.
_FIRST_H = 1.0 / 60.0


def default_tissues(regions) -> dict[str, str]:
    """Model region -> radiobiology tissue (keys of ``TISSUES``) for the known regions."""
    out = {}
    for r in regions:
        if r == "Kidney":
            out[r] = "kidney"
        elif r == "SG":
            out[r] = "salivary"
        elif r == "RedMarrow":
            out[r] = "red_marrow"
        elif r.startswith("Tumor"):
            out[r] = "tumour"
    return out


def lesion_regions(regions) -> tuple[str, ...]:
    """The model's lesion regions (names starting with 'Tumor')."""
    return tuple(r for r in regions if r.startswith("Tumor"))


def cycle_grid(admin_times_h, t_end_h: float, points_per_cycle: int = 64) -> np.ndarray:
    """Output times per cycle, (n_cycles, points_per_cycle): the administration time, then a
    geometric grid from 1 min after it to the next administration (or ``t_end_h``), inclusive."""
    at = np.asarray(admin_times_h, dtype=np.float64)
    if points_per_cycle < 8:
        raise InputError("points_per_cycle must be at least 8")
    ends = np.append(at[1:], t_end_h)
    grid = np.empty((len(at), points_per_cycle))
    for k, (t0, t1) in enumerate(zip(at, ends)):
        span = t1 - t0
        if span <= 2 * _FIRST_H:
            raise InputError(f"administrations {t0:g} h and {t1:g} h are too close (< 2 min)")
        grid[k, 0] = t0
        grid[k, 1:] = t0 + np.geomspace(_FIRST_H, span, points_per_cycle - 1)
        grid[k, -1] = t1
    return grid


@dataclass(frozen=True)
class OrganDoses:
    """TIA, dose and BED per patient, cycle and region (see the module docstring)."""

    regions: tuple
    radiopharmaceutical: str
    cycle_times_h: np.ndarray
    activity_mbq: np.ndarray
    tia_mbq_h: np.ndarray
    dose_gy: np.ndarray
    bed_gy: np.ndarray
    masses_g: np.ndarray
    ok: np.ndarray
    alpha_beta_gy: np.ndarray
    repair_half_time_h: np.ndarray
    tissues: dict

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        return ("tia_mbq_h", "dose_gy", "bed_gy", "masses_g", "ok", "regions", "cycle_times_h",
                "activity_mbq")

    @property
    def n_patients(self) -> int:
        return self.dose_gy.shape[0]

    def region_index(self, region: str) -> int:
        if region not in self.regions:
            raise InputError(f"unknown region {region!r}; the model's regions: "
                             f"{', '.join(self.regions)}")
        return self.regions.index(region)

    def cumulative(self, key: str = "bed_gy") -> np.ndarray:
        """Running sum over cycles (P, C, R) of 'tia_mbq_h', 'dose_gy' or 'bed_gy'."""
        return np.cumsum(getattr(self, key), axis=1)

    def total(self, key: str = "bed_gy") -> np.ndarray:
        return np.sum(getattr(self, key), axis=1)

    def to_frame(self, patient: int | None = None):
        """Tidy table: patient, cycle, time_h, region, tia_mbq_h, dose_gy, bed_gy and the
        cumulative cum_dose_gy, cum_bed_gy."""
        import pandas as pd

        P, C, R = self.dose_gy.shape
        pats = range(P) if patient is None else [patient]
        cd, cb = self.cumulative("dose_gy"), self.cumulative("bed_gy")
        rows = []
        for i in pats:
            for k in range(C):
                for j, r in enumerate(self.regions):
                    rows.append({"patient": i, "cycle": k + 1, "time_h": self.cycle_times_h[k],
                                 "region": r, "tia_mbq_h": self.tia_mbq_h[i, k, j],
                                 "dose_gy": self.dose_gy[i, k, j], "bed_gy": self.bed_gy[i, k, j],
                                 "cum_dose_gy": cd[i, k, j], "cum_bed_gy": cb[i, k, j]})
        return pd.DataFrame(rows)


def _mass_function(model):
    """Vectorised region masses: (P, n_params) -> (P, R) (NaN for regions without a mass)."""
    cache = model.__dict__.setdefault("_organ_cache", {})
    if "mass_fn" in cache:
        return cache["mass_fn"]
    import sympy as sp

    spec = model.spec
    names = list(model.parameter_names)
    syms = [sp.Symbol(n) for n in names]
    resolved = spec.resolved_derived()
    defaults = spec.default_values()
    funcs = []
    for r in model.regions:
        if r not in spec.region_volumes:
            funcs.append(None)
            continue
        e = sp.sympify(spec.region_volumes[r])
        for _ in range(5):
            e = e.xreplace({sp.Symbol(k): v for k, v in resolved.items()})
        # parameters that are not free in this compiled model: their default value
        free = {s for s in e.free_symbols if s.name not in names}
        e = e.xreplace({s: defaults[s.name] for s in free if s.name in defaults})
        if e.free_symbols - set(syms):
            raise ModelError(f"cannot evaluate the volume of {r}: unknown symbols "
                             f"{sorted(s.name for s in e.free_symbols - set(syms))}")
        dens = spec.densities.get(r, 1.0)
        funcs.append((sp.lambdify(syms, e, "numpy"), dens))

    def masses(P):
        P = np.asarray(P, dtype=np.float64)
        cols = [P[:, i] for i in range(P.shape[1])]
        out = np.full((P.shape[0], len(model.regions)), np.nan)
        for j, f in enumerate(funcs):
            if f is not None:
                out[:, j] = np.broadcast_to(f[0](*cols), (P.shape[0],)) * f[1]
        return out

    cache["mass_fn"] = masses
    return masses


def _lea_catcheside_scan(ts, rate, mu, q0):
    """G D^2 (R,) over one grid (n,) for rates (n, R), piecewise linear in time, starting
    with the repair state q0 (R,); returns (z, q at the end)."""
    import jax
    import jax.numpy as jnp

    h = jnp.diff(ts)[:, None]                        # (n-1, 1)
    d0 = rate[:-1]
    g = (rate[1:] - d0) / h
    one_m_e = -jnp.expm1(-mu * h)
    e = 1.0 - one_m_e
    a_inc = d0 * one_m_e / mu + g * (h / mu - one_m_e / mu**2)

    def step(q, xs):
        e_i, a_i = xs
        return q * e_i + a_i, q

    q_end, q_start = jax.lax.scan(step, q0, (e, a_inc))
    s = h[..., None] * jnp.asarray(_GL_X)            # (n-1, 1, 8)
    mu3 = mu[..., None]
    em = jnp.exp(-mu3 * s)
    om = -jnp.expm1(-mu3 * s)
    qs = q_start[..., None] * em + d0[..., None] * om / mu3 + \
        g[..., None] * (s / mu3 - om / mu3**2)
    r = d0[..., None] + g[..., None] * s
    z = jnp.sum(2.0 * h[..., None] * jnp.asarray(_GL_W) * r * qs, axis=(0, -1))
    return z, q_end


def organ_dosimetry_function(model, n_cycles: int, n_points: int, settings, rp_index: int = 0,
                             batch_size: int | None | str = "auto"):
    """Jitted ``f(P, hot, cold, S, grid, mu) -> {'tia', 'z', 'ok'}``, vmapped over rows of
    P (n, n_params), hot (n, C, n_rp), cold (n, C, n_lig) nmol per cycle and S (n, R) (Gy per
    MBq h, 0 where no mass); ``grid`` (C, n_points) from :func:`cycle_grid` (shared);
    ``mu`` (R,) repair rates (1/h; any positive value where BED is not wanted). Returns
    ``tia`` (n, C, R) MBq h, ``z`` (n, C, R) G D^2 (Gy^2), ``ok`` (n,).

    The cycles are a ``lax.scan`` (compile cost independent of the number of cycles): each adds
    its bolus to the dosing compartment and integrates with Rodas5P
    (:mod:`pbpk_models.rosenbrock`) onto its grid. Cached on the model.
    """
    import jax
    import jax.numpy as jnp

    from pbpk_models.simulate import rosenbrock_solver

    if settings.method != "rosenbrock":
        raise InputError("organ dosimetry uses the Rosenbrock solver: pass settings with "
                         "method='rosenbrock' (e.g. pbpk_models.simulate.POPULATION_SETTINGS)")
    if model.mode != "full":
        raise InputError("organ dosimetry needs the model compiled in 'full' mode")
    if batch_size == "auto":
        batch_size = DEFAULT_BATCH_SIZE
    cache = model.__dict__.setdefault("_organ_cache", {})
    key = ("fn", n_cycles, n_points, settings, rp_index, batch_size)
    if key in cache:
        return cache[key]
    rb = rosenbrock_solver(model, settings)
    nreg = len(model.regions)
    mbq = float(model.mbq_per_nmol[rp_index])
    a0 = model.acc_offset + rp_index * nreg
    dosing = np.asarray(model.dosing_index)

    def one(p, hot, cold, s, grid, mu):
        K, kon_v = model.operator(p)
        t_ref = grid[0, 0]

        def cycle(carry, xs):
            y, q, ok = carry
            hot_k, cold_k, tsk = xs
            y = y.at[dosing].add(jnp.concatenate([hot_k, cold_k]))
            acc0 = y[a0:a0 + nreg]
            ys, y1, ok_k, _ = rb.solve(K, kon_v, t_ref, y, tsk[0], tsk[-1], tsk,
                                       rtol=settings.rtol, atol=settings.atol,
                                       max_steps=settings.max_steps, dt0=settings.dt0_h)
            tia = (y1[a0:a0 + nreg] - acc0) * mbq
            act = model.region_amounts(ys)[:, rp_index, :] * mbq        # (n_points, R) MBq
            rate = jnp.maximum(act, 0.0) * s[None, :]                   # Gy/h
            z, q1 = _lea_catcheside_scan(tsk, rate, mu, q)
            return (y1, q1, ok & ok_k), (tia, z)

        y0 = jnp.zeros(model.n_states, dtype=p.dtype)
        (_, _, ok), (tia, z) = jax.lax.scan(
            cycle, (y0, jnp.zeros(nreg, dtype=p.dtype), jnp.array(True)), (hot, cold, grid))
        return {"tia": tia, "z": z, "ok": ok}

    if batch_size is None:
        f = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None, None)))
    else:
        # lax.map over chunks of ``batch_size`` rows (vmapped inside a chunk): the vmapped
        # adaptive while-loop runs every lane to the slowest lane's step count, so on a CPU
        # small chunks are faster than one wide vmap (measured in benchmarks/bench_planning.py)
        # Rows are padded (copies of the last row) to a multiple of ``batch_size``: lax.map
        # traces and compiles a row count that is not a multiple (e.g. MAP + 8 draws = 9) twice,
        # once for the chunks and once for the remainder, which doubled the compile time of
        # every such program (the solver's trace and XLA compile dominate small runs).
        def mapped(P, hot, cold, s, grid, mu):
            n = P.shape[0]
            pad = -n % batch_size if n > batch_size else 0
            xs = (P, hot, cold, s)
            if pad:
                xs = tuple(jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) for x in xs)
            out = jax.lax.map(lambda xs: one(*xs, grid, mu), xs, batch_size=batch_size)
            return jax.tree_util.tree_map(lambda y: y[:n], out) if pad else out

        f = jax.jit(mapped)
    cache[key] = f
    return f


def _therapy_rp(model_or_spec, regimen, radiopharmaceutical):
    spec = getattr(model_or_spec, "spec", model_or_spec)
    rps = regimen.radiopharmaceuticals
    if radiopharmaceutical is not None:
        rp = radiopharmaceutical.lower()
        if rp not in rps:
            raise InputError(f"{rp} is not administered in the regimen ({', '.join(rps)})")
        return rp
    if getattr(spec, "default_radiopharmaceutical", None) in rps:
        return spec.default_radiopharmaceutical
    return rps[-1]


def radiobiology_arrays(regions, tissues=None, alpha_beta_gy=None, repair_half_time_h=None):
    """(alpha/beta (R,), T_rep (R,), tissues) with NaN where BED is not available."""
    from twin.dosimetry.radiobiology import tissue

    tmap = default_tissues(regions)
    if tissues:
        for r, t in tissues.items():
            if r not in regions:
                raise InputError(f"tissues: unknown region {r!r}; regions: {', '.join(regions)}")
            tmap[r] = t
    for name, d in (("alpha_beta_gy", alpha_beta_gy), ("repair_half_time_h", repair_half_time_h)):
        for r, v in (d or {}).items():
            if r not in regions:
                raise InputError(f"{name}: unknown region {r!r}; regions: {', '.join(regions)}")
            if v is None or not np.isfinite(v) or v <= 0:
                raise InputError(f"{name}[{r}] must be a positive number, got {v}")
    ab = np.full(len(regions), np.nan)
    tr = np.full(len(regions), np.nan)
    for j, r in enumerate(regions):
        if r in tmap:
            t = tissue(tmap[r])
            ab[j] = t.alpha_beta_gy
            tr[j] = np.nan if t.repair_half_time_h is None else t.repair_half_time_h
        if alpha_beta_gy and r in alpha_beta_gy:
            ab[j] = alpha_beta_gy[r]
        if repair_half_time_h and r in repair_half_time_h:
            tr[j] = repair_half_time_h[r]
    return ab, tr, tmap


def organ_doses(model, regimen, params_batch, *, radiopharmaceutical: str | None = None,
                tissues: dict | None = None, alpha_beta_gy: dict | None = None,
                repair_half_time_h: dict | None = None, points_per_cycle: int = 64,
                days: float = 60.0, settings=None, batch_size="auto") -> OrganDoses:
    """TIA, dose and BED per patient, cycle and region for a regimen (see the module docstring).

    Args:
        model: a library model name, ModelSpec or compiled Model.
        regimen: ``pbpk_models.regimen.Regimen``; only the administrations of
            ``radiopharmaceutical`` (default: the model's therapy radiopharmaceutical) are used;
            each distinct administration time is one cycle.
        params_batch: (n_patients, n_params) parameter vectors aligned with
            ``model.parameter_names`` (the compiled model's; e.g. posterior samples).
        tissues: {region: tissue} overrides of :func:`default_tissues`.
        alpha_beta_gy, repair_half_time_h: {region: value} overrides / additions (Gy, h).
        points_per_cycle: geometric grid points per cycle for the dose-rate curve.
        days: simulated span after the last administration (d).
        settings: solver settings (default ``POPULATION_SETTINGS``, Rodas5P, rtol 1e-6).
        batch_size: rows per vmapped chunk (``"auto"``: ``DEFAULT_BATCH_SIZE``; None: one
            vmap over all rows).
    Raises InputError on bad input, ModelError if the solve fails for every patient.
    """
    import jax.numpy as jnp

    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u
    from pbpk_models.model import require_x64
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import POPULATION_SETTINGS, prepare

    require_x64("organ_doses")
    settings = settings or POPULATION_SETTINGS
    rp = _therapy_rp(model if not isinstance(model, str) else _spec(model), regimen,
                     radiopharmaceutical)
    sub = Regimen(tuple(a for a in regimen.administrations if a.radiopharmaceutical.lower() == rp))
    model, at, hot, cold, _, t_end = prepare(model, sub, None, days, mode="full")
    rp_i = [r.name for r in model.radiopharmaceuticals].index(rp)
    P = np.asarray(params_batch, dtype=np.float64)
    if P.ndim == 1:
        P = P[None, :]
    if P.ndim != 2 or P.shape[1] != len(model.parameter_names):
        raise InputError(f"params_batch must be (n_patients, {len(model.parameter_names)}) "
                         f"aligned with model.parameter_names; got {P.shape}")
    if not np.all(np.isfinite(P)) or np.any(P < 0):
        raise InputError("params_batch must hold finite non-negative values")
    regions = tuple(model.regions)
    ab, tr, tmap = radiobiology_arrays(regions, tissues, alpha_beta_gy, repair_half_time_h)
    masses = _mass_function(model)(P)
    e = rn.energy_per_decay_mev(model.radiopharmaceuticals[rp_i].nuclide)
    S = np.where(np.isfinite(masses), u.gy_per_mbq_h(e, 1.0) / np.where(
        np.isfinite(masses), masses, 1.0), 0.0)
    grid = cycle_grid(at, t_end, points_per_cycle)
    mu = np.where(np.isfinite(tr), math.log(2.0) / np.where(np.isfinite(tr), tr, 1.0), 1.0)
    f = organ_dosimetry_function(model, len(at), points_per_cycle, settings, rp_i, batch_size)
    n = P.shape[0]
    out = f(jnp.asarray(P), jnp.asarray(np.broadcast_to(hot, (n,) + hot.shape)),
            jnp.asarray(np.broadcast_to(cold, (n,) + cold.shape)), jnp.asarray(S),
            jnp.asarray(grid), jnp.asarray(mu))
    return _assemble(out, masses, S, ab, tr, regions, rp, at, hot[:, rp_i] * model.mbq_per_nmol[
        rp_i], tmap)


def _assemble(out, masses, S, ab, tr, regions, rp, at, activity, tmap) -> OrganDoses:
    ok = np.asarray(out["ok"])
    tia = np.asarray(out["tia"])
    ok = ok & np.all(np.isfinite(tia), axis=(1, 2))
    if not ok.any():
        raise ModelError("the ODE solve failed for every parameter vector; check the parameters")
    has_mass = np.isfinite(masses)[:, None, :]
    dose = np.where(has_mass, tia * S[:, None, :], np.nan)
    z = np.asarray(out["z"])
    bed = np.where(np.isfinite(ab) & np.isfinite(tr), dose + z / np.where(np.isfinite(ab), ab,
                                                                          1.0), np.nan)
    bed = np.where(has_mass, bed, np.nan)
    return OrganDoses(regions, rp, np.asarray(at), np.asarray(activity), tia, dose, bed, masses,
                      ok, ab, tr, tmap)


def _spec(name):
    from pbpk_models.library import build_spec

    return build_spec(name)


def patient_params(model, posterior, n_samples: int = 0, seed: int = 0) -> np.ndarray:
    """Parameter vectors (1 + n_samples, n_params) of a twin: the MAP first, then draws from
    its Laplace posterior (lognormal in the personal parameters); others at the model defaults
    or the twin's fixed values."""
    base = model.params_from(posterior.fixed)
    idx = np.array([model.parameter_names.index(n) for n in posterior.names])
    thetas = posterior.theta_map[None, :]
    if n_samples > 0:
        thetas = np.vstack([thetas, posterior.sample_log(n_samples, seed)])
    P = np.tile(base, (len(thetas), 1))
    P[:, idx] = np.exp(thetas)
    return P
