"""The twin's SPECT update: adaptive, defensive importance sampling of the exact posterior.

The twin from ``twin fit`` on the pre-therapy PET is a Laplace approximation (a Gaussian in the
log parameters at the MAP, ``calibration.Posterior``). Two things can go wrong when it is used
as the prior of the one-SPECT update:

1. The Laplace approximation itself can be wrong. Example (the reason for this module): the
   68Ga-DOTATATE PET lesion activity at 1 h saturates in the SSTR2 density (d log A / d log Rden
   falls from 0.5 to 0.2 over the population's range, flow-limited uptake), while the
   177Lu-DOTATATE lesion TIA grows about proportionally with it. The PET likelihood is flat on the
   high side, the posterior is skewed, and the Gaussian at the MAP is too narrow there and
   centred too low: the true lesion Rden sits at z = +2 of the Laplace posterior for the upper
   fifth of patients, the 90% interval of the lesion TIA covers the truth in 79-81% of patients
   (benchmarks/results/stp/). Weighting draws from that Gaussian by the SPECT corrects nothing:
   the target is still the wrong prior.
2. The SPECT likelihood is much narrower than the PET twin, so plain importance sampling from the
   twin leaves few effective draws.

The update here targets the **exact** posterior of the PBPK parameters given *both* scans,

    pi(theta) ~ N(theta; prior) x L_PET(theta) x L_SPECT(theta),

with the population prior and the PET observations that the twin was fitted with (both stored in
TWIN.json: ``prior`` and ``diagnostics.residuals``), and uses the Laplace twin only as a
*proposal*:

- stage 1 (``n1`` draws): a defensive mixture (Hesterberg T, Weighted average importance sampling
  and defensive mixture distributions, Technometrics 1995;37:185-194): a share ``1 - defensive``
  from the Laplace twin with its covariance inflated by ``inflate`` (heavier on the side where
  the Laplace is too narrow), the share ``defensive`` from the population prior (so the
  importance weight target/proposal is bounded by L / defensive wherever the prior is);
- stage 2 (``n2`` draws): a Gaussian fitted to the weighted stage-1 draws (covariance inflated by
  STAGE2_INFLATE plus STAGE2_RIDGE x the prior covariance, so it never collapses on one draw);
- all draws weighted against the deterministic mixture of both stages (the balance heuristic of
  multiple importance sampling: Veach E, Guibas LJ, SIGGRAPH 1995; Owen A, Zhou Y, J Am Stat
  Assoc 2000;95:135-143), which is unbiased for any proposal that covers the target.

When the twin has no PET observations (e.g. a hand-made TWIN.json), the target is
N(theta; twin Laplace) x L_SPECT: the previous behaviour of ``twin.stp.importance_update``, now
with the adaptive second stage.

The likelihoods are Gaussian with each row's sigma, the noise model ``calibration.fit`` uses. The
functions here are pure numpy on arrays; the caller solves the model for the draws (one batched
solve per stage), so the same code serves the command line (one patient) and
benchmarks/validate_stp.py (a cohort solved in chunks).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from twin.errors import InputError

# Tuning choices of the sampler (not physics): usual values of defensive importance sampling
# (Hesterberg 1995 suggests a defensive share of 0.1-0.5), fixed before the validation and checked
# on seed 1 of the DOTATATE cohort (benchmarks/results/stp/exact-update/README.md; the
# validation table is seed 0). Stage 1 alone is degenerate there (median ESS 3-4 of 256 draws):
# the second stage is what makes the exact target usable.
DEFENSIVE = 0.25        # stage-1 share of draws from the population prior
LAPLACE_INFLATE = 2.0   # stage-1 Laplace component: covariance x this (SD x 1.41)
STAGE2_INFLATE = 2.0    # stage-2 covariance = this x weighted covariance of stage 1 ...
STAGE2_RIDGE = 0.05     # ... + this x the prior covariance
STAGE2_SHARE = 0.5      # stage-2 draws as a share of stage 1 (command line)
MIN_ESS = 20.0          # below this the result is flagged as unreliable


def gaussian_logpdf(x, mean, cov) -> np.ndarray:
    """log N(x; mean, cov) of each row of x (M, d)."""
    x = np.atleast_2d(np.asarray(x, float))
    L = np.linalg.cholesky(np.asarray(cov, float))
    z = np.linalg.solve(L, (x - np.asarray(mean, float)).T)
    return (-0.5 * np.sum(z * z, axis=0) - np.sum(np.log(np.diag(L)))
            - 0.5 * x.shape[1] * math.log(2 * math.pi))


def gaussian_loglik(pred, y, sigma) -> np.ndarray:
    """Gaussian log-likelihood (up to a constant) of each draw's predictions ``pred`` (M, R) for
    measurements ``y`` (R,) with standard uncertainties ``sigma`` (R,): -0.5 sum ((p - y)/s)^2.
    Non-finite predictions give -inf."""
    p = np.asarray(pred, float)
    y = np.asarray(y, float)
    s = np.asarray(sigma, float)
    if p.ndim != 2 or y.shape != (p.shape[1],) or s.shape != y.shape:
        raise InputError(f"shapes: pred (M, R), y and sigma (R,); got {p.shape}, {y.shape}, "
                         f"{s.shape}")
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise InputError("sigma_mbq must be finite and > 0")
    ll = -0.5 * np.sum(((p - y) / s) ** 2, axis=1)
    return np.where(np.isfinite(ll), ll, -np.inf)


@dataclass(frozen=True)
class Mixture:
    """A mixture of Gaussians in log-parameter space: ``shares`` (sum 1), ``means``, ``covs``."""

    shares: tuple
    means: tuple
    covs: tuple

    def counts(self, n: int) -> np.ndarray:
        """Deterministic allocation of n draws to the components (largest remainder)."""
        s = np.asarray(self.shares, float)
        c = np.floor(s * n).astype(int)
        c[np.argsort(-(s * n - c))[: n - c.sum()]] += 1
        return c

    def sample(self, n: int, rng) -> np.ndarray:
        """(n, d) draws, component by component (stratified: exactly counts(n) from each)."""
        out = []
        for k, m in enumerate(self.counts(n)):
            L = np.linalg.cholesky(self.covs[k])
            out.append(self.means[k] + rng.standard_normal((m, len(self.means[k]))) @ L.T)
        return np.vstack(out)

    def logpdf(self, x) -> np.ndarray:
        terms = [math.log(s) + gaussian_logpdf(x, m, c)
                 for s, m, c in zip(self.shares, self.means, self.covs) if s > 0]
        return np.logaddexp.reduce(np.vstack(terms), axis=0)


def _sym(c):
    c = np.asarray(c, float)
    return 0.5 * (c + c.T)


def stage1_proposal(twin_mean, twin_cov, prior_mean, prior_cov, *,
                    defensive: float = DEFENSIVE, inflate: float = LAPLACE_INFLATE) -> Mixture:
    """Defensive mixture (1 - defensive) N(twin_mean, inflate twin_cov) + defensive
    N(prior_mean, prior_cov)."""
    if not 0.0 <= defensive < 1.0:
        raise InputError(f"defensive share must be in [0, 1), got {defensive}")
    if not inflate > 0:
        raise InputError(f"inflate must be > 0, got {inflate}")
    comps = [(1.0 - defensive, np.asarray(twin_mean, float), _sym(inflate * np.asarray(twin_cov)))]
    if defensive > 0:
        comps.append((defensive, np.asarray(prior_mean, float), _sym(prior_cov)))
    return Mixture(*map(tuple, zip(*comps)))


def normalised_weights(log_w) -> tuple[np.ndarray, float]:
    """(weights summing to 1, effective sample size 1 / sum w^2) from log weights (-inf: 0)."""
    lw = np.asarray(log_w, float)
    fin = np.isfinite(lw)
    if fin.sum() == 0:
        raise InputError("no draw has a finite weight (every solve failed, or the observations "
                         "are impossible under the twin)")
    w = np.zeros_like(lw)
    w[fin] = np.exp(lw[fin] - lw[fin].max())
    w /= w.sum()
    return w, float(1.0 / np.sum(w * w))


def stage2_component(theta, w, prior_cov, *, inflate: float = STAGE2_INFLATE,
                     ridge: float = STAGE2_RIDGE):
    """Stage-2 Gaussian (mean, cov): the weighted mean of the stage-1 draws, covariance
    ``inflate`` x their weighted covariance + ``ridge`` x the prior covariance."""
    theta = np.asarray(theta, float)
    w = np.asarray(w, float)
    mu = w @ theta
    d = theta - mu
    return mu, _sym(inflate * (d * w[:, None]).T @ d + ridge * np.asarray(prior_cov, float))


def log_weights(theta, loglik, target_mean, target_cov, proposal: Mixture) -> np.ndarray:
    """Unnormalised log importance weights log N(theta; target prior) + loglik - log q(theta)."""
    return (gaussian_logpdf(theta, target_mean, target_cov) + np.asarray(loglik, float)
            - proposal.logpdf(theta))


def combined_proposal(stage1: Mixture, n1: int, stage2, n2: int) -> Mixture:
    """The deterministic mixture of both stages (balance heuristic): shares n1/N and n2/N."""
    if n2 == 0:
        return stage1
    f1 = n1 / (n1 + n2)
    return Mixture(tuple(f1 * s for s in stage1.shares) + (1.0 - f1,),
                   stage1.means + (stage2[0],), stage1.covs + (stage2[1],))


def weighted_summary(tia, w, level: float | None = 0.90, threshold: float = 0.10) -> dict:
    """Posterior median of each column of ``tia`` (M, K) under weights ``w`` (M,), the
    equal-tailed ``level`` interval, and the posterior probability that the median is more than
    ``threshold`` off (``p_over``)."""
    from twin.stp import weighted_quantile

    t = np.asarray(tia, float)
    keep = np.asarray(w) > 0
    t, w = t[keep], np.asarray(w, float)[keep]
    med = weighted_quantile(t, w, 0.5)
    out = {"median": med,
           "p_over": np.sum(w[:, None] * (np.abs(med[None, :] / t - 1.0) > threshold), axis=0)}
    if level is not None:
        out["low"] = weighted_quantile(t, w, (1 - level) / 2)
        out["high"] = weighted_quantile(t, w, (1 + level) / 2)
    return out


@dataclass
class UpdateResult:
    """Result of :func:`adaptive_update`: posterior ``median``, ``low``, ``high`` (K,), ``p_over``
    (posterior probability that the median is > 10% off), ``ess`` of the final weights,
    ``ess_stage1``, the draws ``theta`` and their normalised ``weights``, and ``target``
    ('prior x PET x SPECT' or 'twin x SPECT')."""

    median: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_over: np.ndarray
    ess: float
    ess_stage1: float
    theta: np.ndarray
    weights: np.ndarray
    tia: np.ndarray
    target: str


def adaptive_update(solve, *, twin_mean, twin_cov, target_mean, target_cov, n1: int = 1000,
                    n2: int | None = None, seed: int = 0, level: float = 0.90,
                    defensive: float = DEFENSIVE, inflate: float = LAPLACE_INFLATE,
                    target: str = "") -> UpdateResult:
    """Two-stage defensive importance sampling of N(theta; target prior) x likelihood.

    Args:
        solve: ``solve(theta (M, d)) -> (loglik (M,), tia (M, K))``: the log-likelihood of all
            the data given to the update (PET and SPECT, or SPECT only) and the TIA of each
            draw; non-finite values mark failed solves (weight 0).
        twin_mean, twin_cov: the Laplace twin (proposal centre).
        target_mean, target_cov: the Gaussian prior of the target (the population prior when the
            PET likelihood is in ``solve``, else the twin itself); also the defensive component.
        n1, n2: draws of stage 1 and 2 (default n2 = STAGE2_SHARE n1; 0: one stage).
    """
    problem = {"twin_mean": twin_mean, "twin_cov": twin_cov, "target_mean": target_mean,
               "target_cov": target_cov, "seed": seed, "target": target}
    return adaptive_update_many(lambda thetas: [solve(thetas[0])], [problem], n1=n1, n2=n2,
                                level=level, defensive=defensive, inflate=inflate)[0]


def stage1_draws(problem, n1: int, *, defensive: float = DEFENSIVE,
                 inflate: float = LAPLACE_INFLATE):
    """(stage-1 proposal, its n1 draws, the random generator for stage 2) of one problem
    (a dict as in :func:`adaptive_update_many`); deterministic in ``problem['seed']``."""
    rng = np.random.default_rng([int(problem.get("seed", 0)), 4242])
    q1 = stage1_proposal(problem["twin_mean"], problem["twin_cov"], problem["target_mean"],
                         problem["target_cov"], defensive=defensive, inflate=inflate)
    return q1, q1.sample(n1, rng), rng


def adaptive_update_many(solve_many, problems, *, n1: int = 1000, n2: int | None = None,
                         level: float = 0.90, defensive: float = DEFENSIVE,
                         inflate: float = LAPLACE_INFLATE) -> list:
    """:func:`adaptive_update` of several independent problems, each stage solved in one call
    (so a cohort is one batched solve per stage).

    Args:
        solve_many: ``solve_many([theta_1, ..., theta_P]) -> [(loglik_p, tia_p), ...]``.
        problems: dicts with ``twin_mean, twin_cov, target_mean, target_cov`` and optional
            ``seed`` (draws are deterministic in it) and ``target`` (a label).
    Returns:
        one :class:`UpdateResult` per problem.
    """
    if n1 < 10:
        raise InputError(f"need at least 10 draws, got {n1}")
    n2 = int(round(STAGE2_SHARE * n1)) if n2 is None else int(n2)
    st1 = [stage1_draws(p, n1, defensive=defensive, inflate=inflate) for p in problems]
    res1 = solve_many([th for _, th, _ in st1])
    parts = []
    for p, (q1, th1, rng), (ll1, tia1) in zip(problems, st1, res1):
        ll1 = _finite(ll1, tia1)
        w1, ess1 = normalised_weights(log_weights(th1, ll1, p["target_mean"], p["target_cov"],
                                                  q1))
        comp = th2 = None
        if n2 > 0:
            comp = stage2_component(th1, w1, p["target_cov"])
            L = np.linalg.cholesky(comp[1])
            th2 = comp[0] + rng.standard_normal((n2, len(comp[0]))) @ L.T
        parts.append((q1, th1, ll1, np.asarray(tia1, float), ess1, comp, th2))
    res2 = solve_many([x[6] for x in parts]) if n2 > 0 else [None] * len(parts)
    out = []
    for p, (q1, th1, ll1, tia1, ess1, comp, th2), r2 in zip(problems, parts, res2):
        theta, ll, tia, q = th1, ll1, tia1, q1
        if r2 is not None:
            theta = np.vstack([th1, th2])
            ll = np.concatenate([ll1, _finite(*r2)])
            tia = np.vstack([tia1, np.asarray(r2[1], float)])
            q = combined_proposal(q1, n1, comp, n2)
        w, ess = normalised_weights(log_weights(theta, ll, p["target_mean"], p["target_cov"], q))
        s = weighted_summary(tia, w, level)
        out.append(UpdateResult(s["median"], s["low"], s["high"], s["p_over"], ess, ess1, theta,
                                w, tia, p.get("target", "")))
    return out


def _finite(ll, tia):
    """loglik with -inf where the solve failed (non-finite loglik or TIA)."""
    ll = np.asarray(ll, float).copy()
    bad = ~np.isfinite(ll) | ~np.all(np.isfinite(np.asarray(tia, float)), axis=1)
    ll[bad] = -np.inf
    return ll


# ---------------------------------------------------------------------------------------------
# The PBPK side: the twin's stored PET observations and batched solves (command line).

def pet_rows(twin):
    """The PET observations a twin was fitted with, from TWIN.json ``diagnostics.residuals``:
    (regions, times h from the fit regimen's first administration, radiopharmaceuticals,
    observed MBq, sigma MBq), or None when the twin does not carry them."""
    rows = (twin.diagnostics or {}).get("residuals") or []
    try:
        reg = np.array([str(r["region"]) for r in rows], dtype=object)
        t = np.array([float(r["time_h"]) for r in rows])
        rps = np.array([str(r["radiopharmaceutical"]).lower() for r in rows], dtype=object)
        y = np.array([float(r["observed_mbq"]) for r in rows])
        s = np.array([float(r["sigma_mbq"]) for r in rows])
    except (KeyError, TypeError, ValueError):
        return None
    if not len(rows) or np.any(~np.isfinite(s)) or np.any(s <= 0) or np.any(~np.isfinite(y)):
        return None
    return reg, t, rps, y, s


def _prior_aligned(twin):
    """(mean, cov) of the twin's prior in the order of twin.names, or None."""
    pr = twin.prior
    try:
        idx = [list(pr.names).index(n) for n in twin.names]
    except (AttributeError, ValueError):
        return None
    return np.asarray(pr.mean_log)[idx], np.asarray(pr.cov_log)[np.ix_(idx, idx)]


