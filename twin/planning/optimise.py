"""What-if dosimetry of a regimen on a twin, and the plan that maximises lesion dose under limits.

What-if (:meth:`Planner.what_if`): any regimen of the therapy radiopharmaceutical on the twin:
per cycle and cumulative TIA, dose and BED of every region (``twin.dosimetry.organ``), at the
MAP and over posterior samples (Laplace posterior, lognormal in the personal parameters), all in
one vmapped solve; saturable binding is kept (the full PBPK model, not a linear scaling).

Optimisation (:meth:`Planner.optimise`). Decision: number of cycles n <= ``max_cycles`` and the
activity of each new cycle in [lo, hi] GBq at a fixed interval; ligand amount by
``typical_ligand_nmol``. Objective: posterior mean of the cumulative lesion dose (or BED, when
the lesions have a repair half-time), averaged over lesions (``objective='mean'``) or of the
least-treated lesion (``'min'``). Constraints: for every limit, the ``quantile`` of the
posterior distribution of the cumulative quantity stays <= the limit.

Method (justified by the problem's structure, not by generality):
1. Surrogate: each cycle is simulated alone at ``levels`` activities from lo to hi for every
   posterior sample (one vmapped solve); per-cycle dose and BED are interpolated in activity
   (piecewise linear, with 0 at 0). Cycles 6 weeks apart barely interact (177Lu: 6.3 half-lives;
   receptors re-equilibrate within days), so the cumulative quantity of n cycles at activities
   a_k is sum_k d(a_k) (the per-cycle BED summation of ``twin.dosimetry.organ``).
2. Both objective and constraints increase monotonically with every cycle's activity, so for a
   given n the best common activity is the largest feasible one; it is found on a fine activity
   grid (exhaustive, no local optimum), for every n at once, and the best (n, a) is kept.
   Equal activities are the clinical form; with near-additive cycles and a concave per-cycle
   response (saturation), spreading the budget evenly is also what maximises the summed lesion
   dose (Jensen), so per-cycle refinement is not needed; gradients through the solve would
   only re-derive this 1-D boundary search.
3. Verification: the chosen regimen is simulated in full (all cycles in one solve, carry-over
   included). If a limit is exceeded (cross-cycle carry-over, interpolation), the surrogate's
   limit is tightened by the observed ratio and steps 2-3 repeat (at most ``max_corrections``
   times). A returned plan therefore always meets its limits in the full simulation.
:class:`~twin.errors.PlanInfeasible` names the violated limit when even one cycle at the lowest
activity exceeds it.

Adaptive re-planning (:func:`twin.planning.replan.replan`) uses ``fixed`` cycles: delivered
activities and times that enter every simulation but are not changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from twin.errors import InputError, PlanInfeasible

from .limits import Limit, check_limits


@dataclass(frozen=True)
class PlanSettings:
    """Bounds and numerics of the optimisation.

    activity_gbq: (lo, hi) per cycle, GBq (default 3.7-11.1: the range of 177Lu-PSMA-617 cycles
    in the clinic, e.g. 7.4 GBq in VISION; assumption of this project as bounds); max_cycles;
    interval_weeks between cycles; quantile of the posterior at which limits hold; objective
    'mean' or 'min' over lesions; n_samples posterior draws; levels activities of the
    surrogate; points_per_cycle of the dose-rate grid; start_h time of the first new cycle.
    """

    activity_gbq: tuple = (3.7, 11.1)
    max_cycles: int = 6
    interval_weeks: float = 6.0
    quantile: float = 0.95
    objective: str = "mean"
    n_samples: int = 48
    levels: int = 6
    points_per_cycle: int = 48
    seed: int = 0
    start_h: float = 0.0
    days: float = 60.0
    max_corrections: int = 6
    grid_points: int = 741
    # limits are enforced at value x (1 - numerical_margin): the BED integral on the 48-point
    # cycle grid differs from a dense grid by < 0.1% (tests/twin/dosimetry/test_organ.py), so
    # 0.5% keeps a plan within its limits under an independent re-simulation
    numerical_margin: float = 0.005

    def validate(self):
        lo, hi = self.activity_gbq
        for name, v in (("activity lower bound", lo), ("activity upper bound", hi)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InputError(f"{name} must be a positive number of GBq, got {v!r}")
        if lo > hi:
            raise InputError(f"contradictory activity bounds: lower {lo:g} GBq > upper {hi:g} GBq; "
                             f"give LO:HI with LO <= HI")
        if not isinstance(self.max_cycles, int) or self.max_cycles < 1:
            raise InputError(f"max_cycles must be a positive integer, got {self.max_cycles!r}")
        if not math.isfinite(self.interval_weeks) or self.interval_weeks <= 0:
            raise InputError(f"interval_weeks must be positive, got {self.interval_weeks}")
        if not 0.5 <= self.quantile < 1:
            raise InputError(f"quantile must be in [0.5, 1), got {self.quantile}")
        if self.objective not in ("mean", "min"):
            raise InputError(f"objective must be 'mean' or 'min', got {self.objective!r}")
        if self.n_samples < 8:
            raise InputError("n_samples must be at least 8 for a quantile")
        if self.levels < 2:
            raise InputError("levels must be at least 2")
        if not math.isfinite(self.start_h):
            raise InputError("start_h must be a finite time (h)")
        if self.start_h < 0:
            raise InputError(f"start_h {self.start_h:g} h is in the past (before time 0); give "
                             f"a time >= 0 h")


@dataclass
class Plan:
    """An optimised (or evaluated) regimen with its dosimetry.

    regimen: all cycles (fixed + new), a ``pbpk_models.regimen.Regimen``; n_fixed: how many
    leading cycles were given (delivered); doses: ``OrganDoses`` of the full simulation, row 0
    the MAP, rows 1.. posterior samples; limits, quantile; objective_gy: posterior mean of the
    objective; binding: the limit closest to its value; limit_values: {str(limit): quantile of
    the cumulative quantity}; corrections: verification rounds used.
    """

    regimen: object
    n_fixed: int
    doses: object
    limits: list
    quantile: float
    lesions: tuple
    lesion_metric: str
    objective_gy: float
    binding: str | None
    limit_values: dict
    corrections: int = 0
    settings: PlanSettings = field(default_factory=PlanSettings)

    @property
    def activities_mbq(self) -> np.ndarray:
        return np.array([a.activity_mbq for a in self.regimen.administrations])

    def to_frame(self):
        """PLAN.csv: time_h, radiopharmaceutical, activity_mbq, ligand_nmol (one row per cycle)."""
        return self.regimen.to_frame()

    def summary(self, level: float = 0.90):
        """SUMMARY.csv: per region cumulative dose and BED (MAP) with the equal-tailed
        ``level`` credible interval from the samples, the limit, the quantile value and the
        margin (limit - quantile value; >= 0 when met)."""
        import pandas as pd

        d = self.doses
        lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
        cd, cb = d.total("dose_gy"), d.total("bed_gy")
        samp = d.ok.copy()
        samp[0] = False
        rows = []
        lim_by_region = {}
        for lim in self.limits:
            lim_by_region.setdefault(lim.region, []).append(lim)
        for j, r in enumerate(d.regions):
            if not np.isfinite(d.masses_g[0, j]):
                continue
            row = {"region": r, "dose_gy": cd[0, j],
                   "dose_low": np.quantile(cd[samp, j], lo_q),
                   "dose_high": np.quantile(cd[samp, j], hi_q),
                   "bed_gy": cb[0, j],
                   "bed_low": np.quantile(cb[samp, j], lo_q) if np.isfinite(cb[0, j]) else np.nan,
                   "bed_high": np.quantile(cb[samp, j], hi_q) if np.isfinite(cb[0, j]) else np.nan,
                   "limit": "", "limit_gy": np.nan, "quantile": np.nan,
                   "quantile_value_gy": np.nan, "margin_gy": np.nan, "limit_source": "",
                   "lesion": r in self.lesions}
            for lim in lim_by_region.get(r, []):
                row.update({"limit": str(lim), "limit_gy": lim.value, "quantile": self.quantile,
                            "quantile_value_gy": self.limit_values[str(lim)],
                            "margin_gy": lim.value - self.limit_values[str(lim)],
                            "limit_source": lim.source})
                rows.append(dict(row))
            if r not in lim_by_region:
                rows.append(row)
        return pd.DataFrame(rows)


class Planner:
    """Dosimetry and optimisation of regimens for one twin (a ``calibration.Posterior``)."""

    def __init__(self, posterior, settings: PlanSettings | None = None, *,
                 radiopharmaceutical: str | None = None, lesions=None, tissues=None,
                 alpha_beta_gy=None, repair_half_time_h=None, solver_settings=None,
                 lesion_response=None):
        from calibration import model_spec
        from pbpk_models.model import compile_model, require_x64
        from pbpk_models.radionuclides import parse_radiopharmaceutical
        from pbpk_models.simulate import POPULATION_SETTINGS
        from twin.dosimetry.organ import lesion_regions, patient_params, radiobiology_arrays

        require_x64("planning")
        self.settings = settings or PlanSettings()
        self.settings.validate()
        self.posterior = posterior
        spec = model_spec(posterior.model_name, posterior.variant)
        rp = (radiopharmaceutical or spec.default_radiopharmaceutical).lower()
        self.rp = parse_radiopharmaceutical(rp).name
        self.model = compile_model(spec, (self.rp,), "full")
        self.regions = tuple(self.model.regions)
        self.lesions = tuple(lesions) if lesions else lesion_regions(self.regions)
        for r in self.lesions:
            if r not in self.regions:
                raise InputError(f"unknown lesion region {r!r}; regions: {', '.join(self.regions)}")
        if not self.lesions:
            raise InputError("the model has no lesion regions; name them with lesions=[...]")
        self.dose_kw = {"tissues": tissues, "alpha_beta_gy": alpha_beta_gy,
                        "repair_half_time_h": repair_half_time_h}
        ab, tr, _ = radiobiology_arrays(self.regions, **self.dose_kw)
        self.bed_regions = {r for r, a, t in zip(self.regions, ab, tr)
                            if np.isfinite(a) and np.isfinite(t)}
        self.lesion_metric = "bed_gy" if all(r in self.bed_regions for r in self.lesions) \
            else "dose_gy"
        self.solver = solver_settings or POPULATION_SETTINGS
        s = self.settings
        self.P = patient_params(self.model, posterior, s.n_samples, s.seed)
        self._surrogate = None
        # optional lesion response between cycles (twin.planning.response); None: unchanged
        from .response import lesion_parameter_index, parse_lesion_response

        self.lesion_response = parse_lesion_response(lesion_response)
        if self.lesion_response is not None:
            self._les_cols = np.array([self.regions.index(r) for r in self.lesions])
            self._rden_idx, self._v_idx = lesion_parameter_index(self.model.parameter_names,
                                                                 self.lesions)
            rp_src = self.lesion_response.radiopharmaceutical
            if rp_src is not None and rp_src != self.rp:
                import warnings

                warnings.warn(f"lesion response {self.lesion_response.describe()} was measured "
                              f"for {rp_src}, not {self.rp}", stacklevel=2)

    # -- dosimetry -----------------------------------------------------------------------
    def regimen(self, activities_mbq, times_h, ligands_nmol=None):
        """Regimen of the therapy radiopharmaceutical; ligand amounts from ``ligands_nmol``
        where given (finite: delivered cycles keep theirs), else ``typical_ligand_nmol``."""
        from pbpk_models.regimen import Administration, Regimen, typical_ligand_nmol

        admins = []
        given = [] if ligands_nmol is None else list(ligands_nmol)
        for k, (t, a) in enumerate(zip(times_h, activities_mbq)):
            lig = given[k] if k < len(given) and np.isfinite(given[k]) else \
                typical_ligand_nmol(self.rp, float(a))
            if lig is None:
                raise InputError(f"no typical ligand amount for {self.rp}")
            admins.append(Administration(float(t), self.rp, float(a), float(lig)))
        return Regimen(tuple(admins))

    def what_if(self, regimen, P=None):
        """OrganDoses of a regimen: row 0 the MAP, rows 1.. posterior samples (with a lesion
        response: cycle by cycle, :meth:`response_what_if`)."""
        if self.lesion_response is not None:
            adm = [a for a in regimen.administrations
                   if a.radiopharmaceutical.lower() == self.rp]
            return self.response_what_if([a.activity_mbq for a in adm], [a.time_h for a in adm],
                                         [a.ligand_nmol for a in adm], P)[0]
        return self._organ_doses(regimen, P)

    def response_what_if(self, activities_mbq, times_h, ligands_nmol=None, P=None):
        """(OrganDoses, states): every cycle simulated alone with the lesion parameters of its
        response state (``twin.planning.response.run_cycles``)."""
        from .response import run_cycles

        order = np.argsort(np.asarray(times_h, float), kind="stable")
        acts = np.asarray(activities_mbq, float)[order]
        times = np.asarray(times_h, float)[order]
        ligs = np.full(acts.shape, np.nan)  # missing/NaN: the typical amount (regimen())
        if ligands_nmol is not None:
            given = np.asarray(ligands_nmol, float)[:len(acts)]
            ligs[:len(given)] = given
        ligs = ligs[order]

        def one(a, lig, Pk):
            return self._organ_doses(self.regimen([a], [0.0], [lig]), Pk)

        return run_cycles(one, self.P if P is None else P, acts, times, ligs,
                          self.lesion_response, self._les_cols, self._rden_idx, self._v_idx)

    def _organ_doses(self, regimen, P=None):
        from twin.dosimetry.organ import organ_doses

        return organ_doses(self.model, regimen, self.P if P is None else P,
                           radiopharmaceutical=self.rp, points_per_cycle=self.settings.
                           points_per_cycle, days=self.settings.days, settings=self.solver,
                           **self.dose_kw)

    def padded_what_if(self, activities_mbq, times_h, n_total: int, extra_times_h,
                       ligands_nmol=None):
        """What-if of a regimen padded to ``n_total`` cycles with empty (0 MBq) cycles at
        ``extra_times_h`` (one compiled solve serves every plan length); the padding cycles'
        TIA, dose and BED (the tail of the last real cycle) are merged into the last real
        cycle."""
        import dataclasses

        n = len(activities_mbq)
        if n > n_total:
            raise InputError("more cycles than the padded length")
        if self.lesion_response is not None:  # cycles simulated one by one: no padding needed
            return self.response_what_if(activities_mbq, times_h, ligands_nmol)[0]
        acts = np.concatenate([activities_mbq, np.zeros(n_total - n)])
        times = np.concatenate([times_h, np.asarray(extra_times_h, float)[:n_total - n]])
        d = self.what_if(self.regimen(acts, times, ligands_nmol))
        if n == n_total:
            return d

        def merge(x):
            return np.concatenate([x[:, :n - 1], x[:, n - 1:].sum(axis=1, keepdims=True)],
                                  axis=1)

        return dataclasses.replace(d, tia_mbq_h=merge(d.tia_mbq_h), dose_gy=merge(d.dose_gy),
                                   bed_gy=merge(d.bed_gy), cycle_times_h=d.cycle_times_h[:n],
                                   activity_mbq=d.activity_mbq[:n])

    def _levels_mbq(self):
        lo, hi = self.settings.activity_gbq
        return np.unique(np.geomspace(lo, hi, self.settings.levels) * 1000.0)

    def surrogate(self):
        """Per-cycle dose and BED of one cycle alone at each activity level:
        (levels (K,), dose (K, n_rows, R), bed (K, n_rows, R))."""
        if self._surrogate is not None:
            return self._surrogate
        import jax.numpy as jnp

        from pbpk_models import radionuclides as rn
        from pbpk_models import units as u
        from pbpk_models.simulate import prepare
        from twin.dosimetry.organ import (_assemble, _mass_function, cycle_grid,
                                          organ_dosimetry_function, radiobiology_arrays)

        levels = self._levels_mbq()
        K, n = len(levels), self.P.shape[0]
        hots, colds = [], []
        for a in levels:
            _, at, hot, cold, _, t_end = prepare(self.model, self.regimen([a], [0.0]), None,
                                                 self.settings.days, mode="full")
            hots.append(hot)
            colds.append(cold)
        masses = _mass_function(self.model)(self.P)
        e = rn.energy_per_decay_mev(self.model.radiopharmaceuticals[0].nuclide)
        S = np.where(np.isfinite(masses), u.gy_per_mbq_h(e, 1.0) /
                     np.where(np.isfinite(masses), masses, 1.0), 0.0)
        ab, tr, tmap = radiobiology_arrays(self.regions, **self.dose_kw)
        mu = np.where(np.isfinite(tr), math.log(2.0) / np.where(np.isfinite(tr), tr, 1.0), 1.0)
        grid = cycle_grid(at, t_end, self.settings.points_per_cycle)
        f = organ_dosimetry_function(self.model, 1, self.settings.points_per_cycle, self.solver)
        Hot = np.repeat(np.stack(hots), n, axis=0)
        Cold = np.repeat(np.stack(colds), n, axis=0)
        out = f(jnp.asarray(np.tile(self.P, (K, 1))), jnp.asarray(Hot), jnp.asarray(Cold),
                jnp.asarray(np.tile(S, (K, 1))), jnp.asarray(grid), jnp.asarray(mu))
        res = _assemble(out, np.tile(masses, (K, 1)), np.tile(S, (K, 1)), ab, tr, self.regions,
                        self.rp, at, np.zeros(1), tmap)
        dose = res.dose_gy[:, 0, :].reshape(K, n, -1)
        bed = res.bed_gy[:, 0, :].reshape(K, n, -1)
        ok = res.ok.reshape(K, n).all(axis=0)
        self._surrogate = (levels, dose, bed, ok)
        return self._surrogate

    # -- optimisation -------------------------------------------------------------------
    def _response_objective(self, pc, mj, state0, n_max, interval_h):
        """Cumulative lesion metric of n = 1..n_max new cycles on the activity grid with the
        lesion response: (N, G, rows, L)."""
        from .response import search_factors

        d, b = pc["dose_gy"][:, :, mj], pc["bed_gy"][:, :, mj]
        g = search_factors(self.lesion_response, state0, d, b, n_max, interval_h)
        per = g * d if self.lesion_metric == "dose_gy" else g * d + g ** 2 * (b - d)
        return np.cumsum(per, axis=0)

    def _quantile(self, values, ok):
        """Posterior quantile over the sample rows (row 0 is the MAP)."""
        v = values[..., 1:]
        return np.quantile(v[..., ok[1:]], self.settings.quantile, axis=-1)

    def optimise(self, limits, *, fixed=None, start_h: float | None = None,
                 max_cycles: int | None = None) -> Plan:
        """The regimen maximising the lesion objective under ``limits``.

        ``fixed``: (times_h, activities_mbq[, ligands_nmol]) of delivered cycles (kept as
        given; ligand NaN or absent: the typical amount); new cycles start at ``start_h``
        (default: ``settings.start_h``, or one interval after the last fixed cycle) every
        ``interval_weeks``; at most ``max_cycles`` new cycles (default settings').
        """
        s = self.settings
        limits = check_limits(limits, self.regions, self.bed_regions)
        fixed_t, fixed_a = (np.zeros(0), np.zeros(0)) if fixed is None else \
            (np.asarray(fixed[0], float), np.asarray(fixed[1], float))
        fixed_l = np.full(fixed_t.shape, np.nan) if fixed is None or len(fixed) < 3 else \
            np.asarray(fixed[2], float)
        if fixed_t.shape != fixed_a.shape or fixed_t.shape != fixed_l.shape:
            raise InputError("fixed cycles need as many times as activities (and ligand amounts)")
        interval_h = s.interval_weeks * 168.0
        if start_h is None:
            start_h = fixed_t.max() + interval_h if fixed_t.size else s.start_h
        if not math.isfinite(start_h) or start_h < 0:
            raise InputError(f"the first new cycle at {start_h:g} h is in the past (before time "
                             f"0, the first administration); give a time >= 0 h")
        if fixed_t.size and start_h <= fixed_t.max():
            raise InputError(f"the next cycle at {start_h:g} h is in the past: the last delivered "
                             f"cycle was at {fixed_t.max():g} h; plan later cycles only")
        n_max = s.max_cycles if max_cycles is None else max_cycles
        if n_max < 1:
            raise InputError("no cycle left to plan (max_cycles reached)")
        new_times = start_h + interval_h * np.arange(n_max)
        n_total = len(fixed_t) + n_max
        levels, dose, bed, ok_s = self.surrogate()
        ridx = {r: j for j, r in enumerate(self.regions)}
        # fixed part: full simulation of the delivered cycles alone (rows: MAP + samples)
        resp_state = None
        if self.lesion_response is not None:
            from .response import ResponseState
            resp_state = ResponseState.initial(self.P.shape[0], len(self.lesions))
        if fixed_t.size:
            if resp_state is None:
                fd = self.padded_what_if(fixed_a, fixed_t, n_total, new_times, fixed_l)
            else:  # and the lesion state at the first new cycle
                fd, states = self.response_what_if(fixed_a, fixed_t, fixed_l)
                resp_state = self.lesion_response.advance(
                    states[-1], fd.dose_gy[:, -1][:, self._les_cols],
                    fd.bed_gy[:, -1][:, self._les_cols], float(start_h - fixed_t.max()))
            fixed_tot = {"dose_gy": fd.total("dose_gy"), "bed_gy": fd.total("bed_gy")}
            ok_s = ok_s & fd.ok
        else:
            z = np.zeros((self.P.shape[0], len(self.regions)))
            fixed_tot = {"dose_gy": z, "bed_gy": z}
        lo, hi = (v * 1000.0 for v in s.activity_gbq)
        grid = np.linspace(lo, hi, s.grid_points)
        lv = np.concatenate([[0.0], levels])

        def per_cycle(q):
            arr = {"dose_gy": dose, "bed_gy": bed}[q]
            full = np.concatenate([np.zeros((1,) + arr.shape[1:]), arr])       # (K+1, n, R)
            # interpolate each (row, region) curve on the activity grid: (G, n, R)
            idx = np.clip(np.searchsorted(lv, grid) - 1, 0, len(lv) - 2)
            w = ((grid - lv[idx]) / (lv[idx + 1] - lv[idx]))[:, None, None]
            return full[idx] * (1 - w) + full[idx + 1] * w

        pc = {q: per_cycle(q) for q in ("dose_gy", "bed_gy")}
        ncyc = np.arange(1, n_max + 1)[:, None, None, None]                    # (N, 1, 1, 1)
        scale = {str(lim): 1.0 for lim in limits}
        corrections = 0
        while True:
            feasible = np.ones((n_max, len(grid)), bool)
            worst = {}
            for lim in limits:
                j = ridx[lim.region]
                cum = fixed_tot[lim.quantity][None, None, :, j] + \
                    ncyc[..., 0] * pc[lim.quantity][None, :, :, j]              # (N, G, n)
                qv = self._quantile(cum, ok_s)                                 # (N, G)
                good = qv <= lim.value * scale[str(lim)] * (1 - s.numerical_margin)
                feasible &= good
                worst[str(lim)] = qv[0, 0]
            # feasibility must hold from the lowest activity up (monotone): keep the prefix
            feasible = np.cumprod(feasible, axis=1).astype(bool)
            if not feasible[0, 0]:
                bad = [lim for lim in limits if worst[str(lim)] > lim.value * scale[str(lim)]]
                names = ", ".join(f"{lim} (predicted {worst[str(lim)]:.3g} Gy at the "
                                  f"{s.quantile:g} quantile)" for lim in bad)
                what = "one more cycle" if fixed_t.size else "one cycle"
                raise PlanInfeasible(f"no regimen meets the limits: even {what} at the lowest "
                                     f"activity {lo / 1000:g} GBq exceeds {names}",
                                     binding_limit=str(bad[0]) if bad else None)
            mj = [ridx[r] for r in self.lesions]
            if resp_state is None:
                les = pc[self.lesion_metric][:, :, mj] * ncyc[..., 0][..., None] + \
                    fixed_tot[self.lesion_metric][None, None, :, mj]           # (N, G, n, L)
            else:  # cycle j's lesion dose ~ g_j x one cycle's (response.search_factors)
                les = self._response_objective(pc, mj, resp_state, n_max, interval_h) + \
                    fixed_tot[self.lesion_metric][None, None, :, mj]
            les = les.min(axis=-1) if s.objective == "min" else les.mean(axis=-1)
            obj = les[..., 1:][..., ok_s[1:]].mean(axis=-1)                   # (N, G)
            obj = np.where(feasible, obj, -np.inf)
            n_best, g_best = np.unravel_index(np.argmax(obj), obj.shape)
            n_new, a_new = int(n_best) + 1, float(grid[g_best])
            acts = np.concatenate([fixed_a, np.full(n_new, a_new)])
            times = np.concatenate([fixed_t, new_times[:n_new]])
            reg = self.regimen(acts, times, fixed_l)
            doses = self.padded_what_if(acts, times, n_total, new_times[n_new:], fixed_l)
            values, violated = {}, []
            for lim in limits:
                j = ridx[lim.region]
                values[str(lim)] = float(self._quantile(doses.total(lim.quantity)[:, j],
                                                        doses.ok))
                if values[str(lim)] > lim.value * (1 - s.numerical_margin):
                    violated.append(lim)
            if not violated:
                break
            corrections += 1
            if corrections > s.max_corrections:
                raise PlanInfeasible(
                    f"the surrogate plan kept exceeding {violated[0]} in the full simulation "
                    f"after {s.max_corrections} corrections", binding_limit=str(violated[0]))
            for lim in violated:  # tighten by the observed ratio, with 0.2% to spare
                scale[str(lim)] *= lim.value * (1 - s.numerical_margin) / values[str(lim)] * 0.998
        les_full = doses.total(self.lesion_metric)[:, [ridx[r] for r in self.lesions]]
        les_full = les_full.min(axis=1) if s.objective == "min" else les_full.mean(axis=1)
        keep = doses.ok.copy()
        keep[0] = False
        margins = {str(lim): (lim.value - values[str(lim)]) / lim.value for lim in limits}
        binding = min(margins, key=margins.get)
        return Plan(reg, len(fixed_t), doses, limits, s.quantile, self.lesions,
                    self.lesion_metric, float(les_full[keep].mean()), binding, values,
                    corrections, s)
