"""Planning entry points on a twin, and adaptive re-planning between cycles.

:func:`replan`: after cycle k, the SPECT observations of the delivered cycles update the twin
(the previous posterior is the prior, :meth:`calibration.Posterior.as_prior`), the delivered
cycles are kept as they were given, and cycles k+1..N are re-optimised under the same limits
(:meth:`twin.planning.Planner.optimise` with ``fixed``). An optional lesion response between
cycles (receptor loss lowering the lesion dose per GBq of later cycles) is passed through as
``lesion_response=`` to the Planner (:mod:`twin.planning.response`; default None: none).
"""

from __future__ import annotations

import numpy as np

from twin.errors import InputError


def posterior_from_prior(model_name: str = "psma-pbrpk", variant: str | None = None,
                         personal=None, theta=None):
    """A :class:`calibration.Posterior` equal to the population prior (a twin before any
    data; ``theta``: optional MAP of the log parameters, default the prior mean)."""
    from calibration import Posterior, default_prior, model_spec
    from calibration.fit import _resolve_model

    model_name, variant = _resolve_model(model_name, variant)
    spec = model_spec(model_name, variant)
    prior = default_prior(model_name, spec, personal)
    units = tuple(spec.parameter(n).unit for n in prior.names)
    th = prior.mean_log if theta is None else np.asarray(theta, float)
    return Posterior(model_name, variant, prior.names, units, th, prior.cov_log, prior)


def therapy_schedule(twin_regimen, radiopharmaceutical: str, interval_weeks: float,
                     start_h: float | None = None):
    """Where a plan made from a twin starts, on the twin's clock (hours from the first
    administration of the regimen the twin was fitted with, TWIN.json ``regimen``).

    * The twin already has cycles of the therapy radiopharmaceutical (e.g. fitted to cycle-1
      SPECT, as the demo's twin: PET at 0 h, 7.4 GBq at 168 h): those are delivered. They are
      kept as the first rows of the plan (times, activities and ligand amounts as given) and the
      first new cycle is one interval after the last of them (the twin's therapy time).
    * Only diagnostic administrations (a pre-therapy PET twin) or no regimen: the therapy has
      not started and its date is not in the twin; the first cycle is at the twin's last
      administration (t = 0 for a single PET at 0 h), i.e. PLAN.csv's clock starts with
      therapy cycle 1 - the clock that ``twin replan`` and OBS.csv use (hours from the first
      administration of the delivered regimen). The diagnostic tracer (a few nmol of another
      radiopharmaceutical) is not simulated with the therapy. Give ``start_h`` for the real
      date on the twin's clock (e.g. 168 h for a PET one week before).
    * An explicit ``start_h`` before 0 h, before the twin's last administration, or at or before
      its last therapy cycle is in the past: InputError.

    Returns ``(fixed, start_h)``: fixed = (times_h, activities_mbq, ligands_nmol) of the
    delivered therapy cycles (empty arrays when none).
    """
    from pbpk_models.radionuclides import parse_radiopharmaceutical

    rp = parse_radiopharmaceutical(radiopharmaceutical).name
    admins = () if twin_regimen is None else twin_regimen.administrations
    done = [a for a in admins if parse_radiopharmaceutical(a.radiopharmaceutical).name == rp]
    fixed = tuple(np.array([getattr(a, k) for a in done], float)
                  for k in ("time_h", "activity_mbq", "ligand_nmol"))
    t_last = max((a.time_h for a in admins), default=0.0)
    if start_h is None:
        start_h = done[-1].time_h + interval_weeks * 168.0 if done else max(t_last, 0.0)
        return fixed, float(start_h)
    start_h = float(start_h)
    if not np.isfinite(start_h) or start_h < 0:
        raise InputError(f"the first cycle at {start_h:g} h is in the past (before time 0); "
                         f"give a time >= 0 h on the twin's clock")
    if done and start_h <= done[-1].time_h:
        raise InputError(f"the first new cycle at {start_h:g} h is in the past: the twin already "
                         f"has {len(done)} cycle(s) of {rp} up to {done[-1].time_h:g} h (its "
                         f"fitted regimen); plan from a later time (default: "
                         f"{done[-1].time_h + interval_weeks * 168.0:g} h) or use twin replan")
    if start_h < t_last:
        raise InputError(f"the first cycle at {start_h:g} h is in the past: the twin's data end "
                         f"with an administration at {t_last:g} h; give --start-h >= {t_last:g}")
    return fixed, start_h


def plan_twin(posterior, limits, settings=None, *, twin_regimen=None, start_h=None,
              max_cycles: int | None = None, **planner_kw):
    """Optimise a regimen for a twin (see :class:`twin.planning.Planner`).

    With ``twin_regimen`` (the regimen in TWIN.json) the plan is on the twin's clock and starts
    at the twin's therapy time (:func:`therapy_schedule`); delivered therapy cycles are kept and
    count towards ``max_cycles`` (total; default ``settings.max_cycles``). Without it the first
    cycle is at ``start_h`` (default ``settings.start_h``, 0 h: the plan's clock starts with
    cycle 1).
    """
    from .optimise import Planner, PlanSettings

    settings = settings or PlanSettings()
    planner = Planner(posterior, settings, **planner_kw)
    n_total = settings.max_cycles if max_cycles is None else int(max_cycles)
    if twin_regimen is None:
        return planner.optimise(limits, start_h=start_h, max_cycles=n_total)
    fixed, start = therapy_schedule(twin_regimen, planner.rp, settings.interval_weeks, start_h)
    n_new = n_total - len(fixed[0])
    if n_new < 1:
        raise InputError(f"the twin already has {len(fixed[0])} cycle(s) of {planner.rp}; "
                         f"nothing left to plan with at most {n_total} cycles (raise "
                         f"--max-cycles)")
    return planner.optimise(limits, fixed=fixed if len(fixed[0]) else None, start_h=start,
                            max_cycles=n_new)


