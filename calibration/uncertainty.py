"""Laplace approximation of the posterior, identifiability, posterior draws.

At the MAP estimate ``theta*`` (log-parameters) the whitened residual vector
``r = [(pred - obs) / sigma ; W (theta - mu_prior)]`` has Jacobian J; the Gauss-Newton Hessian
of the negative log posterior ``0.5 |r|^2`` is ``J^T J`` (the prior rows contribute the prior
precision), and the Laplace approximation is ``theta ~ N(theta*, (J^T J)^-1)`` in log space,
i.e. a lognormal posterior of each parameter. Gauss-Newton drops the residual-curvature term
``sum r_i d2 r_i``, which is small at a good fit (residuals of order one), and is always positive
semi-definite (Bates DM, Watts DG, Nonlinear Regression Analysis and Its Applications, Wiley
1988, ch. 2).

Identifiability (:func:`identifiability`): the ratio of posterior to prior SD of each log
parameter. Thresholds (conventions of this project, not from a reference): ratio < 0.5
"identified" (the data at least halve the prior width, i.e. carry >= 3x the prior's
information), 0.5-0.9 "partly", > 0.9 "prior only".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pbpk_models.errors import FitError, InputError

IDENTIFIED_BELOW = 0.5
PRIOR_ONLY_ABOVE = 0.9


def laplace_covariance(jacobian) -> np.ndarray:
    """Posterior covariance in log space, ``(J^T J)^-1``, from the whitened Jacobian.

    Raises FitError if J^T J is singular (cannot happen with a proper prior in the residuals).
    """
    J = np.asarray(jacobian, dtype=np.float64)
    H = J.T @ J
    try:
        L = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        raise FitError("the Gauss-Newton Hessian is not positive definite; the posterior has no "
                       "Laplace approximation (check that the prior rows are in the residuals)",
                       {"eigenvalues": np.linalg.eigvalsh(H).tolist()}) from None
    Linv = np.linalg.inv(L)
    cov = Linv.T @ Linv
    return 0.5 * (cov + cov.T)


@dataclass(frozen=True, eq=False)
class Posterior:
    """A fitted twin's parameters: MAP and Laplace covariance in log space, and its provenance.

    Attributes:
        model_name, variant: the library model (``build_spec(model_name, variant)``).
        names: personal parameter names; ``units`` their canonical units.
        theta_map: (n,) MAP of log p (p in canonical units).
        cov_log: (n, n) posterior covariance of log p (Laplace, Gauss-Newton).
        prior: the :class:`~calibration.priors.Prior` used.
        fixed: {name: value} non-personal parameters set away from the model default
            (canonical units); every other parameter is at the model default.
        diagnostics: what the optimiser reported (JSON-serialisable).
    """

    model_name: str
    variant: str
    names: tuple[str, ...]
    units: tuple[str, ...]
    theta_map: np.ndarray
    cov_log: np.ndarray
    prior: object
    fixed: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.names)
        th = np.asarray(self.theta_map, dtype=np.float64).reshape(-1)
        cov = np.asarray(self.cov_log, dtype=np.float64)
        if th.shape != (n,) or cov.shape != (n, n):
            raise InputError(f"posterior of {n} parameters needs theta ({n},) and cov ({n}, {n})")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "units", tuple(self.units))
        object.__setattr__(self, "theta_map", th)
        object.__setattr__(self, "cov_log", 0.5 * (cov + cov.T))

    @property
    def map_values(self) -> dict[str, float]:
        """MAP of each personal parameter (canonical units; the posterior median of p)."""
        return dict(zip(self.names, map(float, np.exp(self.theta_map))))

    @property
    def sd_log(self) -> np.ndarray:
        """Posterior SD of log p (approximately the relative SD of p)."""
        return np.sqrt(np.diag(self.cov_log))

    def interval(self, level: float = 0.90) -> dict[str, tuple[float, float]]:
        """Equal-tailed credible interval of each parameter (canonical units)."""
        from scipy.stats import norm

        z = norm.ppf(0.5 + level / 2)
        lo = np.exp(self.theta_map - z * self.sd_log)
        hi = np.exp(self.theta_map + z * self.sd_log)
        return {n: (float(a), float(b)) for n, a, b in zip(self.names, lo, hi)}

    def sample_log(self, n: int, seed: int = 0) -> np.ndarray:
        """(n, n_params) draws of log p from the Laplace posterior."""
        L = np.linalg.cholesky(self.cov_log + 1e-15 * np.eye(len(self.names)))
        z = np.random.default_rng(seed).standard_normal((n, len(self.names)))
        return self.theta_map + z @ L.T

    def as_prior(self):
        """This posterior as the prior of the next fit (sequential update)."""
        from calibration.priors import Prior

        return Prior.from_posterior(self)

    def identifiability(self) -> list[dict]:
        return identifiability(self)


def identifiability(posterior: Posterior) -> list[dict]:
    """Per parameter: MAP, prior and posterior SD of log p, their ratio and a verdict.

    Returns a list of dicts with keys ``name, unit, map, prior_median, prior_sd_log,
    posterior_sd_log, ratio, verdict`` (verdict: identified / partly / prior only).
    """
    prior = posterior.prior
    rows = []
    for i, name in enumerate(posterior.names):
        j = prior.names.index(name)
        psd = float(prior.sd_log[j])
        qsd = float(posterior.sd_log[i])
        ratio = qsd / psd
        verdict = ("identified" if ratio < IDENTIFIED_BELOW else
                   "prior only" if ratio > PRIOR_ONLY_ABOVE else "partly")
        rows.append({"name": name, "unit": posterior.units[i],
                     "map": float(np.exp(posterior.theta_map[i])),
                     "prior_median": float(np.exp(prior.mean_log[j])),
                     "prior_sd_log": psd, "posterior_sd_log": qsd, "ratio": ratio,
                     "verdict": verdict})
    return rows


def format_identifiability(rows) -> str:
    """A plain-text table of :func:`identifiability` rows."""
    head = f"{'parameter':<18}{'MAP':>12}{'prior med':>12}{'prior sd':>10}{'post sd':>10}" \
           f"{'ratio':>8}  verdict"
    lines = [head]
    for r in rows:
        lines.append(f"{r['name']:<18}{r['map']:>12.4g}{r['prior_median']:>12.4g}"
                     f"{r['prior_sd_log']:>10.3f}{r['posterior_sd_log']:>10.3f}"
                     f"{r['ratio']:>8.2f}  {r['verdict']}")
    return "\n".join(lines)