def batch_bucket(n: int) -> int:
    """The padded batch size of n draws: the next power of two (at least 64), so that the
    stages of an update, and updates with similar draw counts, share one compiled solver."""
    return max(64, 1 << (int(n) - 1).bit_length())


class SpectSolver:
    """Batched solves of one regimen for draws of a twin's log parameters, padded to
    ``pad_to`` rows (one compiled program for every stage and update), optionally with the
    twin's MAP solved in the same batch. Output times: only the observation times (the solver
    steps onto every output time, so a fine grid would cost steps)."""

    def __init__(self, twin, regimen, times_abs, days, settings, pad_to=None):
        from calibration import model_spec
        from pbpk_models.simulate import prepare

        self.spec = model_spec(twin.model_name, twin.variant)
        self.regimen, self.days, self.settings = regimen, days, settings
        self.times = np.unique(np.asarray(times_abs, float))
        model = prepare(self.spec, regimen, self.times, days)[0]
        self.base = model.params_from(twin.fixed)
        self.idx = [model.parameter_names.index(n) for n in twin.names]
        self.pad_to = pad_to
        self.map_out = None
        self.theta_map = twin.theta_map

    def __call__(self, theta, with_map=False):
        """dict of simulate_batch outputs for the rows of ``theta`` (numpy; padding removed);
        with ``with_map`` the twin's MAP is solved in the same batch (``self.map_out``)."""
        from pbpk_models.simulate import simulate_batch

        th = np.vstack([self.theta_map[None, :], theta]) if with_map else np.asarray(theta)
        n = len(th)
        size = max(n, self.pad_to or n)
        if size > n:
            th = np.vstack([th, np.repeat(th[:1], size - n, axis=0)])
        P = np.tile(self.base, (size, 1))
        P[:, self.idx] = np.exp(th)
        out = simulate_batch(self.spec, self.regimen, P, self.times, days=self.days,
                             settings=self.settings)
        res = {"model": out["model"], "activity_mbq": np.array(out["activity_mbq"])[:n],
               "tia_mbq_h": np.array(out["tia_mbq_h"])[:n], "ok": np.array(out["ok"])[:n]}
        if with_map:
            self.map_out = {k: (v[:1] if k != "model" else v) for k, v in res.items()}
            res = {k: (v[1:] if k != "model" else v) for k, v in res.items()}
        return res


