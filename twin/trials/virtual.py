"""Virtual escalation trials and arm comparisons on a virtual population.

:func:`virtual_trial`: the population's course doses at every level (one batched solve of
``pool_size`` patients x levels, :func:`twin.trials.engine.level_doses`), per-patient outcomes
(:class:`twin.trials.outcomes.OutcomeModel`), then ``n_trials`` trials of the design drawing
their patients from that pool with replacement (:class:`twin.trials.designs.OutcomeStream`).
With ``dlt_probabilities`` the design runs on the given true rates instead (no solve).

:func:`compare_arms`: three arms on the same ``n`` virtual patients, over the population's
schedule (mcrpc: 6 cycles every 6 weeks, VISION; net: 4 every 8 weeks, NETTER-1):

- ``fixed``: 7.4 GBq per cycle for everybody;
- ``twin-guided`` (the clinic's arm, :func:`imaged_twins` + :func:`twin_guided_activities`):
  every virtual patient gets a pre-therapy PET (68Ga-PSMA-11 150 MBq / 3 nmol for mcrpc; region
  activities of Kidney, SG, Liver and the three lesion regions at 1 h, or at the given times;
  net: 68Ga-DOTATATE 150 MBq / 8.6 nmol, Spleen instead of SG; see :data:`IMAGING`),
  simulated from the patient's TRUE parameters with the project's noise model
  (``calibration.synthetic_observations``, organ and lesion classes of
  ``calibration.noise_model``). What a clinic measures is taken as known exactly: body weight,
  BSA, GFR (``TER_Kidney``), kidney and lesion volumes (CT); the personal parameters
  (mcrpc: ``calibration.priors.PERSONAL``: kidney, salivary-gland and lesion receptor
  densities, kidney and SG release rates; net: lesion, spleen and liver receptor densities,
  kidney trapped-pool release and f_exc, with the population's distributions as prior) are
  fitted (``calibration.fit``, noise='model', population prior
  ``calibration.priors.default_prior``; one start, four on failure). S draws of each patient's
  Laplace posterior (``twin.dosimetry.organ.patient_params``, i.e. ``Posterior.sample_log``, as
  the planner draws them) go through ONE batched :func:`~twin.trials.engine.level_doses` (n x S
  rows at every level); the per-patient quantile ``q`` (``twin.planning.PlanSettings().quantile``,
  0.95) of each limited quantity at each level is what the planner's limits are held at; the
  largest activity in the bounds meeting every limit at that quantile (:func:`guided_activities`
  on the quantile doses) is given, and the TRUE patient is simulated at it. A failed fit is a
  warning; the patient gets the lower activity bound and is counted (``fit_failed``);
- ``oracle-guided`` (an upper bound, not a clinical arm): the same rule applied to the patient's
  TRUE parameters (perfect knowledge; the planner's surrogate without a posterior).

The activity rule of both guided arms is the planner's surrogate (``twin.planning.optimise``:
course dose and BED interpolated piecewise linearly in activity between simulated levels, with 0
at 0; the largest feasible activity on a fine grid), vectorised over all patients. The twin arm
interpolates the per-level quantiles (the planner takes the quantile after interpolating each
draw; the two coincide when a draw's ranking does not change between levels, e.g. doses linear
in activity). Neither applies the planner's 0.5% numerical margin. All chosen activities are
verified on the true patients by one final batched solve (fixed, oracle and twin activities as
three columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.errors import FitError, InputError, TwinError

from .designs import OutcomeStream, max_patients_needed, run_design
from .engine import LevelDoses, level_doses
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
    grid = np.linspace(lo, hi, grid_points)
    d = doses.as_dict()
    feasible_grid = np.ones((doses.kidney_bed_gy.shape[0], grid_points), dtype=bool)
    for lim in limits:
        val = _interp_levels(d[key[(lim.region, lim.quantity)]], levels_gbq, grid)
        feasible_grid &= val <= lim.value
    any_ok = feasible_grid.any(axis=1)
    last = grid_points - 1 - np.argmax(feasible_grid[:, ::-1], axis=1)
    act = np.where(any_ok, grid[last], lo)
    return act, any_ok


@dataclass(frozen=True)
class Imaging:
    """Pre-therapy imaging of a population's virtual patients and what the twin fits.

    ``pet``: imaging radiopharmaceutical; ``pet_mbq``, ``pet_nmol``: its administration;
    ``regions``: regions segmented on every scan; ``known``: parameters a clinic measures and the
    fit takes as given (``fixed``); ``personal``: fitted parameters (None: the model's
    declaration, ``calibration.priors.PERSONAL``); ``model``, ``variant``: the library model.
    """

    model: str
    variant: str
    pet: str
    pet_mbq: float
    pet_nmol: float
    regions: tuple
    known: tuple
    personal: tuple | None = None
    prior_cv: dict | None = None   # {name: (mean or None for the model default, CV)}

    def prior(self, spec):
        """The population prior of the fitted parameters (``calibration.default_prior``)."""
        from calibration import default_prior

        over = None
        if self.prior_cv:
            d = spec.default_values()
            over = {k: (d[k] if m is None else m, cv) for k, (m, cv) in self.prior_cv.items()}
        return default_prior(self.model, spec, self.personal, over)


_KNOWN = ("bodyWeight", "bodySurfaceArea", "TER_Kidney", "V_Kidney", "V_Tumor1", "V_Tumor2",
          "V_TumorRest")


def _net_prior_cv():
    """The net population's own distributions as the twin's prior (twin.trials.populations):
    lesion Rden 34 +/- 20 nmol/L (Jimenez-Franco 2021), spleen/liver Rden CVs (Clin Nucl Med
    2013, derived), kidney trapped-pool release CV 0.37 (derived from T_eff 56 +/- 13 h, Spink
    2024; benchmarks/validate_stp.py), f_exc: the reabsorbed fraction 1 - f_exc has mean 0.03
    and CV 0.20 (assumed in the population), i.e. f_exc CV 0.2 x 0.03 / 0.97 (a lognormal on
    f_exc instead of on 1 - f_exc: an approximation of this prior)."""
    from .populations import NET_REABSORBED_CV, NET_RDEN_CV, NET_RDEN_TUMOUR

    m, sd = NET_RDEN_TUMOUR
    cv = {f"Rden_{r}": (m, sd / m) for r in ("Tumor1", "Tumor2", "TumorRest")}
    cv.update({k: (None, v) for k, v in NET_RDEN_CV.items()})
    cv["lambdaRel_KidneyTrap"] = (None, 0.37)
    cv["f_exc"] = (None, NET_REABSORBED_CV * 0.03 / 0.97)
    return cv


# the amounts and scan design of benchmarks/validate_calibration.py and validate_stp.py:
# 68Ga-PSMA-11 150 MBq (~2 MBq/kg x 75 kg, EANM/SNMMI guideline, Fendler et al., EJNMMI
# 2017;44:1014), 3 nmol (Begum et al., Sci Rep 2019; pbpk_models.regimen.TYPICAL_NMOL), PET 60 min
# p.i. (same guideline); regions: the ones segmented in the calibration cohort.
# net: 68Ga-DOTATATE 150 MBq (100-200 MBq, Bozkurt MF et al., EANM/SNMMI guideline, EJNMMI
# 2017;44:1588), 8.6 nmol (Siebinga et al. 2021; pbpk_models.regimen.TYPICAL_NMOL), as
# benchmarks/validate_stp.py; calibration declares no personal parameters for sstr: the net
# population's varying parameters that imaging can inform are fitted (prior: _net_prior_cv).
IMAGING = {
    "mcrpc": Imaging("psma-pbrpk", "corrected", "ga68-psma-11", 150.0, 3.0,
                     ("Kidney", "SG", "Liver", "Tumor1", "Tumor2", "TumorRest"), _KNOWN),
    "net": Imaging("sstr", "corrected", "ga68-dotatate", 150.0, 8.6,
                   ("Kidney", "Spleen", "Liver", "Tumor1", "Tumor2", "TumorRest"), _KNOWN,
                   ("Rden_Tumor1", "Rden_Tumor2", "Rden_TumorRest", "Rden_Spleen", "Rden_Liver",
                    "lambdaRel_KidneyTrap", "f_exc"), _net_prior_cv()),
}
# "pet": pre-therapy PET only, all cycles planned from it. "pet+spect24h": the PET, then a first
# cycle at the fixed activity one week later (the PET-to-therapy interval of
# benchmarks/validate_calibration.py) with a quantitative SPECT 24 h after it (an early time
# point of the EANM 177Lu-PSMA dosimetry guidance, Sjogreen Gleisner et al., EJNMMI Phys
# 2022;9:30); the twin fitted to both sets cycles 2..N.
PROTOCOLS = ("pet", "pet+spect24h")
DEFAULT_PET_TIMES_H = (1.0,)
THERAPY_AFTER_PET_H = 168.0
SPECT_TIMES_H = {"pet": (), "pet+spect24h": (24.0,)}


@dataclass
class ImagedTwins:
    """One fitted twin per virtual patient: ``posteriors`` (None where the fit failed),
    ``errors`` (message or ''), ``fit_seconds`` per patient, ``imaging`` and ``protocol``."""

    posteriors: list
    errors: list
    fit_seconds: np.ndarray
    imaging: Imaging
    protocol: str
    pet_times_h: tuple
    first_gbq: float | None = None   # cycle 1 given before planning (pet+spect24h), GBq

    @property
    def failed(self) -> np.ndarray:
        return np.array([p is None for p in self.posteriors])


def _check_protocol(population, protocol, pet_times_h):
    from .populations import radiopharmaceutical_of

    name = str(getattr(population, "name", population)).lower()
    radiopharmaceutical_of(name)       # InputError for an unknown population
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown imaging protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if name not in IMAGING:
        raise InputError(f"no pre-therapy imaging is defined for population {name!r}; the "
                         f"imaged-twin arm is available for {', '.join(IMAGING)}")
    t = np.asarray(pet_times_h if pet_times_h is not None else DEFAULT_PET_TIMES_H, float)
    if t.ndim != 1 or t.size < 1 or not np.all(np.isfinite(t)) or np.any(t <= 0) or \
            np.unique(t).size != t.size:
        raise InputError(f"PET times must be distinct positive hours after the PET injection, "
                         f"got {np.atleast_1d(t).tolist()}")
    return IMAGING[name], tuple(float(x) for x in np.sort(t))


def _check_draws_quantile(n_draws, quantile) -> float:
    """Posterior draws per patient (>= 2) and the quantile (default the planner's); returns q."""
    from twin.planning import PlanSettings

    if not isinstance(n_draws, (int, np.integer)) or n_draws < 2:
        raise InputError(f"n_draws must be an integer >= 2 (posterior draws per patient for the "
                         f"quantile), got {n_draws!r}")
    q = PlanSettings().quantile if quantile is None else float(quantile)
    if not 0.5 <= q < 1:
        raise InputError(f"quantile must be in [0.5, 1), got {q}")
    return q


def imaged_twins(population, *, protocol: str = "pet", pet_times_h=None, seed: int = 0,
                 progress: bool = True, max_nfev: int = 60,
                 first_gbq: float = 7.4) -> ImagedTwins:
    """Synthetic pre-therapy imaging of every virtual patient and its calibrated twin.

    Per patient (a plain loop: one scipy 'trf' fit each): ``calibration.synthetic_observations``
    of the PET from the patient's true personal parameters (noise seed from ``seed``), then
    ``calibration.fit`` (noise='model', population prior, the ``known`` covariates fixed at the
    patient's values; one start, four if that does not converge). A failed fit gives a
    warning and ``None``; it never stops the cohort. ``protocol='pet+spect24h'`` adds a first
    therapy cycle of ``first_gbq`` one week after the PET and a SPECT of the same regions 24 h
    after it (both radiopharmaceuticals fitted together, uncoupled: calibration.fit).
    """
    import time
    import warnings

    from calibration import fit, model_spec, synthetic_observations
    from pbpk_models.regimen import Administration, Regimen

    img, times = _check_protocol(population, protocol, pet_times_h)
    spec = model_spec(img.model, img.variant)
    prior = img.prior(spec)
    names = list(population.model.parameter_names)
    P = population.params
    admins = [Administration(0.0, img.pet, img.pet_mbq, img.pet_nmol)]
    design = [(r, t, img.pet, "PET") for t in times for r in img.regions]
    spect = SPECT_TIMES_H[protocol]
    if spect:
        if not (isinstance(first_gbq, (int, float)) and np.isfinite(first_gbq) and first_gbq > 0):
            raise InputError(f"the first cycle's activity must be a positive number of GBq, got "
                             f"{first_gbq!r}")
        from .engine import nmol_per_cycle

        rp = population.model.radiopharmaceuticals[0].name
        hot, cold = nmol_per_cycle(population.model, np.array([first_gbq * 1000.0]))
        admins.append(Administration(THERAPY_AFTER_PET_H, rp, float(first_gbq) * 1000.0,
                                     float(hot[0] + cold[0])))
        design += [(r, THERAPY_AFTER_PET_H + t, rp, "SPECT") for t in spect
                   for r in img.regions]
    regimen = Regimen(tuple(admins))
    obs_seeds = np.random.default_rng([int(seed), 8]).integers(0, 2 ** 31 - 1, size=P.shape[0])
    posts, errors, secs = [], [], np.zeros(P.shape[0])
    it = range(P.shape[0])
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="imaged twins (fits)", unit="patient", leave=False)
    for i in it:
        t0 = time.perf_counter()
        truth = {k: float(P[i, names.index(k)]) for k in prior.names}
        fixed = {k: float(P[i, names.index(k)]) for k in img.known}
        post, err = None, ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obs = synthetic_observations(regimen, design, truth, img.model,
                                             variant=img.variant, fixed=fixed,
                                             seed=int(obs_seeds[i]))
                for n_starts in (1, 4):
                    try:
                        post = fit(obs, regimen, img.model, variant=img.variant, fixed=fixed,
                                   prior=prior, noise="model", n_starts=n_starts, seed=i,
                                   max_nfev=max_nfev)
                        break
                    except FitError as exc:
                        err = str(exc)
        except (TwinError, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            post, err = None, f"{type(exc).__name__}: {exc}"
        if post is not None:
            err = ""
        else:
            warnings.warn(f"virtual patient {i}: the imaged twin's fit failed ({err[:200]}); "
                          f"the patient gets the lower activity bound", stacklevel=2)
        posts.append(post)
        errors.append(err)
        secs[i] = time.perf_counter() - t0
    return ImagedTwins(posts, errors, secs, img, protocol, times,
                       float(first_gbq) if spect else None)


def twin_guided_activities(population, twins: ImagedTwins, levels_gbq, *, n_draws: int = 32,
                           quantile: float | None = None, limits=None, bounds=None,
                           seed: int = 0, chunk_size: int = 64, progress: bool = True,
                           cycle_mode: str = "superpose"):
    """Activities per cycle chosen from each patient's twin (module docstring).

    The S = ``n_draws`` posterior draws of every successfully fitted patient go through one
    batched ``level_doses`` (rows = patients x draws, at every level); per patient and level the
    ``quantile`` (default ``PlanSettings().quantile``) of each dose/BED over the draws whose
    solve succeeded; :func:`guided_activities` on those quantile doses. Returns a dict:
    ``activity_gbq`` (n,), ``feasible`` (n,) (limits met at the lower bound), ``failed`` (n,)
    (no twin: the fit failed, or fewer than 2 draws solved; these get the lower bound),
    ``quantile_doses`` (LevelDoses (n, L), NaN rows for failed patients).
    """
    from dataclasses import replace

    from twin.dosimetry.organ import patient_params

    levels = check_levels(levels_gbq)
    q = _check_draws_quantile(n_draws, quantile)
    n = population.params.shape[0]
    if len(twins.posteriors) != n:
        raise InputError(f"{len(twins.posteriors)} twins for {n} virtual patients")
    fitted = np.flatnonzero(~twins.failed)
    draw_doses = first = None
    first_gbq = twins.first_gbq
    if first_gbq is not None and cycle_mode != "superpose":
        raise InputError("a first cycle before planning (pet+spect24h) needs cycle_mode="
                         "'superpose'")
    if fitted.size:
        rows = np.concatenate([
            patient_params(population.model, twins.posteriors[i], n_draws,
                           seed=int(seed) * 100003 + int(i))[1:] for i in fitted])
        solve_at = levels if first_gbq is None else np.append(levels, first_gbq)
        draw_doses = level_doses(replace(population, params=rows), solve_at,
                                 cycle_mode=cycle_mode, progress=progress,
                                 chunk_size=chunk_size)
        if first_gbq is not None:   # the last column: cycle 1 at first_gbq
            first = _columns(draw_doses, [levels.size])
            draw_doses = _columns(draw_doses, np.arange(levels.size))
    return quantile_guided(draw_doses, fitted, n, n_draws, levels, quantile=q, limits=limits,
                           bounds=bounds, n_cycles=int(population.n_cycles),
                           cycle_mode=cycle_mode, first_cycle=first)


def _columns(d, cols) -> LevelDoses:
    """The activity columns ``cols`` of LevelDoses ``d``."""
    from dataclasses import replace

    a = np.asarray(d.activities_gbq)
    return replace(d, activities_gbq=a[..., cols], ok=d.ok[:, cols],
                   **{k: v[:, cols] for k, v in d.as_dict().items()})


def after_first_cycle(course, first, n_cycles: int) -> dict:
    """Course quantities when cycle 1 is given at a fixed activity and cycles 2..N at the level.

    ``course``, ``first``: dicts of superposed course totals (N x one cycle), (rows, L) and
    (rows, 1). Course = first / N + (N - 1) / N x course(level); the cycle-1 lesion dose is
    cycle 1's."""
    N = float(n_cycles)
    out = {k: first[k] / N + (N - 1.0) / N * v for k, v in course.items()}
    out["lesion_dose_c1_gy"] = np.broadcast_to(first["lesion_dose_c1_gy"],
                                               course["lesion_dose_c1_gy"].shape).copy()
    return out


def quantile_guided(draw_doses, fitted, n: int, n_draws: int, levels_gbq, *,
                    quantile: float | None = None, limits=None, bounds=None,
                    n_cycles: int = 6, cycle_mode: str = "superpose",
                    first_cycle=None) -> dict:
    """The planner's rule on posterior draws: per patient and level the ``quantile`` of each
    dose/BED over the draws that solved, then :func:`guided_activities` on those doses.

    ``draw_doses``: LevelDoses of ``len(fitted) * n_draws`` rows (patient-major: the draws of
    ``fitted[0]`` first) at ``levels_gbq``, or None when no patient has a twin; ``fitted``:
    indices (into ``n`` patients) of the patients with a twin. Patients without a twin, or with
    fewer than 2 solved draws, are ``failed`` and get the lower bound. ``first_cycle``:
    LevelDoses (rows, 1) of cycle 1 given at a fixed activity before planning; the levels are
    then the activity of cycles 2..N (:func:`after_first_cycle`; the lower bound must be a
    level, as the interpolation's 0 at 0 no longer holds). Returns the dict of
    :func:`twin_guided_activities`.
    """
    import warnings

    from twin.planning import PlanSettings

    levels = check_levels(levels_gbq)
    q = _check_draws_quantile(n_draws, quantile)
    fitted = np.asarray(fitted, dtype=int).reshape(-1)
    lo = (PlanSettings().activity_gbq if bounds is None else bounds)[0]
    if first_cycle is not None and lo < levels[0] - 1e-12:
        raise InputError(f"with a first cycle given, the lowest level ({levels[0]:g} GBq) must "
                         f"not exceed the lower activity bound ({lo:g} GBq)")
    L = levels.size
    keys = ("kidney_bed_gy", "kidney_dose_gy", "marrow_dose_gy", "salivary_dose_gy",
            "lesion_dose_gy", "lesion_dose_c1_gy")
    qd = {k: np.full((n, L), np.nan) for k in keys}
    n_ok = np.zeros(n, dtype=int)
    if fitted.size:
        if draw_doses is None or draw_doses.kidney_bed_gy.shape != (fitted.size * n_draws, L):
            raise InputError(f"expected doses of {fitted.size} x {n_draws} draws at {L} levels")
        ok = draw_doses.ok.reshape(fitted.size, n_draws, L)
        values = draw_doses.as_dict()
        if first_cycle is not None:
            if first_cycle.kidney_bed_gy.shape != (fitted.size * n_draws, 1):
                raise InputError("first_cycle needs one column per draw row")
            values = after_first_cycle(values, first_cycle.as_dict(), n_cycles)
            ok = ok & first_cycle.ok.reshape(fitted.size, n_draws, 1)
        n_ok[fitted] = ok.all(axis=2).sum(axis=1)
        for k, v in values.items():
            v = np.where(ok, v.reshape(fitted.size, n_draws, L), np.nan)
            with warnings.catch_warnings():   # all-NaN patients: handled as failed below
                warnings.simplefilter("ignore", RuntimeWarning)
                qd[k][fitted] = np.nanquantile(v, q, axis=1)
    failed = np.ones(n, dtype=bool)
    failed[fitted] = False
    failed |= n_ok < 2
    for k in qd:
        qd[k][failed] = np.nan
    quantile_doses = LevelDoses(levels, **qd, ok=np.repeat(~failed[:, None], L, axis=1),
                                n_cycles=n_cycles, cycle_mode=cycle_mode)
    act, feasible = guided_activities(quantile_doses, levels, limits=limits, bounds=bounds)
    act = np.where(failed, lo, act)
    return {"activity_gbq": act, "feasible": feasible & ~failed, "failed": failed,
            "quantile_doses": quantile_doses, "quantile": q, "n_draws": int(n_draws),
            "draws_ok": n_ok}


def compare_arms(population: str = "mcrpc", n: int = 64, seed: int = 1,
                 fixed_gbq: float = 7.4, levels_gbq=(3.7, 5.55, 7.4, 9.25, 11.1),
                 outcome_model: OutcomeModel | None = None, progress: bool = True,
                 chunk_size: int = 64, imaged: bool = True, protocol: str = "pet",
                 pet_times_h=None, n_draws: int = 32, quantile: float | None = None):
    """Fixed activity, the imaged-twin guided arm and the oracle (module docstring) on the same
    ``n`` virtual patients (``imaged=False``: fixed and oracle only, no fits).

    ``protocol``: ``'pet'`` (pre-therapy PET at ``pet_times_h``, default 1 h; arm
    ``twin-guided``) or ``'pet+spect24h'`` (PET, then cycle 1 at ``fixed_gbq`` with a SPECT 24 h
    after it; the twin fitted to both sets cycles 2..N; arm ``twin-guided (pet+spect24h)``, whose
    ``activity_gbq`` is the course mean per cycle and ``activity_cycles_2_n_gbq`` the planned
    one). ``n_draws`` posterior draws per patient; limits at ``quantile`` (default
    ``PlanSettings().quantile``).

    Returns (summary table (one row per arm), per-patient table). Summary columns: arm,
    n_patients, mean activity per cycle and over the course, kidney BED median / 95th pct,
    marrow and lesion dose medians, over-limit shares, mean P(DLT), response rate, share
    infeasible at the lower bound, share of failed fits (twin arm), fit seconds (median).
    """
    import warnings

    import pandas as pd

    levels = check_levels(levels_gbq)
    if imaged:
        _check_protocol(population, protocol, pet_times_h)
        _check_draws_quantile(n_draws, quantile)
    if not (isinstance(fixed_gbq, (int, float)) and np.isfinite(fixed_gbq) and fixed_gbq > 0):
        raise InputError(f"the fixed activity must be a positive number of GBq, got {fixed_gbq!r}")
    pop = sample(population, n, seed)
    om = outcome_model or default_outcome_model(population)
    at_levels = level_doses(pop, levels, progress=progress, chunk_size=chunk_size)
    oracle_act, oracle_ok = guided_activities(at_levels, levels)
    cols = {"fixed": (np.full(n, float(fixed_gbq)), np.ones(n, bool), np.zeros(n, bool)),
            "oracle-guided": (oracle_act, oracle_ok, np.zeros(n, bool))}
    twins = tg = None
    twin_arm = "twin-guided" if protocol == "pet" else f"twin-guided ({protocol})"
    if imaged:
        twins = imaged_twins(pop, protocol=protocol, pet_times_h=pet_times_h, seed=seed,
                             progress=progress, first_gbq=float(fixed_gbq))
        if twins.failed.all():
            raise FitError(f"the imaged twin's fit failed for all {n} virtual patients; first "
                           f"error: {twins.errors[0]}")
        if twins.failed.any():
            warnings.warn(f"{int(twins.failed.sum())} of {n} imaged-twin fits failed; those "
                          f"patients get the lower activity bound", stacklevel=2)
        tg = twin_guided_activities(pop, twins, levels, n_draws=n_draws, quantile=quantile,
                                    seed=seed, chunk_size=chunk_size, progress=progress)
        cols[twin_arm] = (tg["activity_gbq"], tg["feasible"], tg["failed"])
    arms = [a for a in ("fixed", twin_arm, "oracle-guided") if a in cols]
    # the true patients at every arm's activities: one batched solve (one column per arm)
    final = level_doses(pop, np.stack([cols[a][0] for a in arms], axis=1), progress=progress,
                        chunk_size=chunk_size)
    rows, per = [], []
    for j, arm in enumerate(arms):
        a, feasible, failed = cols[arm]
        dd = {k: v[:, j] for k, v in final.as_dict().items()}
        ok = final.ok[:, j].copy()
        extra = {}
        if arm == twin_arm:
            qd = tg["quantile_doses"]
            extra = {"fit_failed": failed, "fit_seconds": twins.fit_seconds,
                     "draws_ok": tg["draws_ok"],
                     "fit_error": [e[:200] for e in twins.errors]}
            # the twin's quantile prediction at its own choice (surrogate interpolation)
            extra["planned_kidney_bed_q_gy"] = _interp_levels(qd.kidney_bed_gy, levels, a, per_row=True)
            if twins.first_gbq is not None:
                # cycle 1 at the fixed activity (the fixed arm's column), cycles 2..N at a
                first = {k: v[:, [0]] for k, v in final.as_dict().items()}
                dd = {k: v[:, 0] for k, v in after_first_cycle(
                    {k: v[:, None] for k, v in dd.items()}, first, final.n_cycles).items()}
                extra["activity_cycles_2_n_gbq"] = a
                a = (twins.first_gbq + (final.n_cycles - 1) * a) / final.n_cycles
                ok &= final.ok[:, 0]
        ev = om.evaluate(dd)
        per.append(pd.DataFrame({"arm": arm, "patient": np.arange(n), "activity_gbq": a,
                                 **dd, **ev, "ok": ok, **extra}))
        over = {k: float(v.mean()) for k, v in ev.items() if k.startswith("over_")}
        rows.append({"arm": arm, "n_patients": n, "mean_activity_gbq": float(a.mean()),
                     "mean_course_gbq": float(a.mean() * final.n_cycles),
                     "kidney_bed_median_gy": float(np.median(dd["kidney_bed_gy"])),
                     "kidney_bed_p95_gy": float(np.percentile(dd["kidney_bed_gy"], 95)),
                     "marrow_dose_median_gy": float(np.median(dd["marrow_dose_gy"])),
                     "lesion_dose_median_gy": float(np.median(dd["lesion_dose_gy"])),
                     **over,
                     "mean_p_dlt": float(ev["p_dlt"].mean()),
                     "response_rate": float(ev["response"].mean()),
                     "infeasible_at_lower_bound": float((~feasible & ~failed).mean())
                     if arm != "fixed" else 0.0,
                     "fit_failed": float(failed.mean()) if arm == twin_arm else np.nan,
                     "median_fit_s": float(np.median(twins.fit_seconds))
                     if arm == twin_arm else np.nan,
                     "solve_failed": float((~ok).mean())})
    return pd.DataFrame(rows), pd.concat(per, ignore_index=True)


def _interp_levels(values, levels, x, per_row: bool = False):
    """``values`` (n, L) at ``levels`` interpolated piecewise linearly in activity, with 0 at 0
    (the planner's surrogate), for every row at once: at the shared activities ``x`` (G,) ->
    (n, G), or with ``per_row`` at one activity per row ``x`` (n,) -> (n,)."""
    lv = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64)])
    v = np.concatenate([np.zeros((values.shape[0], 1)), values], axis=1)
    x = np.asarray(x, dtype=np.float64)
    j = np.clip(np.searchsorted(lv, x, side="right") - 1, 0, lv.size - 2)
    t = (x - lv[j]) / (lv[j + 1] - lv[j])
    if per_row:
        r = np.arange(values.shape[0])
        return v[r, j] * (1 - t) + v[r, j + 1] * t
    return v[:, j] * (1 - t) + v[:, j + 1] * t


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
    """Activity per cycle, course kidney BED and lesion dose per patient in every arm (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    arms = list(dict.fromkeys(per_patient["arm"]))
    course = f"{n_cycles} cycles" if n_cycles else "course"
    for k, key, lab in ((0, "activity_gbq", "activity per cycle (GBq)"),
                        (1, "kidney_bed_gy", f"kidney BED, {course} (Gy)"),
                        (2, "lesion_dose_gy", f"mean lesion dose, {course} (Gy)")):
        ax[k].boxplot([per_patient.loc[per_patient.arm == a, key] for a in arms])
        ax[k].set_xticks(range(1, len(arms) + 1), arms)
        ax[k].set_ylabel(lab)
    ax[1].axhline(limit_gy, color="r", ls="--", label=f"limit {limit_gy:g} Gy")
    ax[1].legend(fontsize=8)
    n = per_patient.loc[per_patient.arm == arms[0]].shape[0]
    fig.suptitle(f"{n} virtual patients per arm (the same patients in every arm)")
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
