"""Planning entry points on a twin, and adaptive re-planning between cycles.

:func:`replan`: after cycle k, the SPECT observations of the delivered cycles update the twin
(the previous posterior is the prior, :meth:`calibration.Posterior.as_prior`), the delivered
cycles are kept as they were given, and cycles k+1..N are re-optimised under the same limits
(:meth:`twin.planning.Planner.optimise` with ``fixed``). No lesion-response model (shrinkage
between cycles) is included: the project's references give no parameters for receptor loss
per Gy (the lesion dose-response data in population_radiobiology.md relate cycle-1 dose to
PSA or response odds, not to receptor amount), so it is left out rather than invented.
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


def plan_twin(posterior, limits, settings=None, **planner_kw):
    """Optimise a regimen for a twin (see :class:`twin.planning.Planner`)."""
    from .optimise import Planner

    return Planner(posterior, settings, **planner_kw).optimise(limits)


def delivered_cycles(regimen, observations, n_delivered: int | None = None):
    """Split a delivered/planned regimen into (delivered, remaining) administrations: by default
    the cycles given at or before the last observation time."""
    admins = regimen.administrations
    if n_delivered is None:
        t_obs = float(np.max(observations.time_h))
        n_delivered = sum(a.time_h <= t_obs for a in admins)
    if not 1 <= n_delivered <= len(admins):
        raise InputError(f"cannot tell which cycles were delivered: {n_delivered} of "
                         f"{len(admins)} (observations must come after the first cycle; give "
                         f"--delivered-cycles K)")
    return admins[:n_delivered], admins[n_delivered:]


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
    Returns:
        (Plan, updated Posterior).
    """
    from calibration import fit
    from pbpk_models.regimen import Regimen

    from .optimise import Planner, PlanSettings

    settings = settings or PlanSettings()
    done, todo = delivered_cycles(delivered, observations, n_delivered)
    rps = {a.radiopharmaceutical.lower() for a in done}
    if len(rps) != 1:
        raise InputError("the delivered regimen must be of one radiopharmaceutical")
    given = Regimen(tuple(done))
    t_last_obs = float(np.max(observations.time_h))
    if np.min(observations.time_h) < given.administrations[0].time_h:
        raise InputError("observations before the first delivered cycle: times are hours from "
                         "the first administration")
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
                   fixed=dict(posterior.fixed), **kw)
    planner = Planner(new_post, settings, radiopharmaceutical=next(iter(rps)), **planner_kw)
    plan = planner.optimise(limits, fixed=([a.time_h for a in done],
                                           [a.activity_mbq for a in done]),
                            start_h=next_h, max_cycles=n_left)
    return plan, new_post