def delivered_cycles(regimen, observations, n_delivered: int | None = None):
    """Split a delivered/planned regimen into (delivered, remaining) administrations: by default
    the cycles given at or before the last observation time."""
    admins = regimen.administrations
    if not admins:
        raise InputError("the delivered regimen has no administration")
    t_first_obs = float(np.min(observations.time_h))
    if t_first_obs < admins[0].time_h:
        raise InputError(f"an observation at {t_first_obs:g} h is before the first delivered "
                         f"cycle at {admins[0].time_h:g} h: OBS.csv times are hours on the "
                         f"regimen's clock (from its first administration) and must follow the "
                         f"cycle they measure")
    if n_delivered is None:
        t_obs = float(np.max(observations.time_h))
        n_delivered = sum(a.time_h <= t_obs for a in admins)
    if not 1 <= n_delivered <= len(admins):
        raise InputError(f"cannot tell which cycles were delivered: {n_delivered} of "
                         f"{len(admins)} (observations must come after the first cycle; give "
                         f"--delivered-cycles K)")
    return admins[:n_delivered], admins[n_delivered:]


def _check_limit_regions(limits, posterior, repair_half_time_h=None):
    """Limits against the twin model's regions, before any fitting (cheap, clear errors)."""
    from calibration import model_spec
    from twin.dosimetry.organ import radiobiology_arrays

    from .limits import check_limits

    regions = tuple(model_spec(posterior.model_name, posterior.variant).regions)
    ab, tr, _ = radiobiology_arrays(regions, repair_half_time_h=repair_half_time_h)
    check_limits(limits, regions, {r for r, a, t in zip(regions, ab, tr)
                                   if np.isfinite(a) and np.isfinite(t)})


def replan(posterior, observations, delivered, limits, settings=None, *,
           n_delivered: int | None = None, max_cycles: int | None = None,
           next_h: float | None = None, fit_kw=None, **planner_kw):
    """Update the twin with the observations of the delivered cycles and re-optimise the rest.

    Args:
        posterior: the twin before these observations (its posterior becomes the prior).
        observations: ``calibration.Observations`` (time from the first delivered cycle).
        delivered: the regimen given so far (or the whole previous plan: the cycles after the
            last observation are treated as not yet given).
        limits: list of Limit or strings; settings: PlanSettings.
        max_cycles: total number of cycles (default: the previous plan's rows, at least k+1).
        next_h: time of the next cycle (default: the next planned row, else one interval after
            the last delivered cycle); must be after the last observation.
        planner_kw: Planner options (tissues, alpha_beta_gy, repair_half_time_h,
            lesion_response: a :mod:`twin.planning.response` model or spec, default None).
    Returns:
        (Plan, updated Posterior).
    """
    from calibration import fit
    from pbpk_models.regimen import Regimen

    from .optimise import Planner, PlanSettings

    settings = settings or PlanSettings()
    settings.validate()
    _check_limit_regions(limits, posterior, planner_kw.get("repair_half_time_h"))
    done, todo = delivered_cycles(delivered, observations, n_delivered)
    rps = {a.radiopharmaceutical.lower() for a in done}
    if len(rps) != 1:
        raise InputError("the delivered regimen must be of one radiopharmaceutical")
    given = Regimen(tuple(done))
    t_last_obs = float(np.max(observations.time_h))
    t_first_obs = float(np.min(observations.time_h))
    t_first = given.administrations[0].time_h
    if t_first_obs < t_first:
        raise InputError(f"an observation at {t_first_obs:g} h is before the first delivered "
                         f"cycle at {t_first:g} h: OBS.csv times are hours on the regimen's "
                         f"clock (from its first administration) and must follow the cycle "
                         f"they measure")
    n_total = max_cycles if max_cycles is not None else max(len(done) + len(todo), len(done) + 1)
    n_left = n_total - len(done)
    if n_left < 1:
        raise InputError(f"all {n_total} cycles are delivered; nothing to re-plan (raise "
                         f"--max-cycles)")
    interval_h = settings.interval_weeks * 168.0
    if next_h is None:
        next_h = todo[0].time_h if todo else done[-1].time_h + interval_h
    if next_h <= t_last_obs:
        raise InputError(f"the next cycle at {next_h:g} h is in the past (the last observation "
                         f"is at {t_last_obs:g} h); give a later time")
    kw = {"n_starts": 2, "max_nfev": 40}
    kw.update(fit_kw or {})
    new_post = fit(observations, given, posterior.model_name, variant=posterior.variant,
                   personal=posterior.names, prior=posterior.as_prior(),
                   fixed=dict(posterior.fixed),
                   region_groups=posterior.diagnostics.get("region_groups") or None, **kw)
    planner = Planner(new_post, settings, radiopharmaceutical=next(iter(rps)), **planner_kw)
    plan = planner.optimise(limits, fixed=([a.time_h for a in done],
                                           [a.activity_mbq for a in done],
                                           [a.ligand_nmol for a in done]),
                            start_h=next_h, max_cycles=n_left)
    return plan, new_post
