"""Personal parameters and their population priors (lognormal; the fit works in log space).

A model's *personal* parameters are the ones a patient's PET and SPECT can inform and that vary
most between patients; every other parameter stays at its population value (the model's default,
or a value the user fixes, e.g. an organ volume measured on CT). The declaration is per model
(:data:`PERSONAL`), and the user may replace it.

A :class:`Prior` is a multivariate normal distribution of ``theta = log(p)`` (p in the
parameter's canonical unit): ``mean_log`` and ``cov_log``. Independent lognormal priors are
built from a population mean and a coefficient of variation by moment matching:
``sd_log = sqrt(log(1 + cv^2))``, ``mean_log = log(mean) - sd_log^2 / 2`` (so the arithmetic mean
of the lognormal is the population mean). A posterior (full covariance) is itself a valid prior:
that is the sequential update between cycles (:meth:`Prior.from_posterior`).

Sources of the ``psma-pbrpk`` priors (:data:`PRIOR_CATALOGUE`):
- Rden_Kidney, lambdaRel_Kidney, Rden_SG, lambdaRel_SG: mean and SD of
  :data:`pbpk_models.library.psma.POPULATION_TYPICAL` (the PBRPK authors' virtual-patient
  population, Fele-Paranj et al., EJNMMI Radiopharm Chem 2024;9:6, doi:10.1186/s41181-023-00236-w,
  kidney values recalibrated to clinical kidney dosimetry, see that table's sources).
- Rden_Tumor1, Rden_Tumor2, Rden_TumorRest: the published values (57, 19, 266 nmol/L, same
  paper) with a coefficient of variation of 1.0. **Assumption**: no population SD is published
  for lesion receptor density; lesion PSMA expression varies more than tenfold between patients
  and lesions (PSMA-PET SUVmax from under 5 to over 50), so the prior is deliberately wide
  (a 90% prior interval of about 0.25x to 3.9x the median).
- TER_Kidney (optional, not personal by default): the published 0.2 L/min with CV 0.25.
  **Assumption**: a typical spread of measured GFR in men treated with 177Lu-PSMA-617; in
  practice fix it from the patient's measured or estimated GFR (``fixed=``).
Parameters without a catalogue entry get the model's default as the mean and CV
:data:`DEFAULT_CV` (an assumption, with a warning).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from pbpk_models import units as u
from pbpk_models.errors import InputError

# Personal parameters per model (the default declaration; overridable with ``personal=``).
PERSONAL = {
    "psma-pbrpk": ("Rden_Kidney", "lambdaRel_Kidney", "Rden_SG", "lambdaRel_SG",
                   "Rden_Tumor1", "Rden_Tumor2", "Rden_TumorRest"),
}

# CV of a parameter without a catalogue entry (assumption: a wide, weakly informative prior).
DEFAULT_CV = 0.5

# Coefficient of variation of lesion receptor densities (assumption; see the module docstring).
TUMOUR_RDEN_CV = 1.0

# GFR variability (assumption; see the module docstring).
TER_CV = 0.25


def _psma_catalogue() -> dict[str, tuple[float, float, str]]:
    """name -> (population mean in canonical units, CV, source) for psma-pbrpk."""
    from pbpk_models.library.psma import POPULATION_TYPICAL

    nmol_per_l = 1.0 / u.ML_PER_L  # nmol/L -> nmol/mL
    cat = {}
    for name, (mean, sd, source) in POPULATION_TYPICAL.items():
        scale = nmol_per_l if name.startswith("Rden_") else u.per_min_to_per_h(1.0)
        cat[name] = (mean * scale, sd / mean, f"{source} (psma.POPULATION_TYPICAL)")
    for name, value in (("Rden_Tumor1", 57.0), ("Rden_Tumor2", 19.0), ("Rden_TumorRest", 266.0)):
        cat[name] = (value * nmol_per_l, TUMOUR_RDEN_CV,
                     f"published {value:g} nmol/L (Fele-Paranj et al. 2024); CV "
                     f"{TUMOUR_RDEN_CV:g} is an assumption (lesion PSMA expression varies "
                     f"more than tenfold)")
    cat["TER_Kidney"] = (u.litres_to_ml(u.per_min_to_per_h(0.2)), TER_CV,
                         f"published 0.2 L/min; CV {TER_CV:g} is an assumption (GFR spread)")
    return cat


def prior_catalogue(model_name: str) -> dict[str, tuple[float, float, str]]:
    """Known population priors of a model: name -> (mean, cv, source); mean in canonical units."""
    if model_name == "psma-pbrpk":
        return _psma_catalogue()
    return {}


def lognormal_log_params(mean: float, cv: float) -> tuple[float, float]:
    """(mean_log, sd_log) of a lognormal with arithmetic ``mean`` and coefficient of variation."""
    if not (mean > 0 and math.isfinite(mean)):
        raise InputError(f"a lognormal prior needs a positive mean, got {mean}")
    if not (cv > 0 and math.isfinite(cv)):
        raise InputError(f"a lognormal prior needs a positive CV, got {cv}")
    sd = math.sqrt(math.log1p(cv * cv))
    return math.log(mean) - 0.5 * sd * sd, sd


@dataclass(frozen=True, eq=False)
class Prior:
    """Gaussian prior of log-parameters ``theta = log(p)`` (p in canonical units).

    Attributes:
        names: parameter names (the model's).
        mean_log: (n,) prior mean of log p.
        cov_log: (n, n) prior covariance of log p (diagonal for independent lognormals).
        sources: one line per parameter saying where the prior comes from.
    """

    names: tuple[str, ...]
    mean_log: np.ndarray
    cov_log: np.ndarray
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self):
        names = tuple(self.names)
        mu = np.asarray(self.mean_log, dtype=np.float64).reshape(-1)
        cov = np.asarray(self.cov_log, dtype=np.float64)
        n = len(names)
        if len(set(names)) != n:
            raise InputError(f"prior parameter names repeat: {names}")
        if mu.shape != (n,) or cov.shape != (n, n):
            raise InputError(f"prior of {n} parameters needs mean ({n},) and covariance ({n}, {n})")
        if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
            raise InputError("prior mean and covariance must be finite")
        cov = 0.5 * (cov + cov.T)
        try:
            np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise InputError("the prior covariance is not positive definite") from None
        sources = tuple(self.sources) or ("",) * n
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "mean_log", mu)
        object.__setattr__(self, "cov_log", cov)
        object.__setattr__(self, "sources", sources)

    @classmethod
    def lognormal(cls, names, means, cvs, sources=()) -> "Prior":
        """Independent lognormal priors from arithmetic means (canonical units) and CVs."""
        pairs = [lognormal_log_params(float(m), float(c)) for m, c in zip(means, cvs)]
        return cls(tuple(names), np.array([p[0] for p in pairs]),
                   np.diag([p[1] ** 2 for p in pairs]), tuple(sources))

    @classmethod
    def from_posterior(cls, posterior) -> "Prior":
        """A fitted posterior as the prior of the next fit (sequential update)."""
        return cls(tuple(posterior.names), np.asarray(posterior.theta_map),
                   np.asarray(posterior.cov_log),
                   tuple(f"posterior of the previous fit ({posterior.model_name})"
                         for _ in posterior.names))

    @property
    def sd_log(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov_log))

    @property
    def median(self) -> dict[str, float]:
        """Prior median of each parameter (canonical units)."""
        return dict(zip(self.names, map(float, np.exp(self.mean_log))))

    def cholesky(self) -> np.ndarray:
        return np.linalg.cholesky(self.cov_log)

    def whitening(self) -> np.ndarray:
        """W with W^T W = cov^-1: the prior residual is W (theta - mean)."""
        return np.linalg.inv(self.cholesky())

    def sample_log(self, n: int, seed: int = 0) -> np.ndarray:
        """(n, n_params) draws of log p."""
        z = np.random.default_rng(seed).standard_normal((n, len(self.names)))
        return self.mean_log + z @ self.cholesky().T

    def to_dict(self) -> dict:
        return {"names": list(self.names), "mean_log": self.mean_log.tolist(),
                "cov_log": self.cov_log.tolist(), "sources": list(self.sources)}

    @classmethod
    def from_dict(cls, d: dict) -> "Prior":
        try:
            return cls(tuple(d["names"]), np.array(d["mean_log"], float),
                       np.array(d["cov_log"], float), tuple(d.get("sources", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed prior: {exc}") from None


def default_prior(model_name: str, spec, personal=None, overrides=None) -> Prior:
    """The population prior of the personal parameters of a model.

    Args:
        model_name: library model name (e.g. ``'psma-pbrpk'``).
        spec: its ModelSpec (for parameter names, units and defaults).
        personal: parameter names to personalise; default :data:`PERSONAL` [model_name].
        overrides: {name: (mean, cv)} replacing catalogue entries (mean in canonical units).
    Returns:
        Prior over ``personal`` (independent lognormals).
    Raises:
        InputError for unknown names or a model without declared personal parameters.
    """
    if personal is None:
        if model_name not in PERSONAL:
            raise InputError(f"no personal parameters are declared for model {model_name!r}; "
                             f"give them (--personal NAME ...)")
        personal = PERSONAL[model_name]
    personal = tuple(dict.fromkeys(personal))
    if not personal:
        raise InputError("give at least one personal parameter to fit")
    catalogue = prior_catalogue(model_name)
    overrides = dict(overrides or {})
    means, cvs, sources = [], [], []
    defaults = spec.default_values()
    for name in personal:
        spec.parameter(name)  # raises InputError with suggestions for an unknown name
        if name in overrides:
            mean, cv = overrides.pop(name)
            src = "given by the user"
        elif name in catalogue:
            mean, cv, src = catalogue[name]
        else:
            mean, cv = defaults[name], DEFAULT_CV
            src = f"model default with CV {DEFAULT_CV:g} (assumption: no population data)"
            warnings.warn(f"{name}: no population prior is known; using the model default "
                          f"{mean:g} with CV {DEFAULT_CV:g}", stacklevel=2)
        if not mean > 0:
            raise InputError(f"{name}: the prior mean must be positive (log-space fit), got "
                             f"{mean}")
        means.append(float(mean))
        cvs.append(float(cv))
        sources.append(src)
    if overrides:
        raise InputError(f"prior given for parameter(s) that are not personal: "
                         f"{', '.join(overrides)}; add them to the personal parameters")
    return Prior.lognormal(personal, means, cvs, sources)