def columns(out, rp, regions):
    """(index of radiopharmaceutical ``rp``, indices of ``regions``) in a solver output's
    ``activity_mbq`` / ``tia_mbq_h`` axes (``out["model"]``)."""
    model = out["model"]
    names = list(model.regions)
    return ([r.name for r in model.radiopharmaceuticals].index(rp),
            [names.index(r) for r in regions])


def twin_update(observations, twin, regimen, rp, regions, *, n_samples: int = 1000,
                n_stage2: int | None = None, seed: int = 0, level: float = 0.90,
                days: float = 120.0, settings=None, pet_regimen=None, use_pet: bool = True,
                defensive: float = DEFENSIVE, inflate: float = LAPLACE_INFLATE):
    """Update a twin (calibration.Posterior) with SPECT ``observations`` of ``rp`` (times from
    ``regimen``'s first administration): :func:`adaptive_update` with the PBPK model.

    With ``use_pet`` and a twin that carries its PET observations (:func:`pet_rows`) and the
    regimen it was fitted with (``pet_regimen``), the target is prior x PET x SPECT (exact);
    otherwise twin Laplace x SPECT. Returns (DataFrame ``region, tia_mbq_h, tia_low, tia_high``,
    UpdateResult)."""
    import pandas as pd

    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import POPULATION_SETTINGS

    settings = settings or POPULATION_SETTINGS
    sub = Regimen(tuple(a for a in regimen.administrations
                        if a.radiopharmaceutical.lower() == rp))
    t0 = float(regimen.times_h.min())
    obs_t = t0 + np.asarray(observations.time_h, float)
    times = np.unique(obs_t)
    n2 = int(round(STAGE2_SHARE * n_samples)) if n_stage2 is None else int(n_stage2)
    pad = batch_bucket(max(n_samples + 1, n2))
    pet = rows = None
    prior = _prior_aligned(twin)
    if use_pet and pet_regimen is not None and prior is not None:
        rows = pet_rows(twin)
    same = False
    if rows is not None:
        preg, pt, prps, py, ps = rows
        pt_abs = float(pet_regimen.times_h.min()) + pt
        # the twin was fitted on earlier scans of this same administration (e.g. a 4 h SPECT):
        # one solve serves both likelihoods
        same = pet_regimen.administrations == sub.administrations
        if same:
            times = np.unique(np.concatenate([times, pt_abs]))
        else:
            last = float(pet_regimen.times_h.max())
            pdays = max(0.05, (pt_abs.max() - last) / 24.0 + 0.05)
            pet = SpectSolver(twin, pet_regimen, pt_abs, pdays, settings, pad_to=pad)
    spect = SpectSolver(twin, sub, times, days, settings, pad_to=pad)
    times = spect.times
    y = np.asarray(observations.activity_mbq, float)
    sig = np.asarray(observations.sigma_mbq, float)

    def solve(theta):
        out = spect(theta)
        rp_i, ri = columns(out, rp, observations.region)
        act = np.asarray(out["activity_mbq"])[:, rp_i]
        pred = act[:, ri, np.searchsorted(times, obs_t)]
        ll = gaussian_loglik(np.nan_to_num(pred, nan=np.inf), y, sig)
        ok = np.array(out["ok"], dtype=bool)
        if rows is not None:
            po = out if same else pet(theta)
            pn = list(po["model"].regions)
            prp = [r.name for r in po["model"].radiopharmaceuticals]
            pa = np.asarray(po["activity_mbq"])
            ppred = pa[:, [prp.index(r) for r in prps], [pn.index(r) for r in preg],
                       np.searchsorted(spect.times if same else pet.times, pt_abs)]
            ll = ll + gaussian_loglik(np.nan_to_num(ppred, nan=np.inf), py, ps)
            ok &= np.asarray(po["ok"], bool)
        tia = np.asarray(out["tia_mbq_h"])[:, rp_i][:, columns(out, rp, regions)[1]]
        ll = np.where(ok, ll, -np.inf)
        return ll, tia

    if rows is not None:
        tm, tc, label = prior[0], prior[1], "prior x PET x SPECT"
    else:
        tm, tc, label = twin.theta_map, twin.cov_log, "twin x SPECT"
    res = adaptive_update(solve, twin_mean=twin.theta_map, twin_cov=twin.cov_log,
                          target_mean=tm, target_cov=tc, n1=n_samples, n2=n_stage2, seed=seed,
                          level=level, defensive=defensive, inflate=inflate, target=label)
    if res.ess < MIN_ESS:
        warnings.warn(f"the SPECT is far from what the twin expects: only {res.ess:.0f} effective "
                      f"draws of {len(res.weights)}; the interval is unreliable (check units, "
                      f"times and regions, refit the twin, or raise --samples)", UserWarning,
                      stacklevel=2)
    df = pd.DataFrame({"region": list(regions), "tia_mbq_h": res.median, "tia_low": res.low,
                       "tia_high": res.high})
    return df, res

