"""Simulation across administrations: region activity over time and exact region TIA.

The solve is a pure JAX function of the parameter vector and the regimen's arrays, with static
shapes (number of administrations, number of output times), so it is jit-compiled once and then
``vmap``-ed over parameter sets (virtual populations) and differentiated with respect to
parameters (calibration, MBAM). Between administrations the stiff system is integrated by an
implicit Runge-Kutta method (diffrax ``Kvaerno5``, L-stable ESDIRK of order 5); each
administration adds its bolus to the dosing compartment. Time-integrated activities come from
extra ODE states (the time integral of each region's labelled amount), not from quadrature of
sampled curves. Output times are stepped onto exactly (``ClipStepSizeController(step_ts=...)``)
because Kvaerno5's dense output between steps is only third order (shared/NOTES.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pbpk_models import units as u
from pbpk_models.errors import InputError, ModelError
from pbpk_models.model import Model, compile_model, require_x64
from pbpk_models.regimen import Regimen
from pbpk_models.spec import ModelSpec


@dataclass(frozen=True)
class SolverSettings:
    """Tolerances of the stiff solve. Amounts are in nmol (atol) and relative (rtol)."""

    rtol: float = 1e-8
    atol: float = 1e-10
    max_steps: int = 20000
    dt0_h: float = 1e-3
    adjoint: str = "recursive"  # recursive | direct | forward
    step_to_outputs: bool = True
    # "kvaerno5" (diffrax; all adjoints) or "rosenbrock" (Rodas5P with the analytic Jacobian and
    # a block-arrowhead linear solver, pbpk_models.rosenbrock: fastest for populations; forward
    # mode only, always steps onto the output times)
    method: str = "kvaerno5"
    linear_solver: str = "block"  # rosenbrock only: "block" | "dense"
    # rosenbrock "block" only: organ blocks grouped by size into at most this many groups
    # (pbpk_models.rosenbrock.block_structure). 1 (every block padded to the largest) has the
    # fewest operations: best for one patient. 3 pads less: 1.2-1.6x the throughput of large
    # vmapped batches for 15-100 % more compile time (benchmarks/bench_blocks.py).
    block_groups: int = 1


def _adjoint(name: str):
    import diffrax as dfx

    if name == "recursive":
        return dfx.RecursiveCheckpointAdjoint()
    if name == "direct":
        return dfx.DirectAdjoint()
    if name == "forward":
        return dfx.ForwardMode()
    raise InputError(f"adjoint must be recursive, direct or forward, not {name!r} "
                     f"(BacksolveAdjoint gives wrong gradients on stiff compartment models)")


def solve_core(model: Model, n_admin: int, settings: SolverSettings):
    """The pure function ``(p, admin_times, hot, cold, ts, t_end) -> outputs``.

    ``p``: free parameters (n_params,); ``admin_times`` (n_admin,) sorted and distinct;
    ``hot`` (n_admin, n_rp) and ``cold`` (n_admin, n_ligands) nmol per administration; ``ts``
    (n_ts,) output times; ``t_end`` the end of the simulated span. Returns a dict:
    ``amounts`` (n_ts, n_rp, n_regions) labelled nmol, ``tia_nmol_h`` (n_rp, n_regions),
    ``total_nmol`` (n_ts,) all ligand in the body and the sinks, ``states`` (n_ts, n_states),
    ``ok`` solver success. Everything before the first administration is zero. Not jitted
    here: :func:`jitted_core` caches the compiled versions.
    """
    import diffrax as dfx
    import jax
    import jax.numpy as jnp

    if settings.method not in ("kvaerno5", "rosenbrock"):
        raise InputError(f"method must be 'kvaerno5' or 'rosenbrock', not {settings.method!r}")
    rosenbrock = settings.method == "rosenbrock"
    if rosenbrock:
        rb = rosenbrock_solver(model, settings)
    term = dfx.ODETerm(model.vector_field)
    solver = dfx.Kvaerno5()
    adjoint = _adjoint(settings.adjoint)
    dosing = np.asarray(model.dosing_index)
    total = model.mode == "total"
    if total and n_admin != 1:
        raise ModelError("the total-ligand form takes exactly one administration")

    def core(p, admin_times, hot, cold, ts, t_end, rtol=None):
        # rtol: a traced relative tolerance (Rosenbrock only) so that one compiled function
        # serves several tolerances (calibration's continuation); None: settings.rtol
        if rtol is not None and not rosenbrock:
            raise InputError("a traced rtol needs method='rosenbrock'")
        rtol_ = settings.rtol if rtol is None else rtol
        K, kon_v = model.operator(p)
        args = (K, kon_v, admin_times[0])
        y = jnp.zeros(model.n_states, dtype=p.dtype)
        bounds = jnp.concatenate([admin_times, jnp.reshape(t_end, (1,))])
        out = jnp.zeros((ts.shape[0], model.n_states), dtype=p.dtype)
        ok = jnp.array(True)
        if rosenbrock and n_admin > 1:
            # one solver body in the compiled program, looped over the administrations (an
            # unrolled loop compiles one copy per administration: 2-4 min for 6 cycles)
            def one(k, carry):
                y, out, ok = carry
                y = y.at[dosing].add(jnp.concatenate([hot[k], cold[k]]))
                t0, t1 = bounds[k], bounds[k + 1]
                tsk = jnp.clip(ts, t0, t1)
                inside = (ts >= t0) & jnp.where(k == n_admin - 1, ts <= t1, ts < t1)
                ys_ts, y, ok_k, _ = rb.solve(K, kon_v, admin_times[0], y, t0, t1, tsk,
                                             rtol=rtol_, atol=settings.atol,
                                             max_steps=settings.max_steps, dt0=settings.dt0_h)
                return y, jnp.where(inside[:, None], ys_ts, out), ok & ok_k

            y, out, ok = jax.lax.fori_loop(0, n_admin, one, (y, out, ok))
        for k in range(0 if (rosenbrock and n_admin > 1) else n_admin):
            dose = (hot[k].sum() + cold[k].sum())[None] if total else \
                jnp.concatenate([hot[k], cold[k]])
            y = y.at[dosing].add(dose)
            t0, t1 = bounds[k], bounds[k + 1]
            tsk = jnp.clip(ts, t0, t1)
            last = k == n_admin - 1
            inside = (ts >= t0) & ((ts <= t1) if last else (ts < t1))
            if rosenbrock:
                ys_ts, y, ok_k, _ = rb.solve(K, kon_v, admin_times[0], y, t0, t1, tsk,
                                             rtol=rtol_, atol=settings.atol,
                                             max_steps=settings.max_steps, dt0=settings.dt0_h)
                out = jnp.where(inside[:, None], ys_ts, out)
                ok = ok & ok_k
                continue
            # pcoeff = icoeff = 0.3: the PID settings diffrax recommends for stiff problems;
            # they halve the steps here (rejections 303 -> 26 of 709 -> 314 steps)
            pid = dfx.PIDController(rtol=settings.rtol, atol=settings.atol, pcoeff=0.3,
                                    icoeff=0.3)
            controller = dfx.ClipStepSizeController(pid, step_ts=tsk) \
                if settings.step_to_outputs else pid
            sol = dfx.diffeqsolve(
                term, solver, t0, t1, dt0=settings.dt0_h, y0=y, args=args,
                saveat=dfx.SaveAt(subs=[dfx.SubSaveAt(ts=tsk), dfx.SubSaveAt(t1=True)]),
                stepsize_controller=controller, max_steps=settings.max_steps,
                adjoint=adjoint, throw=False)
            ys_ts, ys_end = sol.ys
            out = jnp.where(inside[:, None], ys_ts, out)
            y = ys_end[0]
            ok = ok & (sol.result == dfx.RESULTS.successful)
        nrp, nreg = len(model.radiopharmaceuticals), len(model.regions)
        amounts = model.region_amounts(out)
        acc = y[model.acc_offset:].reshape(nrp, nreg)
        if total:
            frac = hot[0] / (hot[0].sum() + cold[0].sum())  # labelled fraction (n_rp=1,)
            lam = model.decay_constants_per_h[0]
            w = jnp.where(ts >= admin_times[0], jnp.exp(-lam * (ts - admin_times[0])), 0.0)
            amounts = amounts * frac[None, :, None] * w[:, None, None]
            acc = acc * frac[:, None]
        return {"amounts": amounts, "tia_nmol_h": acc, "total_nmol": model.total_nmol(out),
                "states": out, "ok": ok}

    return core


def rosenbrock_solver(model: Model, settings: SolverSettings):
    """The model's :class:`~pbpk_models.rosenbrock.PBPKRosenbrock` for these settings (linear
    solver and block groups), built once and cached on the model."""
    from pbpk_models.rosenbrock import PBPKRosenbrock

    if not isinstance(settings.block_groups, int) or settings.block_groups < 1:
        raise InputError(f"block_groups must be a positive integer, not "
                         f"{settings.block_groups!r}")
    cache = model.__dict__.setdefault("_rosenbrock", {})
    key = (settings.linear_solver, settings.block_groups)
    if key not in cache:
        cache[key] = PBPKRosenbrock(model, settings.linear_solver,
                                    max_groups=settings.block_groups)
    return cache[key]


def jitted_core(model: Model, n_admin: int, settings: SolverSettings, batched: bool = False):
    """Jit-compiled (optionally vmapped over parameter vectors) core, cached on the model."""
    import jax

    cache = model.__dict__.setdefault("_jit_cache", {})
    key = (n_admin, settings, batched)
    if key not in cache:
        core = solve_core(model, n_admin, settings)
        if batched:
            core = jax.vmap(core, in_axes=(0, None, None, None, None, None))
        cache[key] = jax.jit(core)
    return cache[key]


@dataclass(frozen=True)
class SimulationResult:
    """Region activity and TIA of one simulated patient.

    ``activity_mbq``: (n_radiopharmaceuticals, n_regions, n_times) MBq of labelled ligand;
    ``tia_mbq_h``: (n_radiopharmaceuticals, n_regions), integrated from the first
    administration to ``t_end_h``; ``administered_mbq``: (n_radiopharmaceuticals,).
    """

    model: Model = field(repr=False)
    params: np.ndarray = field(repr=False)
    regimen: Regimen
    times_h: np.ndarray
    activity_mbq: np.ndarray
    tia_mbq_h: np.ndarray
    administered_mbq: np.ndarray
    states: np.ndarray = field(repr=False)
    total_nmol: np.ndarray = field(repr=False)
    t_end_h: float = 0.0

    @property
    def regions(self) -> tuple[str, ...]:
        return self.model.regions

    @property
    def radiopharmaceuticals(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.model.radiopharmaceuticals)

    def _rp(self, radiopharmaceutical: str | None) -> int:
        names = self.radiopharmaceuticals
        if radiopharmaceutical is None:
            return 0
        if radiopharmaceutical.lower() not in names:
            raise InputError(f"{radiopharmaceutical} was not simulated; simulated: {names}")
        return names.index(radiopharmaceutical.lower())

    def tia(self, radiopharmaceutical: str | None = None) -> dict[str, float]:
        i = self._rp(radiopharmaceutical)
        return dict(zip(self.regions, map(float, self.tia_mbq_h[i])))

    def tiac_h(self, radiopharmaceutical: str | None = None) -> dict[str, float]:
        """TIA divided by the administered activity of that radiopharmaceutical (h)."""
        i = self._rp(radiopharmaceutical)
        return dict(zip(self.regions, map(float, self.tia_mbq_h[i] / self.administered_mbq[i])))

    def activity(self, region: str, radiopharmaceutical: str | None = None) -> np.ndarray:
        return self.activity_mbq[self._rp(radiopharmaceutical), self.regions.index(region)]

    def to_frame(self, radiopharmaceutical: str | None = None):
        """Tidy table: region, time_h, activity_mbq."""
        import pandas as pd

        i = self._rp(radiopharmaceutical)
        a = self.activity_mbq[i]
        return pd.DataFrame({
            "region": np.repeat(self.regions, len(self.times_h)),
            "time_h": np.tile(self.times_h, len(self.regions)),
            "activity_mbq": a.ravel(),
            "radiopharmaceutical": self.radiopharmaceuticals[i],
        })


def _as_model(model, regimen: Regimen, mode: str = "auto") -> Model:
    """Compile for the regimen. ``mode``: 'full', 'total' or 'auto' (total-ligand form when it
    is exact: one administration of one radiopharmaceutical and a symmetric model)."""
    from pbpk_models.model import total_form_applies

    if isinstance(model, str):
        from pbpk_models.library import build_spec

        model = build_spec(model)
    if isinstance(model, Model):
        spec, rps = model.spec, [r.name for r in model.radiopharmaceuticals]
        rps = tuple(dict.fromkeys(rps + list(regimen.radiopharmaceuticals)))
    elif isinstance(model, ModelSpec):
        spec, rps = model, regimen.radiopharmaceuticals
    else:
        raise InputError(f"model must be a model name, a ModelSpec or a compiled Model, "
                         f"got {model!r}")
    if mode == "auto":
        single = len(regimen.unique_times()) == 1 and len(regimen.radiopharmaceuticals) == 1
        mode = "total" if single and len(rps) == 1 and total_form_applies(spec) else "full"
    if isinstance(model, Model) and model.mode == mode and \
            tuple(r.name for r in model.radiopharmaceuticals) == tuple(rps):
        return model
    return compile_model(spec, tuple(rps), mode)


def prepare(model, regimen: Regimen, times_h=None, days: float = 60.0, mode: str = "auto"):
    """Compile for the regimen; return (model, admin_times, hot, cold, ts, t_end)."""
    model = _as_model(model, regimen, mode)
    admin_times, hot, cold = regimen.dose_arrays(model)
    if not np.isfinite(days) or days <= 0:
        raise InputError(f"days must be a positive number, got {days}")
    t_end = float(admin_times[-1] + u.days_to_h(days))
    if times_h is None:
        times_h = np.linspace(admin_times[0], t_end, 241)
    ts = np.asarray(times_h, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0 or not np.all(np.isfinite(ts)):
        raise InputError("times_h must be a non-empty 1-D array of finite times (h)")
    if np.any(ts > t_end + 1e-9):
        raise InputError(f"output times go beyond the simulated span (last administration + "
                         f"{days} d = {t_end:g} h); increase days")
    return model, admin_times, hot, cold, ts, t_end


def _params_vector(model: Model, params) -> np.ndarray:
    if params is None or isinstance(params, dict):
        return model.params_from(params)
    p = np.asarray(params, dtype=np.float64)
    if p.shape != (len(model.parameter_names),):
        raise InputError(f"params has shape {p.shape}; expected ({len(model.parameter_names)},)")
    return p


def simulate(model, regimen: Regimen, params=None, times_h=None, *, days: float = 60.0,
             settings: SolverSettings = SolverSettings(), mode: str = "auto") -> SimulationResult:
    """Simulate one patient.

    Args:
        model: a library model name (``'psma-pbrpk'``), a ModelSpec or a compiled Model.
        regimen: the administrations.
        params: free-parameter vector (canonical units) aligned with ``model.parameter_names``,
            or a {name: value} mapping of changes to the defaults; None for the defaults.
        times_h: output times (h, same origin as the regimen); default 241 points.
        days: simulated span after the last administration (d); TIA is integrated to its end.
        mode: 'auto' (default), 'full' or 'total' (see :func:`_as_model`).
    Returns:
        SimulationResult. Raises ModelError if the solver fails.
    """
    import jax.numpy as jnp

    require_x64("simulate")
    model, admin_times, hot, cold, ts, t_end = prepare(model, regimen, times_h, days, mode)
    p = _params_vector(model, params)
    model.check_params(p)
    core = jitted_core(model, len(admin_times), settings)
    out = core(jnp.asarray(p), jnp.asarray(admin_times), jnp.asarray(hot), jnp.asarray(cold),
               jnp.asarray(ts), jnp.asarray(t_end))
    if not bool(out["ok"]):
        raise ModelError("the ODE solver failed (step budget exhausted or non-finite values); "
                         "check the parameters, or raise SolverSettings.max_steps")
    # amounts below zero at the solver's absolute tolerance (e.g. 68Ga after 100 half-lives) are
    # numerical noise, not activity: set them to zero
    amounts = np.asarray(out["amounts"])  # (n_ts, n_rp, n_reg)
    amounts = np.where(amounts < 0, np.where(amounts > -100 * settings.atol, 0.0, amounts), amounts)
    activity = np.moveaxis(amounts, 0, -1) * model.mbq_per_nmol[:, None, None]
    tia = np.asarray(out["tia_nmol_h"]) * model.mbq_per_nmol[:, None]
    return SimulationResult(model, p, regimen, ts, activity, tia,
                            regimen.administered_mbq(model), np.asarray(out["states"]),
                            np.asarray(out["total_nmol"]), t_end)


# Populations use the Rosenbrock solver: 36x faster than a scipy LSODA loop under vmap on a
# 2-core CPU (benchmarks/RESULTS.md); it supports forward-mode derivatives only.
POPULATION_SETTINGS = SolverSettings(rtol=1e-6, atol=1e-9, method="rosenbrock")


def simulate_batch(model, regimen: Regimen, params_batch, times_h=None, *, days: float = 60.0,
                   settings: SolverSettings = POPULATION_SETTINGS, mode: str = "auto"):
    """Simulate many parameter vectors at once (one vmapped, jitted solve).

    Default solver: Rodas5P with the block-arrowhead linear solver (``POPULATION_SETTINGS``,
    rtol 1e-6); pass ``settings`` for another.

    Returns a dict: ``activity_mbq`` (batch, n_rp, n_regions, n_times), ``tia_mbq_h``
    (batch, n_rp, n_regions), ``ok`` (batch,) solver success per patient, ``model``,
    ``times_h``, ``administered_mbq``.
    """
    import jax.numpy as jnp

    require_x64("simulate_batch")
    model, admin_times, hot, cold, ts, t_end = prepare(model, regimen, times_h, days, mode)
    P = jnp.asarray(np.asarray(params_batch, dtype=np.float64))
    if P.ndim != 2 or P.shape[1] != len(model.parameter_names):
        raise InputError(f"params_batch must be (batch, {len(model.parameter_names)})")
    core = jitted_core(model, len(admin_times), settings, batched=True)
    out = core(P, jnp.asarray(admin_times), jnp.asarray(hot), jnp.asarray(cold), jnp.asarray(ts),
               jnp.asarray(t_end))
    activity = jnp.moveaxis(out["amounts"], 1, -1) * model.mbq_per_nmol[None, :, None, None]
    return {
        "model": model,
        "times_h": ts,
        "activity_mbq": activity,
        "tia_mbq_h": out["tia_nmol_h"] * model.mbq_per_nmol[None, :, None],
        "administered_mbq": regimen.administered_mbq(model),
        "ok": out["ok"],
    }
