"""Dose-escalation designs, vectorised over simulated trials: 3+3, BOIN and CRM.

Every design runs ``n_trials`` trials at once as numpy arrays (trials on the first axis); the only
Python loop is over cohorts. Patients come from an :class:`OutcomeStream`: the k-th patient
enrolled in trial t is patient ``index[t, k]`` of a pool with per-level DLT probabilities
``p_dlt[j, level]`` and has a DLT if ``u[t, k] < p_dlt[index[t, k], level]``. With given true DLT
probabilities the pool has one member. The stream is drawn from the seed before the trial runs,
so the same seed gives the same patients whatever the design.

Designs (levels are 0-based inside, reported 1-based; "no MTD" is -1):

- 3+3 (Storer BE, Biometrics 1989;45:925-937; the variant described in the documentation of the
  R packages, population_radiobiology.md): treat 3 at the current level; 0/3 escalate; 1/3 treat
  3 more; with 6, at most 1/6 escalate; otherwise (>= 2/3 or >= 2/6) stop and select the level
  below. Escalating past the highest level stops the trial and selects it. The level below is
  not expanded to 6 on stopping (a variant; it makes the probability of escalating past a level
  exactly b(0;3,p) + b(1;3,p) b(0;3,p)).
- BOIN (Liu S, Yuan Y, J R Stat Soc C 2015;64:507-523): escalate when the observed DLT rate at
  the current level is <= lambda_e, de-escalate when >= lambda_d, with
  lambda_e = log((1-phi1)/(1-phi)) / log(phi (1-phi1) / (phi1 (1-phi))),
  lambda_d = log((1-phi)/(1-phi2)) / log(phi2 (1-phi) / (phi (1-phi2))), phi1 = 0.6 phi,
  phi2 = 1.4 phi (the paper's defaults). Elimination: with >= 3 patients at a level and
  P(p > phi | Beta(1 + y, 1 + n - y)) > 0.95 the level and all above are eliminated; if the lowest
  is eliminated the trial stops without an MTD. MTD: isotonic (pooled adjacent violators)
  estimate of the DLT rates of the treated levels, the level closest to phi (the CRAN BOIN
  package's ``select.mtd``: estimates (y + 0.05)/(n + 0.1) weighted by their inverse variance,
  ties broken towards the lower level when above phi and the higher when below).
- CRM (O'Quigley J, Pepe M, Fisher L, Biometrics 1990;46:33-48): power model
  p_d(beta) = skeleton_d ^ exp(beta), beta ~ N(0, 1.34) (dfcrm's default prior variance);
  posterior by quadrature on a grid of beta; plug-in of the posterior mean of beta as in dfcrm;
  next level the one closest to phi, never more than one level above the current one (no
  skipping); stop without an MTD if P(p_1 > phi | data) > ``stop_probability`` (0.90, a common
  safety rule) after at least 3 patients; otherwise stop at the maximum sample size. Skeleton by
  the Lee-Cheung method (Lee SM, Cheung YK, Clin Trials 2009;6:227-238; dfcrm ``getprior``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twin.errors import InputError

DESIGNS = ("3+3", "boin", "crm")


# ----------------------------------------------------------------------------------------
# Patients
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutcomeStream:
    """Pre-drawn patients of ``n_trials`` trials (see the module docstring).

    ``p_dlt``: (n_pool, n_levels) DLT probability of each pool member at each level;
    ``index``: (n_trials, max_patients) pool member of each enrolment; ``u``: (n_trials,
    max_patients) uniforms deciding the DLT; ``extra``: optional {name: (n_pool, n_levels)}
    per-patient quantities (e.g. over the kidney limit, response) reported per level.
    """

    p_dlt: np.ndarray
    index: np.ndarray
    u: np.ndarray
    extra: dict | None = None

    @property
    def n_trials(self) -> int:
        return self.index.shape[0]

    @property
    def n_levels(self) -> int:
        return self.p_dlt.shape[1]

    @classmethod
    def draw(cls, p_dlt, n_trials: int, max_patients: int, seed: int, extra=None):
        p = np.atleast_2d(np.asarray(p_dlt, dtype=np.float64))
        if p.ndim != 2 or not np.all((p >= 0) & (p <= 1)):
            raise InputError("DLT probabilities must be in [0, 1]")
        if n_trials < 1 or max_patients < 1:
            raise InputError("n_trials and max_patients must be at least 1")
        rng = np.random.default_rng(seed)
        u = rng.random((n_trials, max_patients))
        index = rng.integers(0, p.shape[0], size=(n_trials, max_patients)) if p.shape[0] > 1 \
            else np.zeros((n_trials, max_patients), dtype=np.int64)
        return cls(p, index, u, extra)

    def outcomes(self, level, slot, size: int):
        """DLT indicators (n_trials, size) and pool indices of patients ``slot..slot+size``
        enrolled at ``level`` (n_trials,). ``slot`` (n_trials,) counts patients so far."""
        cols = slot[:, None] + np.arange(size)[None, :]
        cols = np.minimum(cols, self.index.shape[1] - 1)
        rows = np.arange(self.n_trials)[:, None]
        who = self.index[rows, cols]
        p = self.p_dlt[who, level[:, None]]
        return self.u[rows, cols] < p, who


@dataclass
class TrialResults:
    """Outcome of ``n_trials`` simulated trials.

    ``mtd``: (n_trials,) selected level (0-based; -1 = no MTD); ``n``: (n_trials, n_levels)
    patients treated per level; ``dlt``: (n_trials, n_levels) DLTs per level; ``extra``:
    {name: (n_trials, n_levels)} sums of per-patient quantities per level.
    """

    design: str
    mtd: np.ndarray
    n: np.ndarray
    dlt: np.ndarray
    extra: dict

    def operating_characteristics(self):
        """Per level: p_select_mtd, mean_patients, p_dlt_observed (pooled DLTs / patients at
        the level over all trials), mean_dlts, and per extra quantity its pooled rate."""
        import pandas as pd

        n_levels = self.n.shape[1]
        tot_n = self.n.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rows = {
                "level": np.arange(1, n_levels + 1),
                "p_select_mtd": np.array([(self.mtd == k).mean() for k in range(n_levels)]),
                "mean_patients": self.n.mean(axis=0),
                "p_dlt_observed": np.where(tot_n > 0, self.dlt.sum(axis=0) / tot_n, np.nan),
                "mean_dlts": self.dlt.mean(axis=0),
            }
            for name, v in self.extra.items():
                rows[f"rate_{name}"] = np.where(tot_n > 0, v.sum(axis=0) / tot_n, np.nan)
                rows[f"mean_{name}"] = v.mean(axis=0)
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        return {"design": self.design, "n_trials": int(self.mtd.size),
                "p_no_mtd": float((self.mtd < 0).mean()),
                "mean_total_patients": float(self.n.sum(axis=1).mean()),
                "mean_total_dlts": float(self.dlt.sum(axis=1).mean())}


class _Book:
    """Per-trial bookkeeping shared by the designs."""

    def __init__(self, stream: OutcomeStream):
        self.s = stream
        T, L = stream.n_trials, stream.n_levels
        self.n = np.zeros((T, L), dtype=np.int64)
        self.y = np.zeros((T, L), dtype=np.int64)
        self.slot = np.zeros(T, dtype=np.int64)
        self.extra = {k: np.zeros((T, L)) for k in (stream.extra or {})}

    def treat(self, level, active, size: int):
        """Treat a cohort of ``size`` at ``level`` in the ``active`` trials; return DLTs."""
        d, who = self.s.outcomes(level, self.slot, size)
        d = d & active[:, None]
        rows = np.arange(level.size)
        cnt = d.sum(axis=1)
        np.add.at(self.n, (rows, level), np.where(active, size, 0))
        np.add.at(self.y, (rows, level), cnt)
        for k, v in (self.s.extra or {}).items():
            val = (v[who, level[:, None]] * active[:, None]).sum(axis=1)
            np.add.at(self.extra[k], (rows, level), val)
        self.slot = self.slot + np.where(active, size, 0)
        return cnt

    def result(self, design, mtd):
        return TrialResults(design, mtd, self.n, self.y, self.extra)


# ----------------------------------------------------------------------------------------
# 3+3
# ----------------------------------------------------------------------------------------
def three_plus_three(stream: OutcomeStream) -> TrialResults:
    """The 3+3 design (see the module docstring) on all trials of ``stream`` at once."""
    T, L = stream.n_trials, stream.n_levels
    if stream.index.shape[1] < 6 * L:
        raise InputError(f"3+3 over {L} levels needs up to {6 * L} patients per trial")
    book = _Book(stream)
    level = np.zeros(T, dtype=np.int64)
    active = np.ones(T, dtype=bool)
    mtd = np.full(T, -1, dtype=np.int64)
    rows = np.arange(T)
    for _ in range(2 * L):  # at most two cohorts per level
        if not active.any():
            break
        book.treat(level, active, 3)
        n = book.n[rows, level]
        y = book.y[rows, level]
        escalate = active & (((n == 3) & (y == 0)) | ((n == 6) & (y <= 1)))
        stop = active & (((n == 3) & (y >= 2)) | ((n == 6) & (y >= 2)))
        # expand (n == 3, y == 1): stay at the level
        top = escalate & (level == L - 1)
        mtd = np.where(stop, level - 1, mtd)
        mtd = np.where(top, L - 1, mtd)
        active = active & ~stop & ~top
        level = np.where(escalate & ~top, level + 1, level)
    return book.result("3+3", mtd)


def prob_escalate_3p3(p):
    """Exact probability that the 3+3 escalates past a level of true DLT rate p:
    b(0;3,p) + b(1;3,p) b(0;3,p)."""
    p = np.asarray(p, dtype=np.float64)
    b0 = (1 - p) ** 3
    b1 = 3 * p * (1 - p) ** 2
    return b0 + b1 * b0


# ----------------------------------------------------------------------------------------
# BOIN
# ----------------------------------------------------------------------------------------
def boin_boundaries(target: float, phi1: float | None = None, phi2: float | None = None):
    """(lambda_e, lambda_d) of BOIN (Liu and Yuan 2015, eq. 2.2); phi1 = 0.6 phi, phi2 = 1.4 phi
    by default."""
    _check_target(target)
    phi1 = 0.6 * target if phi1 is None else phi1
    phi2 = 1.4 * target if phi2 is None else phi2
    if not (0 < phi1 < target < phi2 < 1):
        raise InputError(f"BOIN needs 0 < phi1 < target < phi2 < 1, got {phi1}, {target}, {phi2}")
    lam_e = math.log((1 - phi1) / (1 - target)) / math.log(
        target * (1 - phi1) / (phi1 * (1 - target)))
    lam_d = math.log((1 - target) / (1 - phi2)) / math.log(
        phi2 * (1 - target) / (target * (1 - phi2)))
    return lam_e, lam_d


def beta_tail(y, n, target):
    """P(p > target) under the Beta(1 + y, 1 + n - y) posterior (uniform prior)."""
    from scipy.special import betainc

    y = np.asarray(y, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    return 1.0 - betainc(1.0 + y, 1.0 + n - y, target)


def isotonic(values, weights):
    """Weighted isotonic (non-decreasing) regression along the last axis, batched.

    Levels with weight 0 are ignored (their estimate is NaN). Uses the min-max formula
    f_i = max_{j<=i} min_{k>=i} mean_w(values[j..k]) (exact; fine for the few levels of a trial).
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    L = v.shape[-1]
    cw = np.concatenate([np.zeros(w.shape[:-1] + (1,)), np.cumsum(w, axis=-1)], axis=-1)
    cwv = np.concatenate([np.zeros(w.shape[:-1] + (1,)), np.cumsum(w * np.where(w > 0, v, 0.0),
                                                                    axis=-1)], axis=-1)
    j = np.arange(L)[:, None]
    k = np.arange(L)[None, :]
    wsum = cw[..., 1:][..., None, :] - cw[..., :-1][..., :, None]      # [.., j, k]
    vsum = cwv[..., 1:][..., None, :] - cwv[..., :-1][..., :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.where((k >= j) & (wsum > 0), vsum / wsum, np.nan)
    out = np.full(v.shape, np.nan)
    for i in range(L):  # over levels only
        block = avg[..., : i + 1, i:]                  # j <= i, k >= i
        with _quiet():
            inner = np.nanmin(block, axis=-1)
            out[..., i] = np.nanmax(inner, axis=-1)
    return np.where(w > 0, out, np.nan)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def select_mtd_isotonic(n, y, target, eliminated=None):
    """BOIN's MTD selection (CRAN BOIN ``select.mtd``), batched over trials: levels treated and
    not eliminated; pooled-adjacent-violators estimates of (y + 0.05)/(n + 0.1) weighted by
    1/var; the level closest to the target, ties towards the lower level. -1 if none."""
    n = np.asarray(n, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = n > 0
    if eliminated is not None:
        ok &= ~eliminated
    ph = (y + 0.05) / (n + 0.1)
    var = (y + 0.05) * (n - y + 0.05) / ((n + 0.1) ** 2 * (n + 0.1 + 1))
    w = np.where(ok, 1.0 / var, 0.0)
    est = isotonic(ph, w)
    L = n.shape[-1]
    # BOIN adds (1:L) * 1e-10 so that among equal estimates the distance decides towards the
    # lower level when above the target and the higher level when below
    est = est + np.arange(1, L + 1) * 1e-10
    dist = np.where(ok, np.abs(est - target), np.inf)
    sel = np.argmin(dist, axis=-1)
    return np.where(ok.any(axis=-1), sel, -1)


def boin(stream: OutcomeStream, target: float = 0.25, cohort_size: int = 3,
         max_patients: int = 30, eliminate_cutoff: float = 0.95) -> TrialResults:
    """BOIN (see the module docstring) on all trials of ``stream`` at once."""
    lam_e, lam_d = boin_boundaries(target)
    T, L = stream.n_trials, stream.n_levels
    _check_sizes(stream, cohort_size, max_patients)
    book = _Book(stream)
    rows = np.arange(T)
    level = np.zeros(T, dtype=np.int64)
    active = np.ones(T, dtype=bool)
    elim = np.zeros((T, L), dtype=bool)
    for _ in range(max_patients // cohort_size):
        if not active.any():
            break
        book.treat(level, active, cohort_size)
        n = book.n[rows, level]
        y = book.y[rows, level]
        rate = y / np.maximum(n, 1)
        # elimination of this level and all above
        drop = active & (n >= 3) & (beta_tail(y, n, target) > eliminate_cutoff)
        elim |= drop[:, None] & (np.arange(L)[None, :] >= level[:, None])
        stop_all = drop & (level == 0)
        active &= ~stop_all
        nxt_ok = (level + 1 < L) & ~elim[rows, np.minimum(level + 1, L - 1)]
        up = (rate <= lam_e) & nxt_ok
        down = ((rate >= lam_d) | drop) & (level > 0)
        level = np.where(active & up & ~drop, level + 1,
                         np.where(active & down, level - 1, level))
    mtd = select_mtd_isotonic(book.n, book.y, target, elim)
    # a trial stopped for toxicity at the lowest level has no MTD
    mtd = np.where(elim[:, 0], -1, mtd)
    return book.result("boin", mtd)


# ----------------------------------------------------------------------------------------
# CRM
# ----------------------------------------------------------------------------------------
CRM_PRIOR_SD = math.sqrt(1.34)  # dfcrm default prior variance of beta (power model)


def crm_skeleton(target: float, n_levels: int, prior_mtd: int | None = None,
                 halfwidth: float = 0.05):
    """Lee-Cheung skeleton for the power ("empiric") model (dfcrm ``getprior``).

    ``prior_mtd`` 1-based (default the middle level, (n_levels + 1) // 2: an assumption)."""
    _check_target(target)
    if n_levels < 1:
        raise InputError("need at least one level")
    nu = (n_levels + 1) // 2 if prior_mtd is None else int(prior_mtd)
    if not 1 <= nu <= n_levels:
        raise InputError(f"prior MTD must be a level in 1..{n_levels}")
    if not 0 < halfwidth < min(target, 1 - target):
        raise InputError("halfwidth must be positive and smaller than the target's distance "
                         "to 0 and 1")
    s = np.full(n_levels, np.nan)
    s[nu - 1] = target
    for k in range(nu - 1, 0, -1):
        b = math.log(math.log(target + halfwidth) / math.log(s[k]))
        s[k - 1] = math.exp(math.log(target - halfwidth) / math.exp(b))
    for k in range(nu - 1, n_levels - 1):
        b = math.log(math.log(target - halfwidth) / math.log(s[k]))
        s[k + 1] = math.exp(math.log(target + halfwidth) / math.exp(b))
    return s


def crm_posterior(n, y, skeleton, prior_sd: float = CRM_PRIOR_SD, n_grid: int = 401):
    """Posterior mean of beta and P(p_1 > target) pieces, by quadrature on a beta grid.

    ``n``, ``y``: (T, L) counts. Returns (beta_mean (T,), weights (T, G), grid (G,)).
    """
    grid = np.linspace(-6 * prior_sd, 6 * prior_sd, n_grid)
    logs = np.log(np.asarray(skeleton, dtype=np.float64))        # (L,)
    p = np.exp(np.exp(grid)[:, None] * logs[None, :])             # (G, L)
    p = np.clip(p, 1e-300, 1 - 1e-16)
    ll = y @ np.log(p).T + (n - y) @ np.log1p(-p).T              # (T, G)
    lp = ll - 0.5 * (grid / prior_sd) ** 2
    lp -= lp.max(axis=1, keepdims=True)
    w = np.exp(lp)
    w /= w.sum(axis=1, keepdims=True)  # uniform grid: the spacing cancels
    return w @ grid, w, grid


def crm(stream: OutcomeStream, target: float = 0.25, skeleton=None, cohort_size: int = 3,
        max_patients: int = 30, stop_probability: float = 0.90,
        prior_sd: float = CRM_PRIOR_SD) -> TrialResults:
    """CRM (power model; see the module docstring) on all trials of ``stream`` at once."""
    _check_target(target)
    T, L = stream.n_trials, stream.n_levels
    _check_sizes(stream, cohort_size, max_patients)
    skel = crm_skeleton(target, L) if skeleton is None else np.asarray(skeleton, float)
    if skel.shape != (L,) or np.any(np.diff(skel) <= 0) or skel[0] <= 0 or skel[-1] >= 1:
        raise InputError(f"the skeleton must be {L} increasing probabilities in (0, 1)")
    book = _Book(stream)
    level = np.zeros(T, dtype=np.int64)
    active = np.ones(T, dtype=bool)
    stopped = np.zeros(T, dtype=bool)
    rec = np.zeros(T, dtype=np.int64)
    logs = np.log(skel)
    for _ in range(max_patients // cohort_size):
        if not active.any():
            break
        book.treat(level, active, cohort_size)
        bmean, w, grid = crm_posterior(book.n, book.y, skel, prior_sd)
        p_hat = np.exp(np.exp(bmean)[:, None] * logs[None, :])
        rec = np.argmin(np.abs(p_hat - target), axis=1)
        # safety: P(p_1 > target) = P(beta < log(log(target)/log(skeleton_1)))
        p1_tox = (w * (skel[0] ** np.exp(grid) > target)[None, :]).sum(axis=1)
        stop = active & (book.n[:, 0] >= 3) & (p1_tox > stop_probability)
        stopped |= stop
        active &= ~stop
        level = np.where(active, np.minimum(rec, level + 1), level)
    mtd = np.where(stopped, -1, rec)
    return book.result("crm", mtd)


def run_design(design: str, stream: OutcomeStream, **kw) -> TrialResults:
    """Run a design by name ('3+3', 'boin', 'crm') with its keyword options."""
    d = design.lower()
    if d == "3+3":
        return three_plus_three(stream)
    if d == "boin":
        return boin(stream, **kw)
    if d == "crm":
        return crm(stream, **kw)
    raise InputError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")


def max_patients_needed(design: str, n_levels: int, max_patients: int) -> int:
    return 6 * n_levels if design.lower() == "3+3" else max_patients


def _check_target(target):
    if not (isinstance(target, (int, float)) and 0 < target < 1):
        raise InputError(f"the target DLT rate must be in (0, 1), got {target}")


def _check_sizes(stream, cohort_size, max_patients):
    if cohort_size < 1 or max_patients < cohort_size:
        raise InputError("cohort size must be >= 1 and the maximum sample size >= a cohort")
    if stream.index.shape[1] < max_patients:
        raise InputError(f"the patient stream holds {stream.index.shape[1]} patients per trial; "
                         f"the design needs {max_patients}")
