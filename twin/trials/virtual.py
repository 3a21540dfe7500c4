"""Virtual escalation trials and arm comparisons on a virtual population.

:func:`virtual_trial`: the population's course doses at every level (one batched solve of
``pool_size`` patients x levels, :func:`twin.trials.engine.level_doses`), per-patient outcomes
(:class:`twin.trials.outcomes.OutcomeModel`), then ``n_trials`` trials of the design drawing
their patients from that pool with replacement (:class:`twin.trials.designs.OutcomeStream`).
With ``dlt_probabilities`` the design runs on the given true rates instead (no solve).

:func:`compare_arms`: fixed activity (default 7.4 GBq per cycle over the population's schedule: x 6
every 6 weeks for mcrpc (VISION), x 4 every 8 weeks for net (NETTER-1)) against a dosimetry-guided
arm in which every virtual patient receives the largest activity per cycle in [lo, hi] (the
planner's bounds, ``twin.planning.PlanSettings().activity_gbq``, 3.7-11.1 GBq) for which the
planning limits (``twin.planning.default_limits()``: kidney BED 40 Gy, red-marrow dose 2 Gy) hold
over the course. The per-patient activity is found as the planner's surrogate does (per-cycle dose
and BED interpolated piecewise linearly in activity between simulated levels, with 0 at 0; the
largest feasible activity on a fine grid), vectorised over all patients, and then verified by a
second batched solve at the chosen activities; this is the planner's method with perfect knowledge
of each virtual patient's parameters (an oracle twin), not ``twin.planning.Planner`` itself (a
posterior per patient would cost a fit per virtual patient).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.errors import InputError

from .designs import OutcomeStream, max_patients_needed, run_design
from .engine import level_doses
from .outcomes import OutcomeModel, default_outcome_model
from .populations import sample


def check_levels(levels_gbq) -> np.ndarray:
    a = np.asarray(levels_gbq, dtype=np.float64)
    if a.ndim != 1 or a.size < 1:
        raise InputError("give at least one activity level (GBq)")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError(f"activity levels must be positive numbers of GBq, got {a.tolist()}")
    if np.any(np.diff(a) <= 0):
        raise InputError(f"activity levels must increase strictly, got {a.tolist()}; "
                         f"list them from lowest to highest")
    return a


def check_probabilities(p, n_levels: int) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != 1 or a.size != n_levels:
        raise InputError(f"give one DLT probability per level ({n_levels}), got {a.size}")
    if not np.all(np.isfinite(a)) or np.any((a < 0) | (a > 1)):
        raise InputError(f"DLT probabilities must be in [0, 1], got {a.tolist()}")
    return a


@dataclass
class VirtualTrial:
    """Results: ``results`` (designs.TrialResults), ``table`` (operating characteristics),
    ``pool`` (per-patient table at each level, or None), ``doses`` (LevelDoses or None)."""

    results: object
    table: object
    pool: object
    doses: object
    population: object


def virtual_trial(design: str, levels_gbq, *, population: str | None = None,
                  dlt_probabilities=None, n_trials: int = 1000, seed: int = 1,
                  pool_size: int = 200, outcome_model: OutcomeModel | None = None,
                  design_options: dict | None = None, cycle_mode: str = "superpose",
                  progress: bool = True, chunk_size: int = 64) -> VirtualTrial:
    """Simulate ``n_trials`` escalation trials (see the module docstring)."""
    import pandas as pd

    levels = check_levels(levels_gbq)
    if (population is None) == (dlt_probabilities is None):
        raise InputError("give either a population or true DLT probabilities, not both")
    if not isinstance(n_trials, (int, np.integer)) or n_trials < 1:
        raise InputError(f"n_trials must be a positive integer, got {n_trials!r}")
    opts = dict(design_options or {})
    need = max_patients_needed(design, levels.size, opts.get("max_patients", 30))
    extra, pool, doses, pop = None, None, None, None
    if dlt_probabilities is not None:
        p = check_probabilities(dlt_probabilities, levels.size)[None, :]
    else:
        pop = sample(population, pool_size, seed)
        doses = level_doses(pop, levels, cycle_mode=cycle_mode, progress=progress,
                            chunk_size=chunk_size)
        ok = doses.ok.all(axis=1)
        if not ok.all():
            import warnings

            warnings.warn(f"{(~ok).sum()} virtual patients failed to solve and are left out",
                          stacklevel=2)
        d = {k: v[ok] for k, v in doses.as_dict().items()}
        ev = (outcome_model or default_outcome_model(population)).evaluate(d)
        p = ev.pop("p_dlt")
        extra = ev
        rows = []
        for j, a in enumerate(levels):
            rows.append(pd.DataFrame({
                "patient": np.flatnonzero(ok), "level": j + 1, "activity_gbq": a,
                **{k: v[:, j] for k, v in d.items()}, "p_dlt": p[:, j],
                **{k: v[:, j] for k, v in ev.items()}}))
        pool = pd.concat(rows, ignore_index=True)
    stream = OutcomeStream.draw(p, int(n_trials), need, seed, extra=extra)
    res = run_design(design, stream, **opts)
    table = res.operating_characteristics()
    table.insert(1, "activity_gbq", levels)
    table.insert(5, "true_p_dlt", p.mean(axis=0))
    return VirtualTrial(res, table, pool, doses, pop)


def guided_activities(doses, levels_gbq, limits=None, bounds=None, grid_points: int = 741):
    """Largest activity per cycle in ``bounds`` meeting every limit, per patient (vectorised).

    ``doses``: LevelDoses at ``levels_gbq`` (n, L). Returns (activity (n,), feasible (n,)):
    infeasible patients (limit exceeded even at the lower bound) get the lower bound.
    """
    from twin.planning import PlanSettings, default_limits

    lo, hi = PlanSettings().activity_gbq if bounds is None else bounds
    limits = default_limits() if limits is None else limits
    key = {("Kidney", "bed_gy"): "kidney_bed_gy", ("Kidney", "dose_gy"): "kidney_dose_gy",
           ("RedMarrow", "dose_gy"): "marrow_dose_gy", ("SG", "dose_gy"): "salivary_dose_gy"}
    lv = np.concatenate([[0.0], np.asarray(levels_gbq, dtype=np.float64)])
    grid = np.linspace(lo, hi, grid_points)
    d = doses.as_dict()
    feasible_grid = np.ones((doses.kidney_bed_gy.shape[0], grid_points), dtype=bool)
    for lim in limits:
        q = d[key[(lim.region, lim.quantity)]]
        q = np.concatenate([np.zeros((q.shape[0], 1)), q], axis=1)
        # piecewise-linear interpolation for every patient at once (levels shared)
        j = np.clip(np.searchsorted(lv, grid, side="right") - 1, 0, lv.size - 2)
        t = (grid - lv[j]) / (lv[j + 1] - lv[j])
        val = q[:, j] * (1 - t) + q[:, j + 1] * t
        feasible_grid &= val <= lim.value
    any_ok = feasible_grid.any(axis=1)
    last = grid_points - 1 - np.argmax(feasible_grid[:, ::-1], axis=1)
    act = np.where(any_ok, grid[last], lo)
    return act, any_ok


def compare_arms(population: str = "mcrpc", n: int = 64, seed: int = 1,
                 fixed_gbq: float = 7.4, levels_gbq=(3.7, 5.55, 7.4, 9.25, 11.1),
                 outcome_model: OutcomeModel | None = None, progress: bool = True,
                 chunk_size: int = 64):
    """Fixed activity against the dosimetry-guided arm (module docstring) on ``n`` patients.

    Returns (summary table (one row per arm), per-patient table).
    """
    import pandas as pd

    levels = check_levels(levels_gbq)
    pop = sample(population, n, seed)
    om = outcome_model or default_outcome_model(population)
    at_levels = level_doses(pop, levels, progress=progress, chunk_size=chunk_size)
    act, feasible = guided_activities(at_levels, levels)
    fixed = level_doses(pop, [fixed_gbq], progress=progress, chunk_size=chunk_size)
    guided = level_doses(pop, act[:, None], progress=progress, chunk_size=chunk_size)
    rows, per = [], []
    for arm, d, a in (("fixed", fixed, np.full(n, fixed_gbq)), ("dosimetry-guided", guided, act)):
        dd = {k: v[:, 0] for k, v in d.as_dict().items()}
        ev = om.evaluate(dd)
        per.append(pd.DataFrame({"arm": arm, "patient": np.arange(n), "activity_gbq": a,
                                 **dd, **ev, "ok": d.ok[:, 0]}))
        over = {k: float(v.mean()) for k, v in ev.items() if k.startswith("over_")}
        rows.append({"arm": arm, "n_patients": n, "mean_activity_gbq": float(a.mean()),
                     "mean_course_gbq": float(a.mean() * d.n_cycles),
                     "kidney_bed_median_gy": float(np.median(dd["kidney_bed_gy"])),
                     "kidney_bed_p95_gy": float(np.percentile(dd["kidney_bed_gy"], 95)),
                     "marrow_dose_median_gy": float(np.median(dd["marrow_dose_gy"])),
                     "lesion_dose_median_gy": float(np.median(dd["lesion_dose_gy"])),
                     **over,
                     "mean_p_dlt": float(ev["p_dlt"].mean()),
                     "response_rate": float(ev["response"].mean()),
                     "infeasible_at_lower_bound": float((~feasible).mean()) if arm != "fixed"
                     else 0.0})
    return pd.DataFrame(rows), pd.concat(per, ignore_index=True)


def plot_operating_characteristics(table, path, title: str = ""):
    """Bar plot of P(select as MTD) and per-level DLT / response rates (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(table))
    lab = [f"{a:g}" for a in table["activity_gbq"]]
    ax[0].bar(x, table["p_select_mtd"], color="tab:blue")
    ax[0].set_xticks(x, lab)
    ax[0].set_xlabel("activity per cycle (GBq)")
    ax[0].set_ylabel("P(selected as MTD)")
    ax[1].plot(x, table["true_p_dlt"], "o-", label="true P(DLT)")
    ax[1].plot(x, table["p_dlt_observed"], "s--", label="observed DLT rate")
    if "rate_response" in table:
        ax[1].plot(x, table["rate_response"], "^-", label="response rate")
    for c in table.columns:
        if c.startswith("rate_over_kidney"):
            ax[1].plot(x, table[c], "v:", label="over kidney limit")
    ax[1].set_xticks(x, lab)
    ax[1].set_xlabel("activity per cycle (GBq)")
    ax[1].set_ylim(0, 1)
    ax[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_arms(per_patient, path, limit_gy: float = 40.0, n_cycles: int | None = None):
    """Kidney BED and lesion dose per patient in both arms over the course (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    arms = list(dict.fromkeys(per_patient["arm"]))
    course = f"{n_cycles} cycles" if n_cycles else "course"
    for k, key, lab in ((0, "kidney_bed_gy", f"kidney BED, {course} (Gy)"),
                        (1, "lesion_dose_gy", f"mean lesion dose, {course} (Gy)")):
        ax[k].boxplot([per_patient.loc[per_patient.arm == a, key] for a in arms])
        ax[k].set_xticks(range(1, len(arms) + 1), arms)
        ax[k].set_ylabel(lab)
    ax[0].axhline(limit_gy, color="r", ls="--", label=f"limit {limit_gy:g} Gy")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path):
    import io

    import matplotlib.pyplot as plt

    from twin.atomic import atomic_path

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
