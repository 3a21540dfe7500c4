"""Single-time-point (STP) dosimetry: Hanscheid, Madsen, and the twin prior.

A region's time-integrated activity (TIA, MBq h) from one SPECT at time t (h after the
administration), activity A(t) (MBq):

**Hanscheid** (Hanscheid H, Lapa C, Buck AK, Lassmann M, Werner RA. Dose mapping after
endoradiotherapy with 177Lu-DOTATATE/DOTATOC by a single measurement after 4 days. J Nucl Med
2018;59:75-81, doi:10.2967/jnumed.117.193706): TIA = A(t) 2t / ln 2. For a mono-exponential
curve A0 exp(-l t) the true TIA is A0 / l, so the ratio estimate/true is
R(x) = 2 x exp(-x) / ln 2 with x = l t = ln 2 t / T_eff. R = 1 exactly at x = ln 2 and
x = 2 ln 2, i.e. **at t = T_eff and at t = 2 T_eff** (x e^-x = ln2/2 has exactly these two roots);
between them it overestimates, at most by 2/(e ln 2) - 1 = +6.1% at t = T_eff/ln 2; outside it
underestimates, by less than 10% for 0.764 <= t/T_eff <= 2.437 (the paper: about 0.75-2.4;
tests check all of this).
So the issue's statement is exact.

**Madsen** (Madsen MT, Menda Y, O'Dorisio TM, O'Dorisio MS. Technical note: single time point
dose estimate for exponential clearance. Med Phys 2018;45:2318-2324, doi:10.1002/mp.12886):
TIA = A(t) exp(l t) / l with a population effective decay constant l = ln 2 / T_eff of the organ
and radiopharmaceutical. Exact for a mono-exponential curve with that T_eff at any t; the
relative error for a wrong T_eff is least sensitive at t = T_eff / ln 2 (d/dl of e^(lt)/l
vanishes at t = 1/l).

Population effective half-lives (:data:`POPULATION_T_EFF_H`, cited per entry; lesion regions
``Tumor*`` share a ``lesion`` entry). Checked against the sources: 177Lu-PSMA-617 kidneys 35.5 h,
parotid 42.2 h, liver 22.9 h, spleen 16.8 h (medians; AAPM 2026 abstract, Results paragraph);
177Lu-DOTATATE kidneys 56 +/- 13 h (Spink et al. 2024, abstract). No lesion value of either
radiopharmaceutical could be read in a source here (Hou et al., J Nucl Med 2021, PMC8882881, fit
lognormal T_eff distributions including tumours, but their table was not accessible), so there is
no lesion entry: the user must give one (``t_eff_h=`` / ``--half-life-h Tumor1=H``).

**Twin prior** (:func:`twin_tia`): the PET-calibrated twin (TWIN.json: a Laplace posterior of the
patient's PBPK parameters, with the population prior and the PET rows it was fitted with) updated
by the one SPECT. ``update='adaptive'`` (:mod:`twin.stp_update`): the exact posterior
population prior x PET x SPECT by two-stage importance sampling, the twin's Laplace posterior
serving only as the proposal (in a defensive mixture with the population prior); this corrects a
Laplace approximation that is too narrow or off-centre (the 68Ga-DOTATATE lesion twins: their
PET uptake saturates in the receptor density). A twin without PET rows: twin x SPECT.
Default ``update='importance'`` (:func:`importance_update`): draws from the Laplace twin
(``Posterior.as_prior``) weighted by the SPECT likelihood (exact only if the Laplace twin is).
The default stays ``importance``: on the PSMA cohort (seed 0, 50 patients, 96 h) the adaptive
update put 50% of kidneys over 10% TIA error against 36-38% for ``importance``
(benchmarks/results/stp/exact-update/psma_seed0_n50_96h/); not understood yet.
``update='laplace'``: a MAP fit (``calibration.fit`` with the twin as prior) and draws from its
Laplace posterior (solved like the other updates). All use the Gaussian noise model of
``calibration.fit`` (each row's sigma_mbq) and report the posterior median of the TIA (the
estimator that minimises the expected absolute error; the TIA at the MAP is a biased estimate
when the TIA depends nonlinearly on poorly identified parameters) and a 90% credible interval.
The PBPK model supplies the shape of the curve (uptake, washout, saturation) that the classical
methods must assume.

Scan time before the uptake peak: all methods assume that the scan is on the washout part of the
curve. :func:`check_scan_time` warns when t is before a given peak time (the twin method uses the
twin's own predicted peak) and, for the classical methods, when t / T_eff is outside
Hanscheid's 10% range [0.75, 2.4].
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from twin.errors import FitError, InputError

LN2 = math.log(2.0)

# Hanscheid's formula is within 10% of the mono-exponential TIA for about 0.75 <= t/T_eff <= 2.4
# (Hanscheid et al. 2018; the exact bounds are the roots of 2 x e^-x / ln2 = 0.9, x = ln2 t/T_eff,
# computed in tests/twin/test_stp.py).
HANSCHEID_RANGE = (0.75, 2.4)

# Population effective half-lives (h) per (radiopharmaceutical, model region).
# Values are medians or means of published patient series; each with its source and status
# ("checked": read in the abstract or text).
POPULATION_T_EFF_H = {
    # Normal-Organ Effective Half-Lives for 177Lu-PSMA (AAPM 2026 abstract, paper 2620; 20 patients,
    # SPECT/CT at 4, 24, 48, 72 h, mono-exponential fits): medians kidneys 35.5 h (8.5-152),
    # liver 22.9 h (12.9-63.4), spleen 16.8 h (9.3-149.7), parotid gland 42.2 h (18.9-160.8).
    # Checked (abstract; conference abstract, not peer reviewed).
    ("lu177-psma-617", "Kidney"): (35.5, "median, AAPM 2026 abstract 'Normal-Organ Effective "
                                         "Half-Lives for 177Lu-PSMA' (n=37 kidneys)"),
    ("lu177-psma-617", "SG"): (42.2, "parotid median, AAPM 2026 abstract 'Normal-Organ "
                                     "Effective Half-Lives for 177Lu-PSMA' (n=38 glands)"),
    ("lu177-psma-617", "Liver"): (22.9, "median, AAPM 2026 abstract 'Normal-Organ Effective "
                                        "Half-Lives for 177Lu-PSMA' (n=20)"),
    ("lu177-psma-617", "Spleen"): (16.8, "median, AAPM 2026 abstract 'Normal-Organ Effective "
                                         "Half-Lives for 177Lu-PSMA' (n=20)"),
    # Spink S et al., EJNMMI Phys 2024;11:62, doi:10.1186/s40658-024-00665-9: kidney T_eff
    # 56 +/- 13 h (31 patients, 107 cycles, SPECT/CT day 0, 4, 7). Checked (abstract).
    ("lu177-dotatate", "Kidney"): (56.0, "mean, Spink et al. EJNMMI Phys 2024 (31 patients)"),
}


# Library model -> the therapy radiopharmaceutical whose population T_eff applies.
RP_OF_MODEL = {"psma-pbrpk": "lu177-psma-617", "sstr": "lu177-dotatate"}

# Model regions that are lesions: they share the population "lesion" T_eff.
LESION_REGIONS = ("Tumor1", "Tumor2", "TumorRest")


def _t_eff_key(radiopharmaceutical: str, region: str) -> tuple[str, str]:
    region = "lesion" if region in LESION_REGIONS else region
    return str(radiopharmaceutical).lower(), region


def literature_t_eff_h(radiopharmaceutical: str, region: str) -> float | None:
    """Published population T_eff (h) of a region (lesions: ``Tumor*``), or None if unknown."""
    entry = POPULATION_T_EFF_H.get(_t_eff_key(radiopharmaceutical, region))
    return None if entry is None else float(entry[0])


def population_t_eff_h(radiopharmaceutical: str, region: str, overrides=None) -> float:
    """Population T_eff (h) of a region: ``overrides[region]`` if given, else the table."""
    overrides = overrides or {}
    if region in overrides:
        v = float(overrides[region])
        if not (v > 0 and math.isfinite(v)):
            raise InputError(f"effective half-life of {region} must be > 0 h, got {v}")
        return v
    key = _t_eff_key(radiopharmaceutical, region)
    if key not in POPULATION_T_EFF_H:
        known = ", ".join(f"{r}/{g}" for r, g in POPULATION_T_EFF_H)
        raise InputError(f"no population effective half-life of {region} for "
                         f"{radiopharmaceutical} is known (known: {known}); give one, e.g. "
                         f"--half-life-h {region}=40")
    return POPULATION_T_EFF_H[key][0]


def _check_scan(t_h, activity_mbq):
    t = np.asarray(t_h, dtype=float)
    a = np.asarray(activity_mbq, dtype=float)
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise InputError("the scan time must be > 0 h after the administration")
    if np.any(~np.isfinite(a)) or np.any(a < 0):
        raise InputError("the activity must be a finite number >= 0 MBq")
    return t, a


def hanscheid_tia(activity_mbq, t_h):
    """Hanscheid et al. 2018: TIA = A(t) 2 t / ln 2 (MBq h). Vectorised."""
    t, a = _check_scan(t_h, activity_mbq)
    return a * 2.0 * t / LN2


def madsen_tia(activity_mbq, t_h, t_eff_h):
    """Madsen et al. 2018: TIA = A(t) exp(l t) / l, l = ln 2 / T_eff (MBq h). Vectorised."""
    t, a = _check_scan(t_h, activity_mbq)
    te = np.asarray(t_eff_h, dtype=float)
    if np.any(~np.isfinite(te)) or np.any(te <= 0):
        raise InputError("the effective half-life must be > 0 h")
    lam = LN2 / te
    return a * np.exp(lam * t) / lam


def check_scan_time(region: str, t_h: float, *, t_eff_h: float | None = None,
                    peak_h: float | None = None) -> list[str]:
    """Warnings (also issued as UserWarning) for a scan time unsuited to STP dosimetry."""
    msgs = []
    if peak_h is not None and t_h < peak_h:
        msgs.append(f"{region}: the scan at {t_h:g} h is before the uptake peak (~{peak_h:.3g} h); "
                    f"single-time-point methods assume washout and are unreliable here; scan "
                    f"later (e.g. 48-96 h)")
    if t_eff_h is not None:
        r = t_h / t_eff_h
        if not HANSCHEID_RANGE[0] <= r <= HANSCHEID_RANGE[1]:
            msgs.append(f"{region}: scan time {t_h:g} h is {r:.2g} x the effective half-life "
                        f"{t_eff_h:g} h, outside [{HANSCHEID_RANGE[0]}, {HANSCHEID_RANGE[1]}] "
                        f"where Hanscheid's formula is within 10% for a mono-exponential curve")
    for m in msgs:
        warnings.warn(m, UserWarning, stacklevel=2)
    return msgs


def _one_scan_per_region(observations, method):
    out = {}
    for region in observations.regions:
        o = observations.select(region=region)
        if len(o) != 1:
            raise InputError(f"{method} uses one scan per region, but {region} has {len(o)} rows; "
                             f"keep one time point per region, or use --method multi / twin")
        out[region] = (float(o.time_h[0]), float(o.activity_mbq[0]))
    return out


def _single_rp(observations, radiopharmaceutical=None) -> str:
    rps = sorted(set(observations.radiopharmaceutical))
    if radiopharmaceutical is not None:
        rp = str(radiopharmaceutical).lower()
        if rp not in rps:
            raise InputError(f"no observations of {rp} (present: {', '.join(rps)})")
        return rp
    if len(rps) != 1:
        raise InputError(f"the observations hold several radiopharmaceuticals "
                         f"({', '.join(rps)}); choose one (--radiopharmaceutical)")
    return rps[0]


def classical_stp(observations, method: str, *, radiopharmaceutical=None, t_eff_h=None,
                  time_offset_h: float = 0.0):
    """Hanscheid or Madsen TIA per region of an Observations table (one scan per region).

    Args:
        observations: calibration.Observations (one row per region for the radiopharmaceutical).
        method: ``hanscheid`` or ``madsen``.
        t_eff_h: {region: T_eff h} overriding :data:`POPULATION_T_EFF_H` (Madsen; also used by
            both methods for the scan-time warning).
        time_offset_h: subtracted from the observation times (h) to get the time after the
            administration (observations are timed from the regimen's first administration).
    Returns:
        DataFrame ``region, tia_mbq_h, time_h, t_eff_h`` (t_eff_h empty where unknown).
    """
    import pandas as pd

    if method not in ("hanscheid", "madsen"):
        raise InputError(f"method must be hanscheid or madsen, not {method!r}")
    rp = _single_rp(observations, radiopharmaceutical)
    obs = observations.select(radiopharmaceutical=rp)
    rows = []
    for region, (t, a) in _one_scan_per_region(obs, method).items():
        t = t - time_offset_h
        if t <= 0:
            raise InputError(f"{region}: the scan is at {t:g} h, not after the administration; "
                             f"times are hours after the administration")
        try:
            te = population_t_eff_h(rp, region, t_eff_h)
        except InputError:
            if method == "madsen":
                raise
            te = None
        check_scan_time(region, t, t_eff_h=te)
        tia = hanscheid_tia(a, t) if method == "hanscheid" else madsen_tia(a, t, te)
        rows.append({"region": region, "tia_mbq_h": float(tia), "time_h": t,
                     "t_eff_h": te if te is not None else np.nan})
    return pd.DataFrame(rows)


def twin_peak_times_h(posterior, regimen, radiopharmaceutical: str, regions,
                      horizon_h: float = 168.0) -> dict:
    """Time of the maximum of each region's activity in the twin's MAP prediction (h after the
    first administration of ``radiopharmaceutical``), on a 0.25 h grid to 12 h then hourly."""
    from calibration import model_spec
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import simulate_batch

    sub = Regimen(tuple(a for a in regimen.administrations
                        if a.radiopharmaceutical.lower() == radiopharmaceutical))
    t0 = min(a.time_h for a in sub.administrations)
    grid = np.unique(np.concatenate([np.arange(0.25, 12.0, 0.25), np.arange(12.0, horizon_h, 1.0)]))
    spec = model_spec(posterior.model_name, posterior.variant)
    from pbpk_models.simulate import prepare

    model = prepare(spec, sub, t0 + grid, days=horizon_h / 24.0 + 1)[0]
    p = model.params_from(posterior.fixed)
    idx = [model.parameter_names.index(n) for n in posterior.names]
    p[idx] = np.exp(posterior.theta_map)
    out = simulate_batch(model, sub, p[None, :], t0 + grid, days=horizon_h / 24.0 + 1)
    act = np.asarray(out["activity_mbq"])[0]
    rp_i = [r.name for r in out["model"].radiopharmaceuticals].index(radiopharmaceutical)
    names = list(out["model"].regions)
    return {r: float(grid[int(np.argmax(act[rp_i, names.index(r)]))]) for r in regions
            if r in names}


def twin_tia(observations, twin, regimen=None, *, level: float = 0.90, n_samples: int = 1000,
             seed: int = 0, n_starts: int = 1, days: float = 120.0, check_peak: bool = True,
             settings=None, update: str = "importance", n_stage2: int | None = None,
             pet_regimen=None, use_pet: bool = True):
    """The twin prior: update a (PET-calibrated) twin with the SPECT, predict TIA and interval.

    Args:
        observations: the SPECT region activities (calibration.Observations, times from the
            regimen's first administration).
        twin: a calibration.Posterior or the path of a TWIN.json; its posterior is the prior.
        regimen: the administrations the observations follow (default: the twin's regimen;
            it must contain the observed radiopharmaceutical).
        level: credible level of the interval; n_samples: draws.
        days: TIA integration span after the last administration (d).
        check_peak: warn if a scan is before the twin's predicted uptake peak.
        update: ``importance`` (default, below) or ``adaptive``
            (:func:`twin.stp_update.twin_update`): two-stage
            defensive importance sampling of the exact posterior population prior x PET x SPECT
            (the twin's Laplace posterior only as the proposal; the PET rows and prior are read
            from the twin; twin x SPECT when the twin carries no PET rows), ``n_samples``
            stage-1 and ``n_stage2`` (default n_samples / 2) stage-2 draws;
            ``importance``: ``n_samples`` draws from the twin's Laplace posterior
            (``Posterior.as_prior``) weighted by the SPECT likelihood
            (:func:`importance_update`); ``laplace``: a MAP fit (``calibration.fit`` with the
            twin as prior) and draws from its Laplace posterior.
        pet_regimen: the regimen the twin was fitted with (default: read from the TWIN.json
            path; needed for the PET likelihood of ``adaptive``).
        use_pet: ``adaptive``: use the twin's PET rows (exact target) when it has them.
    Returns:
        (DataFrame ``region, tia_mbq_h, tia_low, tia_high, tia_map_mbq_h``, updated Posterior
        (``laplace``), twin.stp_update.UpdateResult (``adaptive``: ``ess``, ``target``, draws
        and weights) or None (``importance``)): ``tia_mbq_h`` is the posterior median of the TIA (it
        minimises the expected absolute error), the interval the central ``level`` quantiles;
        ``tia_map_mbq_h`` the TIA at the MAP parameters (``laplace``) or at the twin's MAP
        (``importance``, the prior point estimate).
    """
    import pandas as pd

    from pbpk_models.simulate import POPULATION_SETTINGS
    from twin.build import resolve_twin

    if update not in ("adaptive", "importance", "laplace"):
        raise InputError(f"update must be adaptive, importance or laplace, not {update!r}")
    if update in ("adaptive", "importance") and n_samples < 100:
        raise InputError(f"the {update} update needs at least 100 draws, got {n_samples}")
    if n_stage2 is not None and n_stage2 < 0:
        raise InputError(f"the stage-2 draws must be >= 0, got {n_stage2}")
    from calibration import Posterior

    if not isinstance(twin, Posterior):
        from calibration import read_twin

        twin, fitted = read_twin(twin)
        pet_regimen = pet_regimen or fitted
        regimen = regimen or fitted
    twin, regimen = resolve_twin(twin, regimen)
    rp = _single_rp(observations)
    if rp not in regimen.radiopharmaceuticals:
        raise InputError(f"the regimen has no administration of {rp} (it has "
                         f"{', '.join(regimen.radiopharmaceuticals)}); give the therapy regimen "
                         f"(--regimen REGIMEN.csv)")
    regions = list(observations.regions)
    if check_peak:
        t_rp0 = min(a.time_h for a in regimen.administrations
                    if a.radiopharmaceutical.lower() == rp) - float(regimen.times_h.min())
        peaks = twin_peak_times_h(twin, regimen, rp, regions)
        for region in regions:
            o = observations.select(region=region)
            check_scan_time(region, float(o.time_h.min()) - t_rp0, peak_h=peaks.get(region))
    if update == "adaptive":
        from twin.stp_update import twin_update

        df, res = twin_update(observations, twin, regimen, rp, regions, n_samples=n_samples,
                              n_stage2=n_stage2, seed=seed, level=level, days=days,
                              settings=settings or POPULATION_SETTINGS, pet_regimen=pet_regimen,
                              use_pet=use_pet)
        return df.assign(tia_map_mbq_h=np.nan), res
    if update == "importance":
        df = _importance_tia(observations, twin, regimen, rp, regions, level, n_samples, seed,
                             days, settings or POPULATION_SETTINGS)
        return df, None
    from calibration import fit

    with warnings.catch_warnings():
        # one scan and seven parameters: calibration warns that the prior dominates; that is the
        # point of the twin prior
        warnings.filterwarnings("ignore", message=".*data point\\(s\\) for .* personal")
        post = fit(observations, regimen, twin.model_name, variant=twin.variant,
                   prior=twin.as_prior(), fixed=dict(twin.fixed), n_starts=n_starts, seed=seed,
                   region_groups=twin.diagnostics.get("region_groups") or None)
    # draws of the updated (Laplace) twin, solved by the compiled program the other updates use
    solver, _ = _draw_solver(observations, post, regimen, rp, n_samples, days,
                             settings or POPULATION_SETTINGS)
    from twin.stp_update import columns

    out = solver(post.sample_log(n_samples, seed), with_map=True)
    rp_i, k = columns(out, rp, regions)
    tia = out["tia_mbq_h"][:, rp_i][:, k]
    tia = tia[np.asarray(out["ok"], bool) & np.all(np.isfinite(tia), axis=1)]
    if len(tia) < max(2, n_samples // 2):
        raise FitError(f"only {len(tia)} of {n_samples} draws of the updated twin could be "
                       f"solved; check the observations")
    # Point estimate: the posterior median of each region's TIA over the draws (it minimises the
    # expected absolute error; the TIA at the MAP parameters is biased when TIA is a nonlinear
    # function of poorly identified parameters). The MAP value is kept for reference.
    df = pd.DataFrame({"region": regions, "tia_mbq_h": np.median(tia, axis=0),
                       "tia_low": np.quantile(tia, (1 - level) / 2, axis=0),
                       "tia_high": np.quantile(tia, (1 + level) / 2, axis=0),
                       "tia_map_mbq_h": _map_tia(solver, rp_i, k)})
    return df, post


def _map_tia(solver, rp_i, k):
    """TIA (len(k),) at the MAP row the solver ran with ``with_map=True`` (NaN if it failed)."""
    m = solver.map_out
    return m["tia_mbq_h"][0, rp_i][k] if bool(m["ok"][0]) else np.full(len(k), np.nan)


def _draw_solver(observations, twin, regimen, rp, n_samples, days, settings):
    """(twin.stp_update.SpectSolver of ``rp`` alone on the observation times, padded to
    batch_bucket(n_samples + 1): the compiled program every update shares; absolute
    observation times)."""
    from pbpk_models.regimen import Regimen
    from twin.stp_update import SpectSolver, batch_bucket

    sub = Regimen(tuple(a for a in regimen.administrations
                        if a.radiopharmaceutical.lower() == rp))
    obs_t = float(regimen.times_h.min()) + np.asarray(observations.time_h, float)
    return (SpectSolver(twin, sub, obs_t, days, settings, pad_to=batch_bucket(n_samples + 1)),
            obs_t)


def _importance_tia(observations, twin, regimen, rp, regions, level, n_samples, seed, days,
                    settings):
    """twin_tia(update='importance'): draws from the twin and its MAP, one batched solve (the
    compiled program of the other updates, twin.stp_update.SpectSolver), SPECT weights."""
    import pandas as pd

    from twin.stp_update import MIN_ESS, columns

    solver, obs_t = _draw_solver(observations, twin, regimen, rp, n_samples, days, settings)
    out = solver(twin.as_prior().sample_log(n_samples, seed), with_map=True)
    rp_i, ri = columns(out, rp, observations.region)
    _, k = columns(out, rp, regions)
    act = out["activity_mbq"][:, rp_i]          # (M, regions, times)
    tia = out["tia_mbq_h"][:, rp_i]             # (M, regions)
    ok = out["ok"]
    pred = act[:, ri, np.searchsorted(solver.times, obs_t)]       # (M, observation rows)
    med, _, ess, lo, hi = importance_update(pred, tia[:, k], observations.activity_mbq,
                                            observations.sigma_mbq, ok, level=level)
    if ess < MIN_ESS:
        warnings.warn(f"the SPECT is far from what the twin expects: only {ess:.0f} effective "
                      f"draws of {n_samples}; the interval is unreliable (check units, times "
                      f"and regions, or refit the twin)", UserWarning, stacklevel=3)
    return pd.DataFrame({"region": regions, "tia_mbq_h": med, "tia_low": lo, "tia_high": hi,
                         "tia_map_mbq_h": _map_tia(solver, rp_i, k)})


def weighted_quantile(values, weights, q: float):
    """Weighted q-quantile of each column of ``values`` (M, R) with weights (M,) (normalised
    here): the smallest value whose cumulative weight reaches q."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    if v.ndim != 2 or w.shape != (v.shape[0],):
        raise InputError(f"values must be (M, R) and weights (M,), got {v.shape} and {w.shape}")
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise InputError("weights must be finite, >= 0 and not all zero")
    if not 0.0 < q < 1.0:
        raise InputError(f"quantile must be between 0 and 1, got {q}")
    w = w / w.sum()
    order = np.argsort(v, axis=0)
    cw = np.cumsum(w[order], axis=0)
    idx = np.argmax(cw >= q - 1e-12, axis=0)
    return np.take_along_axis(v, order, axis=0)[idx, np.arange(v.shape[1])]


def weighted_median(values, weights):
    """Weighted median of each column of ``values`` (M, R) with weights (M,)."""
    return weighted_quantile(values, weights, 0.5)


def importance_update(predicted_mbq, tia_mbq_h, measured_mbq, sigma_mbq, ok=None,
                      level: float | None = None):
    """Update draws from a twin's prior with one SPECT: posterior median TIA by importance weights.

    The draws (e.g. ``Posterior.as_prior().sample_log``, simulated) are weighted by the Gaussian
    likelihood of the measured region activities, prod_r N(y_r; pred_r, sigma_r): the same noise
    model ``calibration.fit`` uses (each row's sigma_mbq). Exact Bayesian updating as the number
    of draws grows (no Laplace approximation of the updated posterior); the posterior median is
    the estimator that minimises the expected absolute error.

    Args:
        predicted_mbq: (M, R) activity of each draw at the scan time, the measured regions.
        tia_mbq_h: (M, K) TIA of each draw (any regions).
        measured_mbq, sigma_mbq: (R,) the scan and its standard uncertainties (> 0).
        ok: (M,) solver success of the draws (default all).
        level: if given, also the equal-tailed credible interval of that level.
    Returns:
        (posterior median TIA (K,), prior median TIA (K,), effective sample size of the
        weights), plus (low (K,), high (K,)) when ``level`` is given.
    Raises:
        InputError for bad shapes or sigma, or fewer than 10 usable draws.
    """
    from twin.stp_update import gaussian_loglik, normalised_weights

    pred = np.asarray(predicted_mbq, dtype=float)
    tia = np.asarray(tia_mbq_h, dtype=float)
    if pred.ndim != 2 or tia.ndim != 2 or pred.shape[0] != tia.shape[0]:
        raise InputError(f"shapes: predicted (M, R) and tia (M, K) with the same M; got "
                         f"{pred.shape}, {tia.shape}")
    loglik = gaussian_loglik(pred, measured_mbq, sigma_mbq)   # checks y, sigma (R,), sigma > 0
    good = np.ones(len(pred), bool) if ok is None else np.asarray(ok, bool).copy()
    good &= np.all(np.isfinite(pred), axis=1) & np.all(np.isfinite(tia), axis=1)
    if good.sum() < 10:
        raise InputError(f"only {int(good.sum())} usable draws (need >= 10)")
    t = tia[good]
    w, ess = normalised_weights(loglik[good])
    prior_median = np.median(t, axis=0)
    out = (weighted_median(t, w), prior_median, ess)
    if level is not None:
        out += (weighted_quantile(t, w, (1 - level) / 2), weighted_quantile(t, w, (1 + level) / 2))
    return out
