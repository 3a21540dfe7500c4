"""MAP fitting of a model's personal parameters to region activities (PET, SPECT).

The objective is half the squared norm of the whitened residuals

    r(theta) = [ (pred_i(theta) - obs_i) / sigma_i  ;  W (theta - mu_prior) ],

``theta = log p`` of the personal parameters (canonical units), every other parameter at its
population value. It is minimised by scipy's trust-region least squares (``least_squares``,
'trf') with the exact Jacobian computed by JAX forward mode through the stiff solve
(``jacfwd`` with diffrax ``ForwardMode``), the combination shared/NOTES.md measured as the
fastest (0.13 s against 0.52 s for optimistix Levenberg-Marquardt and 1.46 s for scipy with
finite differences on the same problem). The residual and its Jacobian come from one compiled
function, cached per model structure and data shapes, so fitting another patient with the same
protocol does not recompile. Log parameters are bounded to the prior mean +/- 6 prior SD (outside
lies a prior probability below 2e-9; the bound keeps the stiff solver away from absurd values).

Multi-start: the prior median, then draws from the prior (clipped to +/- 2.5 SD), plus any
user start; the best optimum is kept and the spread of the optima is reported.
Convergence: the best run must have finished (scipy status > 0), its solve must have succeeded
and the gradient ``J^T r`` must vanish (infinity norm below :data:`GRADIENT_TOL`); otherwise
FitError with the diagnostics.

Noise model (``noise='model'``, or for rows whose sigma is not usable): sigma^2 = (c A)^2 + a^2
per modality and region class (:data:`NOISE` for organs, :data:`NOISE_LESION` for lesions,
:func:`is_lesion`). It is first evaluated at the observed activity A (fixed weights, a
least-squares problem), then, by generalised least squares (iteratively reweighted: Carroll RJ,
Ruppert D, Transformation and Weighting in Regression, Chapman & Hall 1988, sec. 2.1), at the
activity predicted by the current optimum, refitting from there until no sigma changes by more
than 0.1% (``reweight=False`` keeps the observed-value weights). Weights at the observed value
favour observations that happen to be low (their sigma is smaller) and bias the fit downwards;
at the prediction they do not depend on the noise of the row. With ``noise='observations'`` (default) each row's ``sigma_mbq`` is
used.

Imaging and therapy in one patient: the observations of each radiopharmaceutical are predicted
from the administrations of that radiopharmaceutical, all sharing the patient's parameters
(``coupled=False``, default). This neglects competition for receptors between different ligands
(e.g. 3 nmol of PSMA-11 and the therapy's PSMA-617), exact when the imaging ligand has cleared
before the therapy (68Ga PET days to weeks before the first cycle) and ~50x cheaper than the
coupled solve (two labelled species, 276 states, no total-ligand form); ``coupled=True`` solves
all administrations together. A warning is given when administrations of different
radiopharmaceuticals are less than :data:`COUPLING_WARN_H` apart.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from calibration.observations import Observations
from calibration.priors import Prior, default_prior
from calibration.uncertainty import Posterior, laplace_covariance
from pbpk_models.errors import FitError, InputError
from pbpk_models.regimen import Regimen

GRADIENT_TOL = 1e-2      # |J^T r|_inf at the optimum: objective change per unit log-parameter
BOUND_SD = 6.0           # log-parameter bounds: prior mean +/- BOUND_SD prior SD
START_CLIP_SD = 2.5      # random starts are clipped to +/- this many prior SD
COUPLING_WARN_H = 24.0   # different radiopharmaceuticals closer than this: competition matters


@dataclass(frozen=True)
class NoiseModel:
    """sigma = sqrt((proportional * A)^2 + additive_mbq^2) for activity A (MBq)."""

    proportional: float
    additive_mbq: float
    basis: str

    def sigma(self, activity_mbq):
        a = np.asarray(activity_mbq, dtype=np.float64)
        return np.sqrt((self.proportional * a) ** 2 + self.additive_mbq ** 2)


# Region-activity noise per modality, for organs. Proportional terms: calibration uncertainty
# (PET 5%, Boellaard et al., EJNMMI 2015;42:328, doi:10.1007/s00259-014-2961-x; quantitative
# 177Lu SPECT ~10%, Ljungberg et al., MIRD Pamphlet 26, J Nucl Med 2016;57:151,
# doi:10.2967/jnumed.115.159012) combined in quadrature with segmentation and partial-volume
# error of whole-organ VOIs, assumed 8% for PET and 10% for SPECT (assumption). Additive floors
# are assumptions: the order of the counting noise of a small VOI (68Ga PET: 0.02 MBq; 177Lu
# SPECT at 24 h: 0.5 MBq).
NOISE = {
    "PET": NoiseModel(0.10, 0.02, "5% calibration (EANM) + 8% segmentation (assumed); "
                                  "0.02 MBq floor (assumed)"),
    "SPECT": NoiseModel(0.15, 0.5, "10% calibration (MIRD 26) + 10% segmentation (assumed); "
                                   "0.5 MBq floor (assumed)"),
    "planar": NoiseModel(0.25, 1.0, "planar conjugate-view quantification, overlap (assumed)"),
}

# Lesions: the same calibration terms, but the VOI term of a small object is dominated by the
# partial-volume (recovery-coefficient) correction. For 177Lu SPECT spheres of 16-65 mL a Monte
# Carlo study found activity errors of up to 21% without and 3.5% with recovery-coefficient
# correction (EJNMMI Physics 2021, doi:10.1186/s40658-021-00365-8); 15% is assumed here for
# the recovery and delineation error of a lesion VOI (assumption, between the two), combined in
# quadrature: PET hypot(5%, 15%) = 16%, SPECT hypot(10%, 15%) = 18%, planar hypot(25%, 15%) = 29%.
LESION_VOI_ERROR = 0.15
# the calibration part of each organ model's proportional term (sources above; planar: the whole
# 25% is taken as quantification error)
_CALIBRATION_ERROR = {"PET": 0.05, "SPECT": 0.10, "planar": 0.25}
NOISE_LESION = {
    m: NoiseModel(round(math.hypot(c, LESION_VOI_ERROR), 2), NOISE[m].additive_mbq,
                  f"{c:.0%} calibration + {LESION_VOI_ERROR:.0%} lesion recovery/delineation "
                  f"(assumed), in quadrature; {NOISE[m].additive_mbq:g} MBq floor (assumed)")
    for m, c in _CALIBRATION_ERROR.items()}

# A region is a lesion when its name starts with one of these (case-insensitive): the models'
# tumour regions (Tumor1, Tumor2, TumorRest) and the usual contour names of lesions.
LESION_PREFIXES = ("tumor", "tumour", "lesion", "gtv")


def is_lesion(region: str) -> bool:
    """Whether an observed region is a lesion (name starts with :data:`LESION_PREFIXES`)."""
    return str(region).strip().lower().startswith(LESION_PREFIXES)


def noise_model(modality: str, region: str, table=None) -> NoiseModel:
    """The noise model of one observation: lesion or organ class of ``modality``.

    ``table`` (default: :data:`NOISE` for organs and :data:`NOISE_LESION` for lesions) maps a
    modality, or a ``(modality, 'lesion'|'organ')`` pair, to a :class:`NoiseModel`; a pair takes
    precedence, so ``{"SPECT": m}`` applies ``m`` to every SPECT row.
    """
    kind = "lesion" if is_lesion(region) else "organ"
    if table is None:
        table = NOISE_LESION if kind == "lesion" else NOISE
    if (modality, kind) in table:
        return table[(modality, kind)]
    if modality in table:
        return table[modality]
    known = sorted({k if isinstance(k, str) else k[0] for k in table})
    raise InputError(f"no noise model for modality {modality!r} ({kind} {region!r}); known: "
                     f"{', '.join(known)}")


def noise_sigma(modalities, regions, activity_mbq, table=None) -> np.ndarray:
    """sigma (MBq) of each row from :func:`noise_model` at ``activity_mbq`` (clipped at 0)."""
    a = np.clip(np.asarray(activity_mbq, dtype=np.float64), 0.0, None).reshape(-1)
    modalities, regions = list(modalities), list(regions)
    if not len(modalities) == len(regions) == a.size:
        raise InputError(f"noise_sigma needs one modality and one region per activity, got "
                         f"{len(modalities)}, {len(regions)} and {a.size}")
    return np.array([noise_model(m, r, table).sigma(x) for m, r, x in zip(modalities, regions, a)],
                    dtype=np.float64)


def observed_amounts(amounts, ts_index, rp_index, weights):
    """Per data row, the amount (nmol) of its observed region: the sum of the model regions it
    covers (``weights`` (rows, model regions), one 1 per row unless the region is a group) of
    ``amounts`` (times, radiopharmaceuticals, model regions) at the row's time and
    radiopharmaceutical. NumPy or JAX arrays (used by the fit, MBAM and the benchmarks)."""
    return (amounts[ts_index, rp_index, :] * weights).sum(axis=-1)


@dataclass(frozen=True, eq=False)
class _Segment:
    model: object
    n_admin: int
    arrays: tuple          # (admin_times, hot, cold, ts, t_end)
    rp_index: np.ndarray   # per observation row of this segment
    ts_index: np.ndarray
    mbq_per_nmol: np.ndarray
    rows: np.ndarray       # indices into the Observations
    # (rows, model regions) 0/1: an observed region is the sum of these model regions (one 1
    # per row unless the region is a group, e.g. the imaged remainder of the body)
    region_weights: np.ndarray


@dataclass(frozen=True, eq=False)
class Problem:
    """A fitting problem: data, prior, which parameters are personal, and how to predict.

    Built by :func:`build_problem` (all input checks happen there, before any compilation).
    ``y``/``sigma`` (MBq) are in segment order; ``rows`` maps them back to observation rows.
    """

    model_name: str
    variant: str
    spec: object
    regimen: Regimen
    observations: Observations
    prior: Prior
    base_params: np.ndarray
    personal_index: np.ndarray
    units: tuple
    fixed: dict
    segments: tuple
    y: np.ndarray
    sigma: np.ndarray
    rows: np.ndarray
    noise: str = "observations"
    settings: object = None
    warnings: tuple = field(default=())
    region_groups: dict = field(default_factory=dict)

    @property
    def names(self) -> tuple:
        return self.prior.names

    @property
    def n_obs(self) -> int:
        return len(self.y)


_SPECS: dict = {}


def model_spec(model_name: str, variant: str | None = None):
    """The library ModelSpec, cached per (name, variant) so compiled solves are reused across
    patients (compiled models and solves are cached per spec object)."""
    from pbpk_models.library import build_spec

    model_name, variant = _resolve_model(model_name, variant)
    key = (model_name, variant)
    if key not in _SPECS:
        if model_name.endswith(".json"):  # a reduced model written by `twin reduce` (MBAM)
            from calibration.mbam.io import load_reduced

            _SPECS[key] = load_reduced(model_name)[0]
        else:
            _SPECS[key] = build_spec(model_name, variant)
    return _SPECS[key]


def _resolve_model(model, variant):
    from pbpk_models.library import MODELS

    if not isinstance(model, str):
        raise InputError("model must be a library model name, e.g. 'psma-pbrpk'")
    if model.endswith(".json"):  # REDUCED.json (calibration.mbam): a model like any other
        return model, variant or "reduced"
    if model not in MODELS:
        raise InputError(f"unknown model {model!r}; available: {', '.join(MODELS)}")
    return model, variant or MODELS[model][1][0]


def build_problem(observations: Observations, regimen: Regimen, model: str = "psma-pbrpk", *,
                  variant: str | None = None, personal=None, prior: Prior | None = None,
                  prior_overrides=None, fixed=None, noise: str = "observations",
                  coupled: bool = False, settings=None, region_groups=None) -> Problem:
    """Check the inputs and set up a fit (no compilation yet).

    Args:
        observations: region activities (MBq) at times (h) from the regimen's first
            administration.
        regimen: the administrations of this patient (imaging and therapy).
        model, variant: library model.
        personal: names of the parameters to fit (default: the model's declaration).
        prior: a Prior over ``personal`` (e.g. a previous posterior); default the population prior.
        prior_overrides: {name: (mean, cv)} for the default prior (mean in canonical units).
        fixed: {name: value} parameters set for this patient and not fitted (canonical units),
            e.g. ``{'V_Kidney': 290.0}`` from CT.
        noise: 'observations' (each row's sigma_mbq) or 'model' (:data:`NOISE`).
        coupled: solve all administrations together (see the module docstring).
        region_groups: {observed region: (model region, ...)}: the observation is the sum of
            these model regions' activities. For the imaged remainder of the body (the body
            outside the segmented organs), which holds every model region without a mask of its
            own (blood, muscle, adipose, skin, GI, rest), e.g. ``{'Rest': ('Rest', 'Art',
            'Vein', 'Muscle', 'Adipose', 'Skin', 'GI')}``. A group takes precedence over a
            model region of the same name.
    Raises:
        InputError with what to change. Warns (UserWarning) when there are fewer data points
        than personal parameters or different ligands are given close together.
    """
    from pbpk_models.simulate import SolverSettings, prepare

    if not isinstance(observations, Observations):
        raise InputError("observations must be calibration.Observations (Observations.from_csv)")
    if not isinstance(regimen, Regimen):
        raise InputError("regimen must be a pbpk_models.regimen.Regimen (Regimen.from_csv)")
    model_name, variant = _resolve_model(model, variant)
    fixed = {str(k): float(v) for k, v in (fixed or {}).items()}
    spec = model_spec(model_name, variant)
    if noise not in ("observations", "model"):
        raise InputError(f"noise must be 'observations' or 'model', not {noise!r}")
    if prior is None:
        if model_name.endswith(".json"):  # reduced model: base model's priors (MBAM)
            from calibration.mbam.io import reduced_prior

            prior = reduced_prior(model_name, spec, personal, prior_overrides)
        else:
            prior = default_prior(model_name, spec, personal, prior_overrides)
    elif personal is not None and tuple(personal) != tuple(prior.names):
        raise InputError("give either personal parameter names or a prior, not both (the prior "
                         "names the personal parameters)")
    for name in prior.names:
        spec.parameter(name)
        if name in fixed:
            raise InputError(f"{name} is both fixed and personal; choose one")
    # Rosenbrock (Rodas5P, analytic Jacobian, block solve) differentiates in forward mode and is
    # much cheaper per solve than Kvaerno5 (benchmarks/RESULTS.md)
    settings = settings or SolverSettings(adjoint="forward", method="rosenbrock")
    if settings.adjoint != "forward":
        raise InputError("the fit differentiates in forward mode: SolverSettings(adjoint="
                         "'forward')")

    obs = observations
    where = obs.source or "observations"
    t0 = float(regimen.times_h.min())
    t_abs = t0 + obs.time_h
    given = regimen.radiopharmaceuticals
    unknown_rp = sorted(set(obs.radiopharmaceutical) - set(given))
    if unknown_rp:
        raise InputError(f"{where}: radiopharmaceutical(s) {', '.join(unknown_rp)} are not in the "
                         f"regimen ({', '.join(given)}); add the administration to the regimen")
    regions = spec.regions
    summed = check_region_groups(region_groups, regions)
    bad_regions = sorted(set(obs.region) - set(regions) - set(summed))
    if bad_regions:
        raise InputError(f"{where}: unknown region(s) {', '.join(bad_regions)} for {model_name}; "
                         f"the model's regions are {', '.join(regions)}"
                         + (f" (groups: {', '.join(summed)})" if summed else ""))
    if noise == "model":
        bad = sorted(set(obs.modality) - set(NOISE))
        if bad:
            raise InputError(f"{where}: no noise model for modality {', '.join(bad)}; use "
                             f"{', '.join(NOISE)} or noise='observations'")
    for rp in set(obs.radiopharmaceutical):
        first = min(a.time_h for a in regimen.administrations
                    if a.radiopharmaceutical.lower() == rp)
        early = (obs.radiopharmaceutical == rp) & (t_abs < first - 1e-9)
        if early.any():
            i = int(np.argmax(early))
            raise InputError(f"{where}: row {i + 1} ({obs.region[i]}, {rp}) is at "
                             f"{obs.time_h[i]:g} h, before the first administration of {rp} at "
                             f"{first - t0:g} h; times are hours from the regimen's first "
                             f"administration")
    msgs = []
    rps_times = {rp: [a.time_h for a in regimen.administrations
                      if a.radiopharmaceutical.lower() == rp] for rp in given}
    if not coupled and len(given) > 1:
        gaps = [abs(a - b) for i, r1 in enumerate(given) for r2 in given[i + 1:]
                for a in rps_times[r1] for b in rps_times[r2]]
        if min(gaps) < COUPLING_WARN_H:
            msgs.append(f"administrations of different radiopharmaceuticals are {min(gaps):g} h "
                        f"apart; they are fitted without competition for receptors (use "
                        f"coupled=True / --coupled to solve them together)")
    n_obs, n_par = len(obs), len(prior.names)
    if n_obs < n_par:
        msgs.append(f"{n_obs} data point(s) for {n_par} personal parameters: the fit is "
                    f"determined mostly by the prior; see the identifiability report")
    for m in msgs:
        warnings.warn(m, UserWarning, stacklevel=2)

    # segments: one solve per radiopharmaceutical (or one coupled solve)
    groups = [tuple(sorted(set(obs.radiopharmaceutical)))] if coupled else \
        [(rp,) for rp in given if rp in set(obs.radiopharmaceutical)]
    segments = []
    ys, sigmas, rows_all = [], [], []
    for group in groups:
        rows = np.flatnonzero(np.isin(obs.radiopharmaceutical, group))
        tmax = float(t_abs[rows].max())
        admins = tuple(a for a in regimen.administrations
                       if (coupled or a.radiopharmaceutical.lower() in group)
                       and a.time_h <= tmax + 1e-9)
        sub = Regimen(admins)
        ts = np.unique(t_abs[rows])
        t_last = max(a.time_h for a in admins)
        days = max(tmax - t_last, 1e-3) / 24.0
        m, at, hot, cold, ts, t_end = prepare(spec, sub, ts, days,
                                              mode="full" if coupled else "auto")
        names = [r.name for r in m.radiopharmaceuticals]
        segments.append(_Segment(
            m, len(at), (at, hot, cold, ts, np.float64(t_end)),
            np.array([names.index(obs.radiopharmaceutical[i]) for i in rows], np.int32),
            np.searchsorted(ts, t_abs[rows]).astype(np.int32),
            np.asarray(m.mbq_per_nmol, np.float64), rows,
            region_weights([obs.region[i] for i in rows], m.regions, summed)))
        ys.append(obs.activity_mbq[rows])
        if noise == "model":
            sigmas.append(noise_sigma(obs.modality[rows], obs.region[rows],
                                      obs.activity_mbq[rows]))
        else:
            sigmas.append(obs.sigma_mbq[rows])
        rows_all.append(rows)
    m0 = segments[0].model
    base = m0.params_from(fixed)
    m0.check_params(base)
    idx = np.array([m0.parameter_names.index(n) for n in prior.names], np.int32)
    units = tuple(spec.parameter(n).unit for n in prior.names)
    return Problem(model_name, variant, spec, regimen, obs, prior, base, idx, units, fixed,
                   tuple(segments), np.concatenate(ys), np.concatenate(sigmas),
                   np.concatenate(rows_all), noise, settings, tuple(msgs), summed)


def check_region_groups(region_groups, regions) -> dict:
    """{observed region: tuple of model regions}, checked against the model's regions."""
    if not region_groups:
        return {}
    if not isinstance(region_groups, dict):
        raise InputError("region_groups must map an observed region to a list of model regions, "
                         "e.g. {'Rest': ['Rest', 'Muscle', 'Adipose']}")
    out = {}
    for name, members in region_groups.items():
        members = (members,) if isinstance(members, str) else tuple(members)
        if not members:
            raise InputError(f"region group {name!r} has no model regions")
        unknown = sorted(set(members) - set(regions))
        if unknown:
            raise InputError(f"region group {name!r}: unknown model region(s) "
                             f"{', '.join(unknown)}; the model's regions are {', '.join(regions)}")
        if len(set(members)) != len(members):
            raise InputError(f"region group {name!r} names a model region twice")
        out[str(name)] = tuple(str(m) for m in members)
    return out


def region_weights(observed, model_regions, groups) -> np.ndarray:
    """(rows, model regions) 0/1 matrix: which model regions each observed region sums."""
    w = np.zeros((len(observed), len(model_regions)))
    for k, name in enumerate(observed):
        for member in groups.get(name, (name,)):
            w[k, model_regions.index(member)] = 1.0
    return w


# -- the compiled residual --------------------------------------------------------------------

_COMPILED: dict = {}


def _problem_data(problem: Problem) -> dict:
    import jax.numpy as jnp

    return {
        "base": jnp.asarray(problem.base_params),
        "y": jnp.asarray(problem.y), "sigma": jnp.asarray(problem.sigma),
        "mu": jnp.asarray(problem.prior.mean_log), "W": jnp.asarray(problem.prior.whitening()),
        "rtol": jnp.asarray(problem.settings.rtol, jnp.float64),
        "segments": [
            {"arrays": tuple(jnp.asarray(a) for a in s.arrays), "rp": jnp.asarray(s.rp_index),
             "ts": jnp.asarray(s.ts_index),
             "rw": jnp.asarray(s.region_weights),
             "mbq": jnp.asarray(s.mbq_per_nmol)} for s in problem.segments],
    }


def _compiled(problem: Problem):
    """jit(theta, data -> (J, (r, pred, ok))), cached per model structure and settings."""
    import jax
    import jax.numpy as jnp

    from pbpk_models.simulate import solve_core

    settings = problem.settings
    # Rosenbrock takes rtol as data: the coarse and fine passes of the continuation share one
    # compiled function (a psma-pbrpk compile costs ~10 s on 2 cores)
    traced_rtol = settings.method == "rosenbrock"
    if traced_rtol:
        settings = replace(settings, rtol=0.0)
    key = (tuple((s.model, s.n_admin) for s in problem.segments),
           tuple(int(i) for i in problem.personal_index), settings)
    if key in _COMPILED:
        return _COMPILED[key]
    cores = [solve_core(s.model, s.n_admin, settings) for s in problem.segments]
    idx = np.asarray(problem.personal_index)

    def residual(theta, data):
        p = data["base"].at[idx].set(jnp.exp(theta))
        preds, ok = [], jnp.array(True)
        for core, seg in zip(cores, data["segments"]):
            out = core(p, *seg["arrays"], rtol=data["rtol"] if traced_rtol else None)
            amt = observed_amounts(out["amounts"], seg["ts"], seg["rp"], seg["rw"])
            preds.append(amt * seg["mbq"][seg["rp"]])
            ok = ok & out["ok"]
        pred = jnp.concatenate(preds)
        r = jnp.concatenate([(pred - data["y"]) / data["sigma"], data["W"] @ (theta - data["mu"])])
        return r, (r, pred, ok)

    fn = jax.jit(jax.jacfwd(residual, has_aux=True))
    _COMPILED[key] = fn
    return fn


class Objective:
    """Residuals and their Jacobian at log-parameters theta (one solve gives both, cached).

    ``residuals(theta)`` (n_obs + n_params,), ``jacobian(theta)`` (n_obs + n_params, n_params),
    ``cost(theta)`` = 0.5 |r|^2, ``gradient(theta)`` = J^T r, ``predict(theta)`` MBq per data row
    (segment order). A failed solve gives residuals of 1e6 (a rejected trial step).
    """

    def __init__(self, problem: Problem):
        import jax.numpy as jnp

        self.problem = problem
        self._fn = _compiled(problem)
        self._data = _problem_data(problem)
        self._jnp = jnp
        self._last = None
        self.n_evaluations = 0

    def evaluate(self, theta):
        theta = np.asarray(theta, dtype=np.float64)
        if self._last is not None and np.array_equal(self._last[0], theta):
            return self._last[1]
        J, (r, pred, ok) = self._fn(self._jnp.asarray(theta), self._data)
        self.n_evaluations += 1
        r, J, pred, ok = np.asarray(r), np.asarray(J), np.asarray(pred), bool(ok)
        if not ok or not np.all(np.isfinite(r)):
            r = np.full_like(r, 1e6)
            J = np.where(np.isfinite(J), J, 0.0)
            ok = False
        res = (r, J, pred, ok)
        self._last = (theta.copy(), res)
        return res

    def residuals(self, theta):
        return self.evaluate(theta)[0]

    def jacobian(self, theta):
        return self.evaluate(theta)[1]

    def cost(self, theta) -> float:
        r = self.residuals(theta)
        return 0.5 * float(r @ r)

    def gradient(self, theta):
        r, J, _, _ = self.evaluate(theta)
        return J.T @ r

    def predict(self, theta):
        return self.evaluate(theta)[2]


def _accept_polish(obj: "Objective", theta, lo, hi) -> dict | None:
    """The run record of the coarse optimum ``theta`` evaluated at the fine tolerance, if it is
    already the fine optimum to the cost's precision: solve succeeded, no active bound, gradient
    test passed, and the Gauss-Newton step from there predicts a cost decrease below
    :data:`POLISH_REL_DECREASE` x max(cost, 1). None otherwise (polish with trf)."""
    t1 = time.perf_counter()
    theta = np.asarray(theta, dtype=np.float64)
    r, J, _, ok = obj.evaluate(theta)
    if not ok or np.any(theta <= lo + 1e-6) or np.any(theta >= hi - 1e-6):
        return None
    cost = 0.5 * float(r @ r)
    g = J.T @ r
    step, *_ = np.linalg.lstsq(J, -r, rcond=None)
    rn = r + J @ step
    decrease = cost - 0.5 * float(rn @ rn)
    grad_inf = float(np.max(np.abs(g), initial=0.0))
    if not (grad_inf < GRADIENT_TOL and decrease <= POLISH_REL_DECREASE * max(cost, 1.0)):
        return None
    return {"start": 0, "status": 1, "cost": cost, "theta": theta.copy(), "nfev": 1, "njev": 1,
            "message": f"polish: accepted the coarse optimum (Gauss-Newton decrease "
                       f"{decrease:.1e}, step {np.max(np.abs(step)):.1e} in log-parameters)",
            "ok": True, "grad_inf": grad_inf, "at_bound": [], "time_s": time.perf_counter() - t1}


def _starts(problem: Problem, n_starts: int, x0, seed: int) -> list[np.ndarray]:
    prior = problem.prior
    starts = []
    if x0 is not None:
        if isinstance(x0, dict):
            unknown = set(x0) - set(prior.names)
            if unknown:
                raise InputError(f"start values for non-personal parameters: {sorted(unknown)}")
            vals = [x0.get(n, float(np.exp(prior.mean_log[i])))
                    for i, n in enumerate(prior.names)]
        else:
            vals = list(np.asarray(x0, dtype=np.float64).reshape(-1))
        vals = np.asarray(vals, dtype=np.float64)
        if vals.shape != (len(prior.names),) or not np.all(vals > 0):
            raise InputError(f"start values must be {len(prior.names)} positive numbers")
        starts.append(np.log(vals))
    else:
        starts.append(prior.mean_log.copy())
    if n_starts > len(starts):
        sd = prior.sd_log
        draws = prior.sample_log(n_starts - len(starts), seed)
        draws = np.clip(draws, prior.mean_log - START_CLIP_SD * sd,
                        prior.mean_log + START_CLIP_SD * sd)
        starts += list(draws)
    return starts


# continuation: optimise at this solver rtol, then polish at the requested one (fit()). 1e-5
# was the fastest of 1e-4 .. 1e-6 on bench_fit's patient (four noise draws: 0.72-0.84 s against
# 1.06-1.09 s at 1e-6, 0.94-1.04 s at 1e-4), with the same polished optimum.
COARSE_RTOL = 1e-5
# polish: the coarse optimum is accepted without a step when, with the fine solve, one more
# Gauss-Newton step would lower the cost by less than this fraction of it (about the relative
# precision of costs computed at rtol 1e-8) and the gradient test passes; else trf polishes.
# Measured on bench_fit's patient: predicted decreases 3e-14 .. 1.4e-12, steps 2e-8 .. 2e-7 in
# log-parameters (1e-6 of a posterior SD).
POLISH_REL_DECREASE = 1e-9
MAX_REWEIGHT_PASSES = 4  # noise='model': at most this many weighted fits (GLS iterations)
REWEIGHT_RTOL = 1e-3     # stop reweighting when no sigma changes by more than this (relative)


def _model_sigma(problem: Problem, activity_mbq) -> np.ndarray:
    """Noise-model sigma (:func:`noise_sigma`) of each data row (segment order) at
    ``activity_mbq``."""
    o = problem.observations
    return noise_sigma(o.modality[problem.rows], o.region[problem.rows], activity_mbq)


def _run_starts(obj: "Objective", starts, lo, hi, max_nfev: int) -> list[dict]:
    """scipy 'trf' from each start; one dict of diagnostics per start."""
    from scipy.optimize import least_squares

    runs = []
    for k, th0 in enumerate(starts):
        th0 = np.clip(th0, lo + 1e-9, hi - 1e-9)
        t1 = time.perf_counter()
        try:
            res = least_squares(obj.residuals, th0, jac=obj.jacobian, bounds=(lo, hi),
                                method="trf", x_scale="jac", max_nfev=max_nfev,
                                xtol=1e-10, ftol=1e-10, gtol=1e-8)
        except ValueError as exc:  # non-finite residuals at the start
            runs.append({"start": k, "status": -1, "message": str(exc), "cost": np.inf,
                         "theta": th0, "nfev": 0, "njev": 0, "ok": False, "grad_inf": np.inf,
                         "time_s": time.perf_counter() - t1})
            continue
        r, J, _, ok = obj.evaluate(res.x)
        g = J.T @ r
        # at an active bound the gradient need not vanish; count only free directions
        free = (res.x > lo + 1e-6) & (res.x < hi - 1e-6)
        runs.append({"start": k, "status": int(res.status), "message": str(res.message),
                     "cost": 0.5 * float(r @ r), "theta": res.x.copy(), "nfev": int(res.nfev),
                     "njev": int(res.njev or 0), "ok": ok,
                     "grad_inf": float(np.max(np.abs(g[free]), initial=0.0)),
                     "at_bound": [obj.problem.prior.names[i] for i in np.flatnonzero(~free)],
                     "time_s": time.perf_counter() - t1})
    return runs


def fit(observations: Observations, regimen: Regimen, model: str = "psma-pbrpk", *,
        variant: str | None = None, personal=None, prior: Prior | None = None,
        prior_overrides=None, fixed=None, noise: str = "observations", coupled: bool = False,
        n_starts: int = 3, x0=None, seed: int = 0, max_nfev: int = 60,
        settings=None, problem: Problem | None = None, reweight: bool = True,
        continuation: bool = True, region_groups=None) -> Posterior:
    """Personalise a model: MAP estimate and Laplace posterior of the personal parameters.

    Arguments as :func:`build_problem`, plus: ``n_starts`` optimiser starts (the first at
    ``x0`` or the prior median, the others drawn from the prior); ``x0`` start values
    ({name: value} or a vector, canonical units); ``seed`` of the random starts; ``max_nfev``
    residual evaluations per start; ``problem`` a prebuilt :class:`Problem`.
    Returns:
        Posterior (MAP, log-space covariance, diagnostics: cost, chi2 of the data, gradient
        norm, evaluations, time, per-start results, residuals per observation row).
    Raises:
        FitError (with ``diagnostics``) if no start converged.

    ``continuation``: optimise with the solver at rtol :data:`COARSE_RTOL` (about a third of the
    cost per Jacobian), then polish the best optimum at the requested tolerance: accepted as it
    is when one more Gauss-Newton step would change the cost by less than
    :data:`POLISH_REL_DECREASE` of it (:func:`_accept_polish`), else refined by trf; MAP, cost,
    gradient test and covariance are all from the requested tolerance.
    ``reweight`` (noise='model' only): generalised least squares, sigma of each row from the
    noise model at the *predicted* activity, refitted from the optimum until the weights settle
    (at most :data:`MAX_REWEIGHT_PASSES` fits). Sigma at the observed activity (``reweight=
    False``) gives low observations too much weight and biases the fit downwards.
    """
    from pbpk_models.model import require_x64

    require_x64("calibration.fit")
    if problem is None:
        problem = build_problem(observations, regimen, model, variant=variant, personal=personal,
                                prior=prior, prior_overrides=prior_overrides, fixed=fixed,
                                noise=noise, coupled=coupled, settings=settings,
                                region_groups=region_groups)
    if n_starts < 1:
        raise InputError("n_starts must be at least 1")
    prior_ = problem.prior
    lo = prior_.mean_log - BOUND_SD * prior_.sd_log
    hi = prior_.mean_log + BOUND_SD * prior_.sd_log
    t_start = time.perf_counter()
    reweight = problem.noise == "model" and reweight
    fine = problem.settings
    coarse = replace(fine, rtol=COARSE_RTOL) if continuation and fine.rtol < COARSE_RTOL \
        else None
    obj = Objective(replace(problem, settings=coarse) if coarse else problem)
    runs = _run_starts(obj, _starts(problem, n_starts, x0, seed), lo, hi, max_nfev)
    passes = 1
    n_eval = obj.n_evaluations
    # generalised least squares (noise='model'): sigma from the noise model at the predicted,
    # not the observed, activity; refit from the current optimum until the weights settle
    while reweight and passes < MAX_REWEIGHT_PASSES:
        ok_runs = [r for r in runs if r["ok"] and r["status"] > 0 and np.isfinite(r["cost"])]
        if not ok_runs:
            break
        cur = min(ok_runs, key=lambda r: r["cost"])
        sigma = _model_sigma(problem, obj.predict(cur["theta"]))
        change = float(np.max(np.abs(sigma / problem.sigma - 1.0)))
        if change < REWEIGHT_RTOL:
            break
        problem = replace(problem, sigma=sigma)
        obj = Objective(replace(problem, settings=coarse) if coarse else problem)
        runs = _run_starts(obj, [cur["theta"]], lo, hi, max_nfev)
        passes += 1
        n_eval += obj.n_evaluations
    coarse_runs = None
    if coarse is not None:
        # polish the best coarse optimum at the requested tolerance (a few evaluations); the
        # reported MAP, cost and gradient test are those of the fine solve
        ok_runs = [r for r in runs if r["ok"] and r["status"] > 0 and np.isfinite(r["cost"])]
        if ok_runs:
            coarse_runs = runs
            cur = min(ok_runs, key=lambda r: r["cost"])
            obj = Objective(problem)
            accepted = _accept_polish(obj, cur["theta"], lo, hi)
            runs = [accepted] if accepted else _run_starts(obj, [cur["theta"]], lo, hi,
                                                            max_nfev)
            n_eval += obj.n_evaluations
    elapsed = time.perf_counter() - t_start
    good = [r for r in runs if r["ok"] and r["status"] > 0 and np.isfinite(r["cost"])]
    converged = [r for r in good if r["grad_inf"] < GRADIENT_TOL]
    summary = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}
               for r in runs]
    if coarse_runs is not None:
        summary += [{"stage": f"coarse (rtol {COARSE_RTOL:g})",
                     **{k: (v.tolist() if isinstance(v, np.ndarray) else v)
                        for k, v in r.items()}} for r in coarse_runs]
    if not converged:
        best = min(runs, key=lambda r: r["cost"])
        raise FitError(
            f"the fit did not converge from any of {len(runs)} start(s) (best cost "
            f"{best['cost']:.4g}, |gradient| {best['grad_inf']:.3g}, status {best['status']}: "
            f"{best['message']}); try more starts (--starts), a larger max_nfev, or check the "
            f"observations' units (MBq) and times (h)",
            {"runs": summary, "time_s": elapsed})
    best = min(converged, key=lambda r: r["cost"])
    r, J, pred, ok = obj.evaluate(best["theta"])
    cov = laplace_covariance(J)
    n = problem.n_obs
    chi2 = float(r[:n] @ r[:n])
    # multi-start agreement: over the starts (their coarse optima when polished)
    starts_runs = coarse_runs if coarse_runs is not None else runs
    conv_starts = [x for x in starts_runs if x["ok"] and x["status"] > 0
                   and np.isfinite(x["cost"]) and x["grad_inf"] < GRADIENT_TOL]
    costs = np.array([x["cost"] for x in conv_starts])
    ref = min(costs, default=best["cost"])
    same = max(int(np.sum(np.abs(costs - ref) <= 1e-6 * (1 + ref))), 1)
    rows = problem.rows
    residual_table = [{"row": int(rows[i]), "region": str(problem.observations.region[rows[i]]),
                       "time_h": float(problem.observations.time_h[rows[i]]),
                       "radiopharmaceutical":
                           str(problem.observations.radiopharmaceutical[rows[i]]),
                       "observed_mbq": float(problem.y[i]), "predicted_mbq": float(pred[i]),
                       "sigma_mbq": float(problem.sigma[i]), "z": float(r[i])}
                      for i in range(n)]
    diagnostics = {
        "converged": True, "cost": best["cost"], "chi2_data": chi2, "n_obs": n,
        "n_params": len(problem.names), "grad_inf": best["grad_inf"],
        "n_starts": len(starts_runs), "n_converged": max(len(conv_starts), 1),
        "n_at_best": same,
        "evaluations": n_eval, "reweight_passes": passes, "time_s": elapsed, "noise": problem.noise,
        "coupled": len(problem.segments) == 1 and len(problem.regimen.radiopharmaceuticals) > 1,
        "warnings": list(problem.warnings), "runs": summary, "residuals": residual_table,
        "region_groups": {k: list(v) for k, v in problem.region_groups.items()},
    }
    if n > len(problem.names) and chi2 > 3.0 * max(n, 1) + 10:
        msg = (f"the model fits the data poorly (chi-square {chi2:.3g} for {n} points); check "
               f"the observations' sigma_mbq, units and region names")
        diagnostics["warnings"].append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return Posterior(problem.model_name, problem.variant, problem.names, problem.units,
                     best["theta"], cov, problem.prior, dict(problem.fixed), diagnostics)


