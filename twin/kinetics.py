"""Sums of exponentials fitted to region time-activity data; time-integrated activity (TIA).

The multi-time-point reference of dosimetry (MIRD Pamphlet No. 26, Ljungberg M et al., J Nucl
Med 2016;57:151-162, doi:10.2967/jnumed.115.159012): fit a sum of exponentials to a region's
activities A_i (MBq) at times t_i (h after administration), weighted by their standard
uncertainties sigma_i, choose the function by the corrected Akaike information criterion (AICc;
Glatting G et al., Med Phys 2007;34:4285-4292, doi:10.1118/1.2794176) and integrate it
analytically from 0 to infinity.

Models (``lambda_p`` = physical decay constant of the nuclide, 1/h; every effective decay
constant is ``lambda_p + b`` with a biological rate ``b >= 0``: activity of a radionuclide bound
in tissue cannot disappear faster than by decay plus some biological clearance, and it cannot
decay *slower* than the nuclide itself. The constraint is exact for a single labelled species
and removes fits whose tail would outlive physical decay):

| name | function | parameters k |
| --- | --- | --- |
| ``mono`` | A e^(-l1 t) | 2 |
| ``bi_uptake`` | A (e^(-l1 t) - e^(-l2 t)), l2 > l1 (uptake, then washout; zero at t = 0) | 3 |
| ``bi`` | A1 e^(-l1 t) + A2 e^(-l2 t), l2 > l1 (two washout phases) | 4 |
| ``tri`` | A1 e^(-l1 t) + A2 e^(-l2 t) - (A1 + A2) e^(-l3 t), l3 > l2 > l1 (zero at t = 0) | 5 |

``tri``: uptake, then two washout phases. Amplitudes are >= 0. Rates are parametrised as ordered increments (l2 = l1 + d2, d2 >= 0) so the
components cannot swap.

TIA = sum A_j / l_j (MBq h), split into three documented parts:
- ``before``: integral of the fitted function from 0 to the first measurement. The function is
  extrapolated back to the administration: ``mono`` and ``bi`` assume the activity was there from
  t = 0 (instant uptake; they *overestimate* this part for an organ that takes up slowly), the
  uptake models start at zero. Report it so that a user sees how much of the TIA is
  extrapolation before the data (usually a few % at a first scan within ~4 h).
- ``during``: from the first to the last measurement.
- ``tail``: after the last measurement, analytic (sum A_j e^(-l_j t_n) / l_j); the physical-decay
  constraint keeps it from being longer than decay allows.

Weights: residuals are (f(t_i) - A_i) / sigma_i with the sigma_i given (known measurement
uncertainty). The log-likelihood is then -chi^2/2 + const and AICc = chi^2 + 2k +
2k(k+1)/(n-k-1), defined for n >= k + 2 data points. Automatic choice (``model='auto'``) ranks
the models with n >= k + 2; with fewer points (n = 2, 3) it falls back to ``mono`` with a
warning. A model asked for explicitly is fitted when n >= k; otherwise the most complex model
with k <= n is fitted instead, with a warning. A single point cannot be fitted: use a
single-time-point method (:mod:`twin.stp`).

Uncertainty of the TIA: the delta method, var(TIA) = g^T C g, with g the gradient of the TIA with
respect to the parameters and C = (J^T J)^-1 the covariance of the weighted least-squares
estimate (J: Jacobian of the whitened residuals; sigma known, so no rescaling by the residual
variance), or a parametric bootstrap (refits to data redrawn from the fitted curve with the
given sigma). The interval is reported on the log scale (lognormal approximation:
TIA exp(+/- z sd/TIA)) so it stays positive.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from twin.errors import FitError, InputError

# Model name -> number of free parameters; ordered from simple to complex.
MODELS = {"mono": 2, "bi_uptake": 3, "bi": 4, "tri": 5}


def _rates(model: str, p: np.ndarray, lam_p: float) -> np.ndarray:
    """Effective decay constants (1/h) of the components, from the parameter vector."""
    if model == "mono":
        return np.array([lam_p + p[1]])
    if model == "bi_uptake":
        l1 = lam_p + p[1]
        return np.array([l1, l1 + p[2]])
    if model == "bi":
        l1 = lam_p + p[1]
        return np.array([l1, l1 + p[3]])
    if model == "tri":
        l1 = lam_p + p[1]
        l2 = l1 + p[3]
        return np.array([l1, l2, l2 + p[4]])
    raise InputError(f"unknown kinetic model {model!r}; choose one of {', '.join(MODELS)}")


def _amplitudes(model: str, p: np.ndarray) -> np.ndarray:
    """Signed amplitudes (MBq) of the components, aligned with :func:`_rates`."""
    if model == "mono":
        return np.array([p[0]])
    if model == "bi_uptake":
        return np.array([p[0], -p[0]])
    if model == "bi":
        return np.array([p[0], p[2]])
    if model == "tri":
        return np.array([p[0], p[2], -(p[0] + p[2])])
    raise InputError(f"unknown kinetic model {model!r}")


def exp_sum(t, amplitudes, rates) -> np.ndarray:
    """sum_j a_j exp(-l_j t) at times t (vectorised over t)."""
    t = np.asarray(t, dtype=float)
    return np.exp(-np.multiply.outer(t, rates)) @ np.asarray(amplitudes, float)


def exp_sum_integral(amplitudes, rates, t0: float = 0.0, t1: float = math.inf) -> float:
    """Integral of sum_j a_j exp(-l_j t) from t0 to t1 (MBq h for MBq and 1/h); t1 may be inf."""
    a = np.asarray(amplitudes, float)
    lam = np.asarray(rates, float)
    if np.any(lam <= 0):
        raise InputError("every decay constant must be positive for a finite integral")
    upper = 0.0 if math.isinf(t1) else np.exp(-lam * t1)
    return float(np.sum(a / lam * (np.exp(-lam * t0) - upper)))


@dataclass(frozen=True)
class KineticFit:
    """A fitted sum of exponentials and its TIA.

    Attributes:
        model: ``mono``, ``bi_uptake``, ``bi`` or ``tri``.
        params: fitted parameter vector (see :func:`_rates`, :func:`_amplitudes`).
        amplitudes_mbq, rates_per_h: the components (signed amplitudes, effective decay
            constants, 1/h).
        cov: covariance of ``params`` (delta method input).
        chi2: weighted residual sum of squares; n, k: data points and parameters.
        aicc: corrected Akaike criterion (inf when n < k + 2).
        tia_mbq_h: integral from 0 to infinity (MBq h).
        tia_before_mbq_h, tia_during_mbq_h, tia_tail_mbq_h: its three parts (see module doc).
        tia_sd_mbq_h: standard uncertainty of the TIA (delta method or bootstrap).
        t_first_h, t_last_h: first and last measurement times.
        warnings: messages about fallbacks and constraints.
    """

    model: str
    params: np.ndarray
    amplitudes_mbq: np.ndarray
    rates_per_h: np.ndarray
    cov: np.ndarray
    chi2: float
    n: int
    k: int
    aicc: float
    tia_mbq_h: float
    tia_before_mbq_h: float
    tia_during_mbq_h: float
    tia_tail_mbq_h: float
    tia_sd_mbq_h: float
    t_first_h: float
    t_last_h: float
    warnings: tuple = ()

    def __call__(self, t_h):
        """Fitted activity (MBq) at times t_h (h)."""
        return exp_sum(t_h, self.amplitudes_mbq, self.rates_per_h)

    @property
    def effective_half_lives_h(self) -> np.ndarray:
        return math.log(2) / self.rates_per_h

    def interval(self, level: float = 0.90) -> tuple[float, float]:
        """Equal-tailed interval of the TIA, lognormal approximation (MBq h)."""
        from scipy.stats import norm

        if not 0 < level < 1:
            raise InputError(f"level must be between 0 and 1, got {level}")
        if not self.tia_mbq_h > 0 or not np.isfinite(self.tia_sd_mbq_h):
            return (float("nan"), float("nan"))
        z = norm.ppf(0.5 + level / 2)
        s = self.tia_sd_mbq_h / self.tia_mbq_h
        return (self.tia_mbq_h * math.exp(-z * s), self.tia_mbq_h * math.exp(z * s))


def aicc(chi2: float, n: int, k: int) -> float:
    """AICc = chi^2 + 2k + 2k(k+1)/(n-k-1) (known sigma); inf when n < k + 2."""
    if n - k - 1 <= 0:
        return math.inf
    return float(chi2 + 2 * k + 2 * k * (k + 1) / (n - k - 1))


def _tia_of(model, p, lam_p):
    return float(np.sum(_amplitudes(model, p) / _rates(model, p, lam_p)))


def _tia_gradient(model, p, lam_p) -> np.ndarray:
    """d TIA / d params by central differences (a few exponentials: cheap and exact enough)."""
    g = np.empty(len(p))
    for i in range(len(p)):
        h = 1e-6 * max(abs(p[i]), 1e-6)
        up, dn = p.copy(), p.copy()
        up[i] += h
        dn[i] = max(dn[i] - h, 0.0)
        g[i] = (_tia_of(model, up, lam_p) - _tia_of(model, dn, lam_p)) / (up[i] - dn[i])
    return g


def _starts(model, t, y, w, lam_p) -> list[np.ndarray]:
    """Start vectors: a grid of rates, amplitudes from a weighted linear least-squares solve."""
    t_pk = t[int(np.argmax(y))]
    late = t >= t_pk
    if late.sum() >= 2 and np.all(y[late] > 0):
        slope = -np.polyfit(t[late], np.log(y[late]), 1, w=np.sqrt(y[late]))[0]
        b0 = max(slope - lam_p, 1e-4)
    else:
        b0 = 0.01
    slow = [b0, b0 * 0.3, b0 * 3.0]
    fast = [0.05, 0.3, 2.0]
    starts = []
    for b in slow:
        if model == "mono":
            cand = [np.array([0.0, b])]
        elif model == "bi_uptake":
            cand = [np.array([0.0, b, d]) for d in fast]
        elif model == "bi":
            cand = [np.array([0.0, b, 0.0, d]) for d in fast]
        else:
            cand = [np.array([0.0, b, 0.0, d, d3]) for d in fast[:2] for d3 in fast[1:]]
        for p in cand:
            # amplitudes given the rates: linear weighted least squares (non-negative by clipping)
            lam = _rates(model, p, lam_p)
            E = np.exp(-np.multiply.outer(t, lam))
            if model == "mono":
                B = E
            elif model == "bi_uptake":
                B = (E[:, 0] - E[:, 1])[:, None]
            elif model == "bi":
                B = E
            else:
                B = np.column_stack([E[:, 0] - E[:, 2], E[:, 1] - E[:, 2]])
            coef, *_ = np.linalg.lstsq(B * w[:, None], y * w, rcond=None)
            coef = np.clip(coef, 1e-6 * max(y.max(), 1e-12), None)
            q = p.copy()
            if model in ("mono", "bi_uptake"):
                q[0] = coef[0]
            else:
                q[0], q[2] = coef[0], coef[1]
            starts.append(q)
    return starts


def _fit_one(model, t, y, sigma, lam_p):
    from scipy.optimize import least_squares

    k = MODELS[model]
    w = 1.0 / sigma

    def resid(p):
        return (exp_sum(t, _amplitudes(model, p), _rates(model, p, lam_p)) - y) * w

    best = None
    for p0 in _starts(model, t, y, w, lam_p):
        try:
            r = least_squares(resid, p0, bounds=(np.zeros(k), np.full(k, np.inf)),
                              method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12,
                              max_nfev=2000)
        except ValueError:
            continue
        if best is None or r.cost < best.cost:
            best = r
    if best is None or not np.all(np.isfinite(best.x)):
        raise FitError(f"the {model} fit failed; check the activities (MBq) and times (h)")
    p = best.x
    J = best.jac
    H = J.T @ J
    try:
        cov = np.linalg.inv(H)
        if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) < 0):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(H)
    chi2 = float(2 * best.cost)
    return p, cov, chi2


def fit_tac(t_h, activity_mbq, sigma_mbq=None, *, lambda_phys_per_h: float,
            model: str = "auto", uncertainty: str = "delta", n_boot: int = 200,
            seed: int = 0) -> KineticFit:
    """Fit a sum of exponentials to one region's time-activity curve; TIA and its uncertainty.

    Args:
        t_h: measurement times (h after administration), >= 0, at least two distinct.
        activity_mbq: activities (MBq) at those times, >= 0.
        sigma_mbq: standard uncertainties (MBq), > 0; default 10% of each activity (assumed,
            the calibration uncertainty of quantitative SPECT, MIRD 26) with a floor of 1e-3
            times the largest activity.
        lambda_phys_per_h: physical decay constant of the nuclide (1/h); every effective decay
            constant is constrained to be >= it.
        model: ``auto`` (AICc) or one of :data:`MODELS`.
        uncertainty: ``delta`` (fit covariance) or ``bootstrap`` (parametric, ``n_boot`` refits).
    Returns:
        KineticFit.
    Raises:
        InputError: a single point (use a single-time-point method, twin.stp), bad values.
        FitError: the optimiser failed.
    Warns:
        UserWarning when it falls back to a simpler model.
    """
    t = np.asarray(t_h, dtype=float).ravel()
    y = np.asarray(activity_mbq, dtype=float).ravel()
    if t.shape != y.shape:
        raise InputError(f"times ({t.size}) and activities ({y.size}) differ in length")
    if t.size == 0:
        raise InputError("no data points")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))):
        raise InputError("times and activities must be finite numbers")
    if np.any(t < 0) or np.any(y < 0):
        raise InputError("times (h after administration) and activities (MBq) must be >= 0")
    if sigma_mbq is None:
        s = np.maximum(0.10 * y, 1e-3 * max(y.max(), 1e-12))
    else:
        s = np.broadcast_to(np.asarray(sigma_mbq, dtype=float), y.shape).copy()
        if np.any(~np.isfinite(s)) or np.any(s <= 0):
            raise InputError("sigma_mbq must be > 0 for every point")
    if not (lambda_phys_per_h > 0 and math.isfinite(lambda_phys_per_h)):
        raise InputError(f"lambda_phys_per_h must be a positive decay constant (1/h), got "
                         f"{lambda_phys_per_h}")
    n_distinct = np.unique(t).size
    if n_distinct < 2:
        raise InputError(f"a multi-time-point fit needs at least two scan times, got "
                         f"{n_distinct} ({t.size} point(s)); for one scan use a single-time-point "
                         f"method (twin.stp: hanscheid, madsen or the twin prior)")
    if not np.any(y > 0):
        raise InputError("every activity is zero; nothing to fit")
    if uncertainty not in ("delta", "bootstrap"):
        raise InputError(f"uncertainty must be 'delta' or 'bootstrap', not {uncertainty!r}")
    order = np.argsort(t)
    t, y, s = t[order], y[order], s[order]
    n = t.size
    msgs = []
    if model == "auto":
        candidates = [m for m, k in MODELS.items() if n >= k + 2]
        if not candidates:
            candidates = ["mono"]
            msgs.append(f"{n} data points are too few to compare models by AICc (needs >= 4); "
                        f"fitted a mono-exponential")
    else:
        if model not in MODELS:
            raise InputError(f"unknown kinetic model {model!r}; choose auto or one of "
                             f"{', '.join(MODELS)}")
        if MODELS[model] > n:
            fallback = [m for m, k in MODELS.items() if k <= n][-1]
            msgs.append(f"{model} has {MODELS[model]} parameters but there are only {n} data "
                        f"points; fitted {fallback} instead")
            model = fallback
        candidates = [model]
    fits = {}
    for m in candidates:
        p, cov, chi2 = _fit_one(m, t, y, s, lambda_phys_per_h)
        fits[m] = (p, cov, chi2, aicc(chi2, n, MODELS[m]))
    chosen = min(fits, key=lambda m: (fits[m][3], MODELS[m])) if len(fits) > 1 else candidates[0]
    p, cov, chi2, crit = fits[chosen]
    lam_p = lambda_phys_per_h
    amps, rates = _amplitudes(chosen, p), _rates(chosen, p, lam_p)
    tia = exp_sum_integral(amps, rates)
    before = exp_sum_integral(amps, rates, 0.0, t[0])
    during = exp_sum_integral(amps, rates, t[0], t[-1])
    tail = exp_sum_integral(amps, rates, t[-1])
    if uncertainty == "delta":
        g = _tia_gradient(chosen, p, lam_p)
        var = float(g @ cov @ g)
        sd = math.sqrt(var) if var >= 0 else float("nan")
    else:
        rng = np.random.default_rng(seed)
        f = exp_sum(t, amps, rates)
        boots = []
        for _ in range(int(n_boot)):
            yb = np.clip(f + s * rng.standard_normal(n), 0.0, None)
            if not np.any(yb > 0):
                continue
            try:
                pb, _, _ = _fit_one(chosen, t, yb, s, lam_p)
            except FitError:
                continue
            boots.append(_tia_of(chosen, pb, lam_p))
        sd = float(np.std(boots, ddof=1)) if len(boots) > 2 else float("nan")
    if np.any(p[1:2] <= 1e-12):
        msgs.append("the slowest component decays at the physical rate (no biological "
                    "clearance within the data): the tail is physical decay only")
    for m in msgs:
        warnings.warn(m, UserWarning, stacklevel=2)
    return KineticFit(chosen, p, amps, rates, cov, chi2, n, MODELS[chosen], crit, tia, before,
                      during, tail, sd, float(t[0]), float(t[-1]), tuple(msgs))


def fit_regions(observations, *, lambda_phys_per_h: float, model: str = "auto",
                uncertainty: str = "delta", level: float = 0.90):
    """Fit every region of an Observations table; a DataFrame with one row per region.

    Columns: region, model, tia_mbq_h, tia_low, tia_high, tia_sd_mbq_h, tia_before_mbq_h,
    tia_tail_mbq_h, n_points, aicc, t_eff_slow_h (effective half-life of the slowest component).
    """
    import pandas as pd

    rows = []
    for region in observations.regions:
        o = observations.select(region=region)
        try:
            kf = fit_tac(o.time_h, o.activity_mbq, o.sigma_mbq,
                         lambda_phys_per_h=lambda_phys_per_h, model=model,
                         uncertainty=uncertainty)
        except InputError as exc:
            raise InputError(f"region {region}: {exc}") from None
        lo, hi = kf.interval(level)
        rows.append({"region": region, "model": kf.model, "tia_mbq_h": kf.tia_mbq_h,
                     "tia_low": lo, "tia_high": hi, "tia_sd_mbq_h": kf.tia_sd_mbq_h,
                     "tia_before_mbq_h": kf.tia_before_mbq_h, "tia_tail_mbq_h": kf.tia_tail_mbq_h,
                     "n_points": kf.n, "aicc": kf.aicc,
                     "t_eff_slow_h": float(kf.effective_half_lives_h[0])})
    return pd.DataFrame(rows)