def synthetic_observations(regimen: Regimen, design, truth: dict, model: str = "psma-pbrpk", *,
                           variant: str | None = None, fixed=None, seed: int | None = 0,
                           noise=None) -> Observations:
    """Observations simulated from known parameters, with the noise of :data:`NOISE`.

    Args:
        regimen: the administrations.
        design: rows ``(region, time_h, radiopharmaceutical, modality)``, time from the first
            administration (h).
        truth: {name: value} of the parameters that differ from the defaults (canonical units).
        seed: random seed of the noise; None for noise-free values (sigma still from NOISE).
        noise: {modality or (modality, 'lesion'|'organ'): NoiseModel}; default
            :data:`NOISE` for organs and :data:`NOISE_LESION` for lesions (:func:`noise_model`).
    Returns:
        Observations whose sigma_mbq is the noise model's sigma at the true activity.
    """
    design = list(design)
    if not design:
        raise InputError("design needs at least one (region, time_h, radiopharmaceutical, "
                         "modality) row")
    cols = list(zip(*design))
    dummy = Observations(np.array(cols[0], dtype=object), np.array(cols[1], float),
                         np.ones(len(design)), np.ones(len(design)),
                         np.array(cols[3], dtype=object), np.array(cols[2], dtype=object))
    names = tuple(truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob = build_problem(dummy, regimen, model, variant=variant, personal=names,
                             fixed=fixed)
    obj = Objective(prob)
    pred = np.empty(len(design))
    pred[prob.rows] = obj.predict(np.log([float(truth[n]) for n in names]))
    mods = dummy.modality
    sigma = noise_sigma(mods, dummy.region, pred, noise)
    act = pred.copy()
    if seed is not None:
        act = np.clip(pred + sigma * np.random.default_rng(seed).standard_normal(len(pred)),
                      0.0, None)
    return Observations(dummy.region, dummy.time_h, act, sigma, mods, dummy.radiopharmaceutical,
                        source="synthetic")
