"""Validation of single-time-point (STP) dosimetry: Hanscheid, Madsen and the twin prior.

Two radiopharmaceuticals (``--model``): ``psma-pbrpk`` (177Lu-PSMA-617 7.4 GBq / 57.09 nmol;
68Ga-PSMA-11 PET 150 MBq / 3 nmol) and ``sstr`` (177Lu-DOTATATE 7.4 GBq / 105 nmol;
68Ga-DOTATATE PET 150 MBq / 8.6 nmol; amounts and sources in MODELS). Reference TIA = the true
curve's integral over 120 d.

1. ``pbpk`` cohort: virtual patients with personal parameters drawn from the population prior
   (psma: calibration.default_prior; sstr: the parameters and CVs of MODELS['sstr'], cited),
   curves by ``simulate_batch``. Each patient has a PET at 1 h and one SPECT at a scan time t in
   SCAN_TIMES_H; region activities drawn with the per-class noise of calibration.noise_model
   (organs calibration.NOISE: PET 10% + 0.02 MBq, SPECT 15% + 0.5 MBq; lesions
   calibration.NOISE_LESION: PET 16%, SPECT 18%; sources there; ``--spect-noise`` scales every
   SPECT proportional term), sigma taken from the *measured* value, as a clinic would; the noise
   used is recorded in each output row (``noise``).
   - Twin prior: the PET-calibrated twin (calibration.fit from the population prior: a Laplace
     posterior) is the prior of the SPECT update (``Posterior.as_prior``). The update is done by
     importance sampling (twin.stp.importance_update): ``--draws`` draws from that prior, one
     vmapped solve, weights = the SPECT likelihood under the same Gaussian noise model the fit
     uses; estimate = the posterior median TIA (minimises the expected absolute error). This is
     the exact Bayesian update of the twin's prior (no second Laplace approximation) and costs
     one batched solve instead of a fit per patient and scan time. ``twin-pet-only``: the PET
     twin's prior median TIA, without the SPECT (what the SPECT adds).
   - ``exact-shape``: the true TIA scaled by measured / true activity (the noise-only floor);
     ``twin-window``: the estimate with the most posterior mass within +-10%; ``twin-ais``
     (``--ais-times``): a second, adapted stage of draws (multiple importance sampling).
   - ``twin-exact1`` / ``twin-exact`` (``--exact-times``): the update of the command line
     (twin.stp_update, ``twin stp --update adaptive``): the exact posterior population prior x
     PET x SPECT, the PET twin's Laplace posterior only as the proposal (defensive mixture with
     the population prior), stage 1 only (every scan time) / both stages (``--exact-times``);
     ``twin-exact-pet-only``: the same without the SPECT (the exact PET twin; its calibration
     against the truth in ``stp_exact_pet_calibration_<model>.csv``).
   - Hanscheid: A(t) 2t/ln2. Madsen: population T_eff per region = median mono-exponential
     T_eff (24-168 h, noise-free) of an *independent* reference population of the same prior
     (a clinic's own multi-time-point series: favourable to Madsen, but not the evaluated
     patients); ``madsen-lit``: the literature T_eff of twin.stp.POPULATION_T_EFF_H where one
     exists (computed in summarise() from the stored measured activity).
2. ``biexp`` cohort: curves NOT from the PBPK model: A(t) = A0 (e^(-l1 t) - e^(-l2 t)) for the
   regions with a literature T_eff (psma: Kidney, SG, Liver; sstr: Kidney), T_eff = ln2/l1
   lognormal around the literature medians (sd of log T_eff 0.35: *assumed*; the published
   ranges are wide, 8.5-152 h for PSMA kidneys), uptake half-time lognormal, median 1 h, sd_log
   0.5 (*assumed*), level such that the TIA is the population-typical PBPK TIA times a lognormal
   factor (sd_log 0.3, *assumed*). Madsen uses the literature medians (its assumption holds on
   average). Twin prior: no PET exists for such curves, so the prior is the *population* prior
   (4 x ``--draws`` shared draws) updated with the SPECT; this tests the PBPK model's structure
   against kinetics it did not generate.

Metrics per method, region and scan time: median and 90th percentile of |TIA error| and the share
of patients with |error| > 10%; the best scan time per method minimises that share. Writes
``OUT/stp_errors_<model>_<cohort>.csv`` (every estimate; checkpointed after each scan time),
``OUT/stp_summary.csv``, ``OUT/stp_best.md``, ``OUT/stp_goal_ratios.csv`` and
``OUT/stp_error_vs_time.png``; ``--summarise-only`` pools all error CSVs in OUT.

Usage: python benchmarks/validate_stp.py --model psma-pbrpk|sstr [--n 12] [--draws 256]
[--cohort pbpk|biexp|both] [--spect-noise 0.10] [--ais-times 48] [--out DIR]
       python benchmarks/validate_stp.py --from-draws OUT/stp_draws_<model>.npz [--spect-noise S]
[--use-draws K] [--likelihood predicted] --out DIR2      (the SPECT part again, nothing solved)
(``--n 100`` for the README table: 100 PET fits and 100 x 256 draws solved in batches.)
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("EQX_ON_ERROR", "nan")
os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SCAN_TIMES_H = (24.0, 48.0, 72.0, 96.0, 168.0)
DAYS = 120.0                                # TIA span; 177Lu left after 120 d: 3e-6 of A0
BIEXP_SD_LOG_TEFF = 0.35                    # assumed (see module docstring)
BIEXP_UPTAKE_MEDIAN_H, BIEXP_UPTAKE_SD_LOG = 1.0, 0.5   # assumed
BIEXP_LEVEL_SD_LOG = 0.3                    # assumed
LESIONS = ("Tumor1", "Tumor2")

# Kidney effective half-life of 177Lu-DOTATATE 56 +/- 13 h (Spink et al., EJNMMI Phys 2024).
# With the 177Lu half-life 159.5 h the biological release rate is ln2/56 - ln2/159.5 = 0.0080 /h,
# and T_eff 43..69 h (+/- 1 SD) maps to 0.0118..0.0057 /h: CV about 0.37 (derived).
_SSTR_KIDNEY_TRAP_CV = 0.37
# Lesion SSTR2 density 34 +/- 20 nmol/L (Jimenez-Franco LD et al., J Nucl Med 2021;62:92): CV 0.59.
_SSTR_TUMOUR_RDEN_CV = 20.0 / 34.0

MODELS = {
    "psma-pbrpk": {
        "therapy": "lu177-psma-617", "therapy_mbq": 7400.0,
        "therapy_nmol": 57.09,   # typical 177Lu-PSMA-617 amount (pbpk_models.regimen)
        "pet": "ga68-psma-11", "pet_mbq": 150.0,
        "pet_nmol": 3.0,         # 68Ga-PSMA-11 (Begum et al., Sci Rep 2019; regimen.TYPICAL_NMOL)
        "regions": ("Kidney", "SG", "Liver", "Tumor1", "Tumor2", "TumorRest"),
        "biexp_regions": ("Kidney", "SG", "Liver"),   # regions with a literature T_eff
        "personal": None, "overrides": None,   # calibration.priors.PERSONAL and its catalogue
    },
    "sstr": {
        "therapy": "lu177-dotatate", "therapy_mbq": 7400.0,
        "therapy_nmol": 105.0,   # 105 nmol per 7.4 GBq (Jimenez-Franco 2021; regimen.py)
        # 68Ga-DOTATATE 100-200 MBq (Bozkurt MF et al., EANM/SNMMI guideline, Eur J Nucl Med
        # Mol Imaging 2017;44:1588, doi:10.1007/s00259-017-3728-y): 150 MBq; 8.6 nmol
        # (Siebinga et al. 2021 median 12.3 ug; regimen.TYPICAL_NMOL)
        "pet": "ga68-dotatate", "pet_mbq": 150.0, "pet_nmol": 8.6,
        "regions": ("Kidney", "Spleen", "Liver", "Tumor1", "Tumor2", "TumorRest"),
        "biexp_regions": ("Kidney",),                 # the one literature T_eff (Spink 2024)
        # calibration declares no personal parameters for sstr; these are the ones with a
        # published population spread (or the psma assumption for GFR), model defaults as means
        "personal": ("Rden_Tumor1", "Rden_Tumor2", "Rden_TumorRest", "Rden_Spleen",
                     "lambdaRel_KidneyTrap", "TER_Kidney"),
        "cv": {"Rden_Tumor1": _SSTR_TUMOUR_RDEN_CV, "Rden_Tumor2": _SSTR_TUMOUR_RDEN_CV,
               "Rden_TumorRest": _SSTR_TUMOUR_RDEN_CV,
               "Rden_Spleen": 0.5,            # assumed (calibration.priors.DEFAULT_CV)
               "lambdaRel_KidneyTrap": _SSTR_KIDNEY_TRAP_CV,
               "TER_Kidney": 0.25},           # GFR spread, assumed (calibration.priors.TER_CV)
    },
}


class Setup:
    """Model, population prior and regimens of one radiopharmaceutical pair."""

    def __init__(self, model_name):
        import jax

        jax.config.update("jax_enable_x64", True)
        from calibration import default_prior, model_spec
        from pbpk_models.regimen import Administration, Regimen

        cfg = MODELS[model_name]
        self.name, self.cfg = model_name, cfg
        self.spec = model_spec(model_name)
        overrides = None
        if "cv" in cfg:
            d = self.spec.default_values()
            overrides = {k: (d[k], cv) for k, cv in cfg["cv"].items()}
        self.prior = default_prior(model_name, self.spec, cfg["personal"], overrides)
        self.lu, self.pet = cfg["therapy"], cfg["pet"]
        self.regions = cfg["regions"]
        self.lureg = Regimen((Administration(0.0, self.lu, cfg["therapy_mbq"],
                                             cfg["therapy_nmol"]),))
        self.petreg = Regimen((Administration(0.0, self.pet, cfg["pet_mbq"], cfg["pet_nmol"]),))

    def simulate(self, regimen, thetas, times, days=DAYS):
        """(activity (N, regions, times) MBq, tia (N, regions) MBq h, ok, region names)."""
        from pbpk_models.simulate import prepare, simulate_batch

        model = prepare(self.spec, regimen, np.asarray(times), days)[0]
        base = model.params_from({})
        idx = [model.parameter_names.index(n) for n in self.prior.names]
        P = np.tile(base, (len(thetas), 1))
        P[:, idx] = np.exp(thetas)
        out = simulate_batch(model, regimen, P, np.asarray(times), days=days)
        rp_i = [r.name for r in out["model"].radiopharmaceuticals].index(
            regimen.radiopharmaceuticals[0])
        return (np.asarray(out["activity_mbq"])[:, rp_i], np.asarray(out["tia_mbq_h"])[:, rp_i],
                np.asarray(out["ok"]), list(out["model"].regions))

    def fit(self, obs, regimen, prior):
        from calibration import fit
        from pbpk_models.errors import FitError

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return fit(obs, regimen, self.name, prior=prior,
                           n_starts=getattr(self, "n_starts", 1),
                           max_nfev=getattr(self, "max_nfev", 40))
            except FitError:
                return None


def noise_table(spect_noise=None):
    """Noise models per (modality, region class) for calibration.noise_model: organs
    calibration.NOISE, lesions calibration.NOISE_LESION (the classes the calibration uses).
    ``spect_noise`` (sensitivity runs): the organ SPECT proportional term; every SPECT
    proportional term is scaled by the same factor spect_noise / NOISE['SPECT'].proportional
    (organs 15% -> spect_noise, lesions 18% -> 1.2 x spect_noise: the lesion recovery error is
    taken to improve with the quantification in the same proportion); the 0.5 MBq floor stays."""
    from calibration import NOISE, NOISE_LESION, NoiseModel

    table = {}
    for m in NOISE:
        table[(m, "organ")] = NOISE[m]
        table[(m, "lesion")] = NOISE_LESION.get(m, NOISE[m])
    if spect_noise is not None:
        k = spect_noise / NOISE["SPECT"].proportional
        for kind in ("organ", "lesion"):
            nm = table[("SPECT", kind)]
            table[("SPECT", kind)] = NoiseModel(nm.proportional * k, nm.additive_mbq,
                                                f"{nm.basis}; proportional term x {k:.3g} "
                                                f"(sensitivity run)")
    return table


def noise_note(table):
    """One-line description of the SPECT/PET noise classes used (written into the outputs)."""
    return "; ".join(f"{m} {kind} {100 * nm.proportional:.1f}% + {nm.additive_mbq:g} MBq"
                     for (m, kind), nm in table.items() if m in ("PET", "SPECT"))


def _obs(regions, t, act, rp, modality, rng, table=None):
    """Noisy region activities with the per-class noise of calibration.noise_model (organs
    calibration.NOISE, lesions calibration.NOISE_LESION, or ``table``): y = A + sigma(A) z,
    z ~ N(0, 1), clipped at 0; the sigma column is the noise model at the *measured* value (what
    the clinic knows; calibration.fit's default noise='observations' uses it)."""
    from calibration import Observations, noise_sigma

    act = np.asarray(act, float)
    n = len(regions)
    mods = [modality] * n
    y = np.clip(act + noise_sigma(mods, regions, act, table) * rng.standard_normal(act.shape),
                0.0, None)
    sig = noise_sigma(mods, regions, y, table)
    return Observations(np.array(regions, dtype=object), np.full(n, float(t)), y, sig,
                        np.array(mods, dtype=object), np.array([rp] * n, dtype=object))


def _sigma_at(pred, regions, table=None, modality="SPECT"):
    """Noise-model sigma (MBq) of region activities ``pred`` (..., R) (per-class)."""
    from calibration import noise_model

    nms = [noise_model(modality, r, table) for r in regions]
    c = np.array([m.proportional for m in nms])
    a = np.array([m.additive_mbq for m in nms])
    return np.sqrt((c * np.clip(pred, 0.0, None)) ** 2 + a ** 2)


def noise_floor_share(act, sigma, threshold=0.10):
    """P(|y/A - 1| > threshold) for y = A + sigma z, z ~ N(0, 1) (clipping at 0 ignored: it
    needs sigma > A): 2 Phi(-threshold A / sigma), the share of patients over the threshold for
    an estimator that knows the curve's exact shape and only scales it by the one scan.
    Mean over the given activities (any shape)."""
    from scipy.stats import norm

    act, sigma = np.asarray(act, float), np.asarray(sigma, float)
    return float(np.mean(2.0 * norm.cdf(-threshold * act / sigma)))


def _mono_t_eff(t, a):
    """Mono-exponential effective half-life (h) from a log-linear fit of noise-free points."""
    slope = np.polyfit(t, np.log(np.clip(a, 1e-300, None)), 1)[0]
    return math.log(2) / -slope if slope < 0 else np.inf


CHUNK = 1024   # patients per vmapped solve (fixed, so the solver compiles once per regimen)


def _simulate_chunked(S, regimen, thetas, times, tqdm, desc, days=DAYS):
    """S.simulate in fixed-size chunks (the last one padded): (activity, tia, ok, names)."""
    n = len(thetas)
    acts, tias, oks = [], [], []
    names = None
    chunk = getattr(S, "chunk", CHUNK)
    for k in tqdm(range(0, n, chunk), desc=desc):
        th = thetas[k:k + chunk]
        m = len(th)
        if m < chunk:
            th = np.vstack([th, np.repeat(S.prior.mean_log[None, :], chunk - m, axis=0)])
        a, t, o, names = S.simulate(regimen, th, times, days)
        acts.append(a[:m])
        tias.append(t[:m])
        oks.append(o[:m])
    return np.concatenate(acts), np.concatenate(tias), np.concatenate(oks), names


def _weights(pred, ok, y, sig, likelihood="measured", regions=None, table=None):
    """Importance weights of one patient's draws given one SPECT: (usable-draw mask, normalised
    weights of the usable draws), or None when fewer than 10 draws are usable.

    ``likelihood='measured'``: as twin.stp.importance_update (Gaussian, each row's sigma at the
    measured value, as calibration.fit's default). ``'predicted'``: the likelihood the
    observations were drawn from, N(y; A, sigma(A)) with sigma from the per-class noise model at
    each draw's *predicted* activity A, including its normalising -log sigma(A) term."""
    good = np.asarray(ok, bool) & np.all(np.isfinite(pred), axis=1)
    if good.sum() < 10:
        return None
    loglik = _loglik(pred[good], y, sig, likelihood, regions, table)
    w = np.exp(loglik - loglik.max())
    return good, w / w.sum()


def _loglik(p, y, sig, likelihood="measured", regions=None, table=None, modality="SPECT"):
    """SPECT (or PET) log-likelihood of each draw's predicted activities p (M, R) (see
    _weights)."""
    if likelihood == "measured":
        return -0.5 * np.sum(((p - y) / sig) ** 2, axis=1)
    s_p = _sigma_at(p, regions, table, modality)
    return -0.5 * np.sum(((p - y) / s_p) ** 2, axis=1) - np.sum(np.log(s_p), axis=1)


LOG_WINDOW = math.log(1.1 / 0.9)   # |estimate / truth - 1| <= 10%  <=>  truth in [c/1.1, c/0.9]


def window_estimate(values, weights):
    """Per column of ``values`` (M, K) with weights (M,): the estimate c maximising the weighted
    mass of draws with |c / value - 1| <= 10% (the Bayes estimator for the loss 1{|error| > 10%}),
    and that mass. Windows start at each draw (log scale), so c = 1.1 x that draw."""
    v = np.log(np.clip(np.asarray(values, float), 1e-300, None))
    est, mass = np.empty(v.shape[1]), np.empty(v.shape[1])
    for k in range(v.shape[1]):
        o = np.argsort(v[:, k])
        lv, cw = v[o, k], np.concatenate([[0.0], np.cumsum(weights[o])])
        hi = np.searchsorted(lv, lv + LOG_WINDOW, side="right")
        m = cw[hi] - cw[np.arange(len(lv))]
        b = int(np.argmax(m))
        est[k], mass[k] = 1.1 * math.exp(lv[b]), m[b]
    return est, mass


def _update(pred, tia, ok, y, sig, likelihood="measured", regions=None, table=None):
    """Importance update of one patient's draws with one SPECT (weights of :func:`_weights`):
    dict with the posterior median TIA ``median`` (K,), the prior median ``prior_median``, the
    effective sample size ``ess``, the posterior probability that the median is more than 10%
    off ``p_over_median``, and the window estimate ``window`` with its ``p_over_window`` (1 -
    its mass); NaNs when too few draws solved."""
    from twin.stp import weighted_median

    ok = np.asarray(ok, bool) & np.all(np.isfinite(tia), axis=1)
    res = _weights(pred, ok, y, sig, likelihood, regions, table)
    k = tia.shape[1]
    if res is None:
        nan = np.full(k, np.nan)
        return {"median": nan, "prior_median": nan, "ess": 0.0, "p_over_median": nan,
                "window": nan, "p_over_window": nan}
    good, w = res
    t = tia[good]
    med = weighted_median(t, w)
    p_med = np.sum(w[:, None] * (np.abs(med[None, :] / t - 1.0) > 0.10), axis=0)
    win, mass = window_estimate(t, w)
    return {"median": med, "prior_median": np.median(t, axis=0),
            "ess": float(1.0 / np.sum(w * w)), "p_over_median": p_med, "window": win,
            "p_over_window": 1.0 - mass}


# The adaptive (two-stage) and the exact (prior x PET x SPECT, defensive mixture) updates live in
# twin.stp_update (the library the command line uses); this script only batches their solves.


COLUMNS = ["patient", "region", "time_h", "method", "tia_mbq_h", "tia_true_mbq_h", "cohort",
           "measured_mbq", "ess", "p_post_over_10pct"]


def _frame(rows):
    """DataFrame of result rows (tuples may omit the trailing p_post_over_10pct)."""
    n = len(COLUMNS)
    return pd.DataFrame([tuple(r) + (np.nan,) * (n - len(r)) for r in rows], columns=COLUMNS)


def _laplace_rows(S, posts, keys, truth, regions, names, n_draws, seed, tqdm):
    """Batched Laplace path: posterior-median TIA over ``n_draws`` Laplace draws of each SPECT
    fit ("twin-laplace") and the TIA at its MAP ("twin-map"), one chunked solve."""
    good = [k for k, p in enumerate(posts) if p is not None]
    if not good:
        return []
    th = np.concatenate([np.vstack([posts[k].theta_map[None, :],
                                    posts[k].sample_log(n_draws, seed + k)]) for k in good])
    _, tia, ok, _ = _simulate_chunked(S, S.lureg, th, [SCAN_TIMES_H[0]], tqdm,
                                      f"{S.name} Laplace draws")
    tia = tia.reshape(len(good), n_draws + 1, -1)
    ok = ok.reshape(len(good), n_draws + 1)
    rows = []
    for g, k in enumerate(good):
        i, t = keys[k]
        sel = ok[g, 1:] & np.all(np.isfinite(tia[g, 1:]), axis=1)
        med = np.median(tia[g, 1:][sel], axis=0) if sel.sum() >= n_draws // 2 else None
        for r in regions:
            c = names.index(r)
            rows.append((i, r, t, "twin-laplace", float(med[c]) if med is not None else np.nan,
                         truth[(i, r)], "pbpk", np.nan, np.nan))
            rows.append((i, r, t, "twin-map", float(tia[g, 0, c]) if ok[g, 0] else np.nan,
                         truth[(i, r)], "pbpk", np.nan, np.nan))
    return rows


def cohort_pbpk(S, n, seed, draws, tqdm, checkpoint, laplace_check=0, laplace_times=(),
                importance=True, table=None, likelihood="measured", store_path=None,
                ais_times=(), ais_draws=256, stage1_store=None, exact=None):
    """PBPK cohort: population-prior patients, PET at 1 h, one SPECT per scan time.

    The expensive part (true curves, PET fits, the draws of each PET twin solved at every scan
    time) is saved to ``store_path`` (.npz) when given; the SPECT part (observations, classical
    methods, importance update) is :func:`spect_rows`, which ``--from-draws`` reruns on a store
    with another SPECT noise or likelihood without solving anything again.

    ``laplace_check``: for that many patients at 48 h also the Laplace path of twin.stp.twin_tia
    (calibration.fit with the PET twin as prior, posterior-median TIA over its Laplace draws):
    method ``twin-laplace``, on the same observations as ``twin``.

    ``ais_times``: at these scan times also the adaptive importance update (``twin-ais``): a
    second stage of ``ais_draws`` draws per patient from a Gaussian fitted to the weighted
    first-stage draws (ais_proposal), combined with the first stage by multiple importance
    sampling (twin.stp_update); same observations as ``twin``.

    ``exact`` (dict ``n1, n2, times, defensive, inflate`` or None): the update of
    twin.stp_update.adaptive_update_many with the exact target population prior x PET x SPECT
    (the PET twin's Laplace posterior only as the proposal, in a defensive mixture with the
    population prior): ``twin-exact1`` (stage 1 only) at every scan time, ``twin-exact`` (both
    stages) at ``times``, and ``twin-exact-pet-only`` (prior x PET: the exact PET twin)."""
    from twin.stp import twin_tia
    from twin.stp_update import (Mixture, combined_proposal, log_weights, normalised_weights,
                                 stage2_component, weighted_summary)

    rng = np.random.default_rng(seed)
    thetas = S.prior.sample_log(n, seed)
    t0 = time.perf_counter()
    act, tia, ok, names = S.simulate(S.lureg, thetas, SCAN_TIMES_H)
    pet_act, _, ok_pet, pet_names = S.simulate(S.petreg, thetas, [1.0])
    # Madsen's population T_eff from an independent reference population of the same prior
    # (a clinic's own multi-time-point series; not the evaluated patients)
    ref_act, _, ref_ok, _ = S.simulate(S.lureg, S.prior.sample_log(n, seed + 1000),
                                       SCAN_TIMES_H)
    print(f"{S.name} cohort: {n} patients simulated in {time.perf_counter() - t0:.1f} s "
          f"({int((~ok).sum())} failed solves)", flush=True)
    ri = [names.index(r) for r in S.regions]
    t_eff_pop = np.array([float(np.median([_mono_t_eff(np.array(SCAN_TIMES_H), ref_act[i, k])
                                           for i in range(n) if ref_ok[i]])) for k in ri])
    print("reference-population median mono-exponential T_eff (h):",
          dict(zip(S.regions, t_eff_pop.round(1))), flush=True)
    # 1. PET-calibrated twin of each patient: calibration.fit from the population prior (PET
    # sigma per region class, calibration.noise_model)
    pet_posts, pet_obs = [], {}
    for i in tqdm(range(n), desc=f"{S.name} PET fits"):
        if not (ok[i] and ok_pet[i]):
            pet_posts.append(None)
            continue
        o = _obs(S.regions, 1.0, pet_act[i, [pet_names.index(r) for r in S.regions], 0], S.pet,
                 "PET", rng, table)
        pet_obs[i] = (np.asarray(o.activity_mbq), np.asarray(o.sigma_mbq))
        pet_posts.append(S.fit(o, S.petreg, S.prior))
    n_fail = sum(p is None for p in pet_posts)
    # 2. draws from each twin's posterior (= the prior of the SPECT update, Posterior.as_prior)
    have = np.array([i for i in range(n) if pet_posts[i] is not None], dtype=int)
    store = {"act": act[:, ri], "tia": tia[:, ri], "ok": ok, "have": have, "t_eff_pop": t_eff_pop,
             "regions": np.array(S.regions), "times": np.array(SCAN_TIMES_H), "seed": seed,
             "model": S.name, "draws": draws}
    if importance and len(have):
        th = np.concatenate([pet_posts[i].as_prior().sample_log(draws, seed + 31 * i)
                             for i in have])
        if stage1_store is not None:
            # the solved draws of an earlier run with the same model, n, seed and draws: the
            # same patients, PET fits and draws (deterministic), so nothing is solved again
            old = load_store(stage1_store)
            if not (old["model"] == S.name and old["seed"] == seed and old["draws"] == draws
                    and np.array_equal(old["have"], have)
                    and np.allclose(old["tia"], store["tia"], rtol=1e-9, equal_nan=True)):
                raise SystemExit(f"{stage1_store} was not made with this model, n, seed and "
                                 f"--draws")
            for k in ("d_act", "d_tia", "d_ok"):
                store[k] = old[k]
        else:
            d_act, d_tia, d_ok, _ = _simulate_chunked(S, S.lureg, th, SCAN_TIMES_H, tqdm,
                                                      f"{S.name} twin draws")
            store["d_act"] = d_act.reshape(len(have), draws, d_act.shape[1], -1)[:, :, ri]
            store["d_tia"] = d_tia.reshape(len(have), draws, -1)[:, :, ri]
            store["d_ok"] = d_ok.reshape(len(have), draws)
        store["d_theta"] = th.reshape(len(have), draws, -1)
    ex = _exact_stage1(S, exact, pet_posts, pet_obs, have, seed, tqdm, store) \
        if exact else None
    if store_path is not None:
        _save_store(store, store_path)
    lap = {}

    def on_obs(i, t, o):
        if pet_posts[i] is None:
            return []
        rows = []
        if t == 48.0 and i < laplace_check:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    res, _ = twin_tia(o, pet_posts[i], S.lureg, n_samples=draws, seed=seed + i,
                                      check_peak=False, update="laplace")
                    for j, r in enumerate(S.regions):
                        rows.append((i, r, t, "twin-laplace", float(res["tia_mbq_h"][j]),
                                     float(store["tia"][i, j]), "pbpk", np.nan, np.nan))
                except Exception as exc:  # noqa: BLE001 - a failed fit is a result here
                    print(f"twin-laplace failed for patient {i}: {exc}", flush=True)
        if t in laplace_times:
            lap.setdefault(t, []).append((S.fit(o, S.lureg, pet_posts[i].as_prior()), (i, t)))
        if ex is not None:
            ex["items"].setdefault(t, []).append((i, np.asarray(o.activity_mbq),
                                                  np.asarray(o.sigma_mbq)))
        if t in ais_times and "d_act" in store:
            ais.setdefault(t, []).append((i, np.asarray(o.activity_mbq),
                                          np.asarray(o.sigma_mbq)))
        return rows

    ais = {}
    hidx = {int(i): h for h, i in enumerate(have)}

    def ais_rows(it, t):
        items = ais.pop(t, [])
        if not items:
            return []
        regions = list(S.regions)
        props, th2 = [], []
        for k, (i, y, sig) in enumerate(items):
            h = hidx[i]
            pr = pet_posts[i].as_prior()
            res = _weights(store["d_act"][h, :, :, it], store["d_ok"][h], y, sig, likelihood,
                           regions, table)
            good, w = res if res is not None else (np.ones(draws, bool), np.full(draws, 1 / draws))
            comp = stage2_component(store["d_theta"][h][good], w, pr.cov_log)
            z = np.random.default_rng([seed, 17, it, i]).standard_normal((ais_draws, len(comp[0])))
            th2.append(comp[0] + z @ np.linalg.cholesky(comp[1]).T)
            q1 = Mixture((1.0,), (pr.mean_log,), (pr.cov_log,))
            props.append((pr, combined_proposal(q1, draws, comp, ais_draws)))
        a2, t2, ok2, _ = _simulate_chunked(S, S.lureg, np.concatenate(th2), SCAN_TIMES_H, tqdm,
                                           f"{S.name} adaptive draws {t:g} h")
        a2 = a2.reshape(len(items), ais_draws, a2.shape[1], -1)[:, :, ri, it]
        t2 = t2.reshape(len(items), ais_draws, -1)[:, :, ri]
        ok2 = ok2.reshape(len(items), ais_draws)
        rows = []
        for k, (i, y, sig) in enumerate(items):
            h = hidx[i]
            pr, q = props[k]
            p1, p2 = store["d_act"][h, :, :, it], a2[k]
            ll1 = _loglik(np.nan_to_num(p1), y, sig, likelihood, regions, table)
            ll2 = _loglik(np.nan_to_num(p2), y, sig, likelihood, regions, table)
            th_all = np.vstack([store["d_theta"][h], th2[k]])
            lw = log_weights(th_all, np.concatenate([ll1, ll2]), pr.mean_log, pr.cov_log, q)
            tt = np.vstack([store["d_tia"][h], t2[k]])
            good = (np.concatenate([store["d_ok"][h], ok2[k]])
                    & np.all(np.isfinite(np.vstack([p1, p2])), axis=1)
                    & np.all(np.isfinite(tt), axis=1) & np.isfinite(lw))
            w, ess = normalised_weights(np.where(good, lw, -np.inf))
            summ = weighted_summary(tt[good], w[good], level=None)
            for j, r in enumerate(regions):
                rows.append((i, r, t, "twin-ais", float(summ["median"][j]),
                             float(store["tia"][i, j]), "pbpk", np.nan, ess,
                             float(summ["p_over"][j])))
        return rows

    def on_time_end(it, t):
        rows = ais_rows(it, t)
        if ex is not None:
            rows += _exact_rows(S, ex, it, t, store, seed, tqdm)
        items = lap.pop(t, [])
        if not items:
            return rows
        truth = {(i, r): float(store["tia"][i, j]) for i in range(n)
                 for j, r in enumerate(S.regions)}
        return rows + _laplace_rows(S, [p for p, _ in items], [k for _, k in items], truth,
                                    S.regions, list(S.regions), 64, seed + 7919 * it, tqdm)

    df = spect_rows(store, seed, table=table, likelihood=likelihood, checkpoint=checkpoint,
                    on_obs=on_obs, on_time_end=on_time_end, importance=importance)
    if ex is not None and ex.get("cal") and store_path is not None:
        from twin.atomic import write_csv_atomic

        cal = pd.DataFrame(ex["cal"], columns=["patient", "region", "time_h", "covered_90",
                                               "pit"]).drop_duplicates(["patient", "region"])
        tab = cal.groupby("region").agg(n=("pit", "size"), coverage_90=("covered_90", "mean"),
                                        pit_mean=("pit", "mean"), pit_sd=("pit", "std"))
        write_csv_atomic(tab.reset_index().assign(model=S.name),
                         store_path.parent / f"stp_exact_pet_calibration_{S.name}.csv")
    return df, n_fail


def _exact_problems(S, pet_posts, have, seed):
    """twin.stp_update problems of the cohort: the PET twin's Laplace as the proposal centre,
    the population prior as the target prior (the PET likelihood is added by the solves)."""
    return [{"twin_mean": pet_posts[i].theta_map, "twin_cov": pet_posts[i].cov_log,
             "target_mean": S.prior.mean_log, "target_cov": S.prior.cov_log,
             "seed": seed * 100003 + int(i), "target": "prior x PET x SPECT"} for i in have]


def _solve_pet_lu(S, thetas, pet_y, tqdm, desc, likelihood="measured", table=None):
    """Batched solves of stacked draws: (therapy activity (N, regions, SCAN_TIMES_H), TIA
    (N, regions), PET log-likelihood (N,) given the per-draw PET observation rows pet_y
    (N, 2, regions): measured and sigma), with -inf where a solve failed."""
    act, tia, ok, names = _simulate_chunked(S, S.lureg, thetas, SCAN_TIMES_H, tqdm, desc)
    pact, _, pok, pnames = _simulate_chunked(S, S.petreg, thetas, [1.0], tqdm, desc + " (PET)",
                                             days=0.1)
    ri = [names.index(r) for r in S.regions]
    pi = [pnames.index(r) for r in S.regions]
    pred = np.nan_to_num(pact[:, pi, 0], nan=np.inf)
    # gaussian_loglik row by row, vectorised (each draw carries its patient's PET rows); or the
    # generating likelihood (sigma of the noise model at each draw's prediction)
    if likelihood == "measured":
        ll = -0.5 * np.sum(((pred - pet_y[:, 0]) / pet_y[:, 1]) ** 2, axis=1)
    else:
        sp = _sigma_at(pred, list(S.regions), table, "PET")
        ll = -0.5 * np.sum(((pred - pet_y[:, 0]) / sp) ** 2, axis=1) - np.sum(np.log(sp), axis=1)
    ll = np.where(ok & pok & np.isfinite(ll), ll, -np.inf)
    return act[:, ri], tia[:, ri], ll


def _exact_stage1(S, exact, pet_posts, pet_obs, have, seed, tqdm, store):
    """Stage-1 draws of the exact update for every patient, solved once for all scan times."""
    from twin.stp_update import stage1_draws

    probs = _exact_problems(S, pet_posts, have, seed)
    n1 = exact["n1"]
    th = [stage1_draws(p, n1, defensive=exact["defensive"], inflate=exact["inflate"])[1]
          for p in probs]
    pet_y = np.concatenate([np.repeat(np.array(pet_obs[i])[None], n1, axis=0) for i in have])
    act, tia, ll = _solve_pet_lu(S, np.concatenate(th), pet_y, tqdm, f"{S.name} exact stage 1",
                                 exact.get("likelihood", "measured"), exact.get("table"))
    P = len(have)
    store["e_act"] = act.reshape(P, n1, act.shape[1], -1)
    store["e_tia"] = tia.reshape(P, n1, -1)
    store["e_petll"] = ll.reshape(P, n1)
    return {"probs": probs, "hidx": {int(i): h for h, i in enumerate(have)}, "items": {},
            "pet_obs": pet_obs, **exact}


def _exact_rows(S, ex, it, t, store, seed, tqdm):
    """Rows twin-exact1 (stage 1), twin-exact (two stages, at ex['times']) and
    twin-exact-pet-only at scan time t (index it)."""
    from twin.stp_update import adaptive_update_many, gaussian_loglik

    items = ex["items"].pop(t, [])
    if not items:
        return []
    probs = [ex["probs"][ex["hidx"][i]] for i, _, _ in items]
    regions = list(S.regions)

    def spect_ll(pred, y, sig):
        p = np.nan_to_num(pred, nan=np.inf)
        if ex.get("likelihood", "measured") == "measured":
            return gaussian_loglik(p, y, sig)
        ll = _loglik(p, y, sig, "predicted", regions, ex.get("table"))
        return np.where(np.isfinite(ll), ll, -np.inf)

    def cached(use_spect):
        out = []
        for i, y, sig in items:
            h = ex["hidx"][i]
            ll = store["e_petll"][h].copy()
            if use_spect:
                ll = ll + spect_ll(store["e_act"][h, :, :, it], y, sig)
            out.append((ll, store["e_tia"][h]))
        return out

    def make_solve(use_spect=True):
        calls = [0]

        def solve_many(thetas):
            calls[0] += 1
            if calls[0] == 1:
                return cached(use_spect)
            n2 = len(thetas[0])
            pet_y = np.concatenate([np.repeat(np.array(ex["pet_obs"][i])[None], n2, axis=0)
                                    for i, _, _ in items])
            act, tia, ll = _solve_pet_lu(S, np.concatenate(thetas), pet_y, tqdm,
                                         f"{S.name} exact stage 2 {t:g} h",
                                         ex.get("likelihood", "measured"), ex.get("table"))
            act = act.reshape(len(items), n2, act.shape[1], -1)
            tia = tia.reshape(len(items), n2, -1)
            ll = ll.reshape(len(items), n2)
            return [(ll[k] + spect_ll(act[k, :, :, it], y, sig), tia[k])
                    for k, (_, y, sig) in enumerate(items)]
        return solve_many

    kw = {"n1": ex["n1"], "defensive": ex["defensive"], "inflate": ex["inflate"],
          "level": 0.90}
    variants = [("twin-exact1", adaptive_update_many(make_solve(), probs, n2=0, **kw)),
                ("twin-exact-pet-only", adaptive_update_many(make_solve(False), probs, n2=0,
                                                             **kw))]
    if t in ex["times"]:
        variants.append(("twin-exact", adaptive_update_many(make_solve(), probs, n2=ex["n2"],
                                                            **kw)))
    rows = []
    for method, results in variants:
        for (i, _, _), res in zip(items, results):
            for j, r in enumerate(regions):
                tr = float(store["tia"][i, j])
                rows.append((i, r, t, method, float(res.median[j]), tr, "pbpk", np.nan, res.ess,
                             float(res.p_over[j])))
                if method == "twin-exact-pet-only":   # PET twin calibration (90% interval)
                    ex.setdefault("cal", []).append((i, r, t, res.low[j] <= tr <= res.high[j],
                                                     float(np.sum(res.weights *
                                                                  (res.tia[:, j] < tr)))))
    return rows


def _save_store(store, path):
    """Write a cohort store (.npz) atomically."""
    from twin.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **store)


def load_store(path):
    """A cohort store written by cohort_pbpk (dict of arrays; scalars unwrapped)."""
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    for k in ("seed", "draws", "model"):
        d[k] = d[k].item()
    return d


def spect_rows(store, seed, table=None, likelihood="measured", checkpoint=None, on_obs=None,
               on_time_end=None, importance=True, times=None):
    """The SPECT part of the pbpk cohort on a store: per scan time and patient one SPECT of every
    region (per-class noise ``table``, own random stream from ``seed``), and the estimates of
    hanscheid, madsen (reference-population T_eff), exact-shape (the true TIA scaled by
    measured / true activity: an estimator that knows the exact curve shape, i.e. the noise-only
    floor), twin and twin-pet-only (importance update of the stored draws)."""
    from twin.stp import hanscheid_tia, madsen_tia

    rng = np.random.default_rng([seed, 9])   # SPECT stream, independent of the PET fits
    regions = [str(r) for r in store["regions"]]
    rp = MODELS[store["model"]]["therapy"]
    have = {int(i): h for h, i in enumerate(store["have"])}
    rows = []
    for it, t in enumerate(store["times"]):
        t = float(t)
        if times is not None and t not in times:
            # keep the random stream aligned with a run over all scan times
            rng.standard_normal((int(store["ok"].sum()), len(regions)))
            continue
        for i in range(len(store["ok"])):
            if not store["ok"][i]:
                continue
            a_true = store["act"][i, :, it]
            o = _obs(regions, t, a_true, rp, "SPECT", rng, table)
            y, sig = np.asarray(o.activity_mbq), np.asarray(o.sigma_mbq)
            for j, r in enumerate(regions):
                ref = float(store["tia"][i, j])
                # madsen-lit (literature T_eff) is computed from measured_mbq in summarise()
                rows.append((i, r, t, "hanscheid", float(hanscheid_tia(y[j], t)), ref, "pbpk",
                             y[j], np.nan))
                rows.append((i, r, t, "madsen", float(madsen_tia(y[j], t,
                                                                 store["t_eff_pop"][j])),
                             ref, "pbpk", y[j], np.nan))
                rows.append((i, r, t, "exact-shape", ref * y[j] / a_true[j], ref, "pbpk", y[j],
                             np.nan))
            if on_obs is not None:
                rows += on_obs(i, t, o)
            if not importance or i not in have or "d_act" not in store:
                continue
            h = have[i]
            u = _update(store["d_act"][h, :, :, it], store["d_tia"][h], store["d_ok"][h], y, sig,
                        likelihood, regions, table)
            for j, r in enumerate(regions):
                ref = float(store["tia"][i, j])
                rows.append((i, r, t, "twin", float(u["median"][j]), ref, "pbpk", np.nan,
                             u["ess"], float(u["p_over_median"][j])))
                rows.append((i, r, t, "twin-window", float(u["window"][j]), ref, "pbpk",
                             np.nan, u["ess"], float(u["p_over_window"][j])))
                rows.append((i, r, t, "twin-pet-only", float(u["prior_median"][j]), ref, "pbpk",
                             np.nan, np.nan))
        if on_time_end is not None:
            rows += on_time_end(it, t)
        if checkpoint is not None:
            checkpoint(_frame(rows))
    return _frame(rows)


def cohort_biexp(S, n, seed, draws, tqdm, checkpoint, table=None, likelihood="measured"):
    """Curves not made by the PBPK model (see the module docstring); twin without PET: the
    population prior (one shared set of draws) updated with the SPECT."""
    from twin.stp import hanscheid_tia, literature_t_eff_h

    regions = S.cfg["biexp_regions"]
    rng = np.random.default_rng(seed + 1)
    # population-typical PBPK TIA sets the level (so the twin's prior on the level is sensible)
    _, tia_typ, _, names = S.simulate(S.lureg, S.prior.mean_log[None, :], SCAN_TIMES_H)
    truth, params = {}, {}
    for i in range(n):
        for r in regions:
            te_med = literature_t_eff_h(S.lu, r)
            te = te_med * math.exp(BIEXP_SD_LOG_TEFF * rng.standard_normal())
            tu = BIEXP_UPTAKE_MEDIAN_H * math.exp(BIEXP_UPTAKE_SD_LOG * rng.standard_normal())
            l1, l2 = math.log(2) / te, math.log(2) / tu
            if l2 <= l1:  # keep uptake faster than washout
                l2 = 2 * l1
            level = tia_typ[0, names.index(r)] * math.exp(BIEXP_LEVEL_SD_LOG *
                                                          rng.standard_normal())
            params[(i, r)] = (level / (1 / l1 - 1 / l2), l1, l2)
            truth[(i, r)] = level
    m = 4 * draws  # one shared prior sample for all patients
    d_act, d_tia, d_ok, names = _simulate_chunked(
        S, S.lureg, S.prior.sample_log(m, seed + 77), SCAN_TIMES_H, tqdm,
        f"{S.name} biexp prior draws")
    ri = [names.index(r) for r in regions]
    d_act, d_tia = d_act[:, ri], d_tia[:, ri]
    rows = []
    for it, t in enumerate(SCAN_TIMES_H):
        for i in range(n):
            a_true = np.array([params[(i, r)][0] * (math.exp(-params[(i, r)][1] * t) -
                                                    math.exp(-params[(i, r)][2] * t))
                               for r in regions])
            o = _obs(regions, t, a_true, S.lu, "SPECT", rng, table)
            y, sig = np.asarray(o.activity_mbq), np.asarray(o.sigma_mbq)
            for j, r in enumerate(regions):
                rows.append((i, r, t, "hanscheid", float(hanscheid_tia(y[j], t)), truth[(i, r)],
                             "biexp", y[j], np.nan))
            u = _update(d_act[:, :, it], d_tia, d_ok, y, sig, likelihood, list(regions), table)
            for j, r in enumerate(regions):
                rows.append((i, r, t, "twin", float(u["median"][j]), truth[(i, r)], "biexp",
                             np.nan, u["ess"], float(u["p_over_median"][j])))
        checkpoint(_frame(rows))
    return _frame(rows), 0


def summarise(df):
    """Errors per model, cohort, region, method and scan time; best scan time per method."""
    from twin.stp import RP_OF_MODEL, literature_t_eff_h, madsen_tia

    df = df.copy()
    if "noise" not in df:
        df["noise"] = "not recorded"
    df["noise"] = df["noise"].fillna("not recorded")
    # Madsen with the literature population T_eff, from the stored measured activity
    lit = []
    cls = df[df["method"] == "hanscheid"]
    for (model, region), g in cls.groupby(["model", "region"]):
        te = literature_t_eff_h(RP_OF_MODEL[model], region)
        if te is None:
            continue
        g = g.copy()
        g["method"] = "madsen-lit"
        g["tia_mbq_h"] = madsen_tia(g["measured_mbq"].to_numpy(), g["time_h"].to_numpy(), te)
        lit.append(g)
    df = pd.concat([df] + lit)
    df["err"] = df["tia_mbq_h"] / df["tia_true_mbq_h"] - 1.0
    les = df[df["region"].isin(LESIONS)].copy()
    les["region"] = "lesions"
    df = pd.concat([df, les])

    def agg(g):
        e = np.abs(g["err"].dropna())
        return pd.Series({"n": len(e), "median_abs_err": e.median(),
                          "p90_abs_err": e.quantile(0.9), "share_over_10pct": (e > 0.10).mean(),
                          "median_signed_err": g["err"].median(),
                          "posterior_predicted_share": g["p_post_over_10pct"].mean()})

    keys = ["model", "cohort", "noise", "region", "method"]
    if "p_post_over_10pct" not in df:
        df["p_post_over_10pct"] = np.nan
    summ = (df.groupby(keys + ["time_h"])[["err", "p_post_over_10pct"]].apply(agg)
            .reset_index())
    best = (summ.sort_values(["share_over_10pct", "median_abs_err"])
            .groupby(keys).head(1).sort_values(keys))
    return df, summ, best


def goal_ratios(best):
    """Each twin variant's share > 10% over the better classical method's (each method at its
    best scan time)."""
    rows = []
    for (model, cohort, noise, region), g in best.groupby(["model", "cohort", "noise",
                                                           "region"]):
        s = g.set_index("method")["share_over_10pct"]
        classical = [m for m in ("hanscheid", "madsen", "madsen-lit") if m in s]
        if not classical:
            continue
        cbest = min(classical, key=lambda m: s[m])
        for twin in ("twin", "twin-ais", "twin-exact", "twin-exact1", "twin-window",
                     "twin-laplace", "twin-map"):
            if twin not in s:
                continue
            rows.append({"model": model, "cohort": cohort, "noise": noise, "region": region,
                         "twin": twin,
                         "twin_share": s[twin], "best_classical": cbest,
                         "classical_share": s[cbest],
                         "ratio": s[twin] / s[cbest] if s[cbest] > 0 else np.nan})
    return pd.DataFrame(rows)


STYLE = {"hanscheid": ("C0", "-"), "madsen": ("C1", "-"), "madsen-lit": ("C1", ":"),
         "twin": ("C3", "-"), "twin-pet-only": ("C3", ":"), "twin-laplace": ("C2", "--"),
         "twin-map": ("C2", ":"), "twin-ais": ("C4", "-"), "twin-window": ("C5", ":"),
         "exact-shape": ("0.5", "--"), "twin-exact": ("C6", "-"), "twin-exact1": ("C6", "--"),
         "twin-exact-pet-only": ("C6", ":")}


def plot(summ, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(summ["model"], summ["cohort"])))
    regions = list(dict.fromkeys(summ["region"]))
    fig, axes = plt.subplots(len(panels), len(regions), figsize=(2.9 * len(regions),
                                                                 2.7 * len(panels)),
                             squeeze=False, sharey=True)
    for ci, (mdl, c) in enumerate(panels):
        for ri, r in enumerate(regions):
            ax = axes[ci, ri]
            sub = summ[(summ["model"] == mdl) & (summ["cohort"] == c) & (summ["region"] == r)]
            if sub.empty:
                ax.set_visible(False)
                continue
            for m, g in sub.groupby("method"):
                color, ls = STYLE.get(m, ("k", "-"))
                ax.plot(g["time_h"], 100 * g["share_over_10pct"], marker="o", ms=3, color=color,
                        ls=ls, label=m)
            ax.set_title(f"{mdl} {c}: {r}", fontsize=8)
            ax.set_xlabel("scan time (h)", fontsize=8)
            ax.set_ylim(0, 100)
            if ri == 0:
                ax.set_ylabel("patients with |TIA error| > 10% (%)", fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _table(best):
    lines = ["| model | cohort | region | method | best scan (h) | n | median abs err | "
             "P90 abs err | share > 10% | median signed err |", "|" + " --- |" * 10]
    for _, r in best.iterrows():
        lines.append(f"| {r['model']} | {r['cohort']} | {r['region']} | {r['method']} | "
                     f"{r['time_h']:g} | {int(r['n'])} | {100 * r['median_abs_err']:.1f}% | "
                     f"{100 * r['p90_abs_err']:.1f}% | {100 * r['share_over_10pct']:.0f}% | "
                     f"{100 * r['median_signed_err']:+.1f}% |")
    return "\n".join(lines)


def report(df, out):
    from twin.atomic import write_csv_atomic, write_text_atomic

    full, summ, best = summarise(df)
    ratios = goal_ratios(best)
    write_csv_atomic(summ, out / "stp_summary.csv")
    write_csv_atomic(ratios, out / "stp_goal_ratios.csv")
    notes = "\n".join(f"- {k}" for k in sorted(full["noise"].unique()))
    text = ("Noise of the runs pooled here (observations drawn and weighted with it):\n" + notes
            + "\n\n" + _table(best) + "\n\nGoal: twin share > 10% / better classical share < 0.5 "
            "(each at its best scan time)\n\n" +
            ratios.drop(columns=["noise"]).round(2).to_string(index=False))
    write_text_atomic(out / "stp_best.md", text + "\n")
    plot(summ, out / "stp_error_vs_time.png")
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=tuple(MODELS), default="psma-pbrpk",
                    help="psma-pbrpk (177Lu-PSMA-617) or sstr (177Lu-DOTATATE)")
    ap.add_argument("--n", type=int, default=12, help="patients per cohort")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=256,
                    help="draws from each PET-calibrated twin (the prior of the SPECT update); "
                         "the biexp cohort shares 4x as many population-prior draws")
    ap.add_argument("--chunk", type=int, default=CHUNK, help="patients per vmapped solve")
    ap.add_argument("--laplace-times", type=float, nargs="*", default=[],
                    help="pbpk cohort: scan times (h) at which also the batched Laplace update "
                         "runs for every patient (twin-laplace: median of 64 Laplace draws of "
                         "calibration.fit with the PET twin as prior; twin-map: TIA at its MAP)")
    ap.add_argument("--no-importance", action="store_true",
                    help="pbpk cohort: skip the importance update (e.g. a Laplace-only run; "
                         "same seed and n give the same observations)")
    ap.add_argument("--laplace-check", type=int, default=0, metavar="K",
                    help="pbpk cohort: for K patients at 48 h also the Laplace-fit update "
                         "(twin-laplace), to compare with the importance update")
    ap.add_argument("--cohort", choices=("pbpk", "biexp", "both"), default="both")
    ap.add_argument("--out", type=Path, default=Path("stp-validation"))
    ap.add_argument("--summarise-only", action="store_true",
                    help="re-summarise OUT/stp_errors_*.csv and *.csv.gz (e.g. of parallel "
                         "runs)")
    ap.add_argument("--spect-noise", type=float, default=None, metavar="S",
                    help="sensitivity: organ SPECT proportional noise S (default 0.15, "
                         "calibration.NOISE); every SPECT proportional term (lesions 0.18) is "
                         "scaled by S/0.15, the 0.5 MBq floor kept")
    ap.add_argument("--likelihood", choices=("measured", "predicted"), default="measured",
                    help="twin importance weights: Gaussian with sigma at the measured value "
                         "(twin.stp.importance_update, default) or at each draw's prediction "
                         "(the exact generating likelihood)")
    ap.add_argument("--from-draws", type=Path, default=None, metavar="STORE.npz",
                    help="pbpk cohort only: rerun the SPECT part (observations, classical "
                         "methods, importance update) on a store saved by an earlier run "
                         "(OUT/stp_draws_<model>.npz), with --spect-noise / --likelihood; "
                         "nothing is solved again")
    ap.add_argument("--ais-times", type=float, nargs="*", default=[],
                    help="pbpk cohort: scan times (h) at which also the adaptive importance "
                         "update runs (twin-ais: a second stage of --ais-draws draws per patient "
                         "from a Gaussian fitted to the weighted first stage, multiple "
                         "importance sampling)")
    ap.add_argument("--ais-draws", type=int, default=256,
                    help="second-stage draws per patient and scan time of the adaptive update")
    ap.add_argument("--stage1-store", type=Path, default=None, metavar="STORE.npz",
                    help="pbpk cohort: take the solved first-stage draws from the store of an "
                         "earlier run with the same --model, --n, --seed and --draws (e.g. to add "
                         "--ais-times without solving them again)")
    ap.add_argument("--exact-times", type=float, nargs="*", default=None,
                    help="pbpk cohort: run the exact update (twin.stp_update: population prior x "
                         "PET x SPECT, the PET twin as a defensive-mixture proposal): stage 1 "
                         "(twin-exact1) at every scan time, both stages (twin-exact) at these "
                         "times (none: stage 1 only)")
    ap.add_argument("--exact-draws", type=int, default=256, help="exact update: stage-1 draws")
    ap.add_argument("--exact-stage2", type=int, default=128, help="exact update: stage-2 draws")
    ap.add_argument("--exact-defensive", type=float, default=None,
                    help="exact update: share of stage-1 draws from the population prior "
                         "(default twin.stp_update.DEFENSIVE)")
    ap.add_argument("--exact-inflate", type=float, default=None,
                    help="exact update: covariance inflation of the Laplace component (default "
                         "twin.stp_update.LAPLACE_INFLATE)")
    ap.add_argument("--fit-max-nfev", type=int, default=40,
                    help="calibration.fit budget (max_nfev) of the PET fits (and Laplace fits)")
    ap.add_argument("--fit-starts", type=int, default=1,
                    help="calibration.fit n_starts of the PET fits (and Laplace fits)")
    ap.add_argument("--use-draws", type=int, default=None, metavar="K",
                    help="with --from-draws: use only the first K draws of each patient (the "
                         "draws of a run with --draws K on the same seed: a paired comparison "
                         "of K against all draws)")
    args = ap.parse_args(argv)
    if args.draws < 10:
        ap.error("--draws must be at least 10")
    if args.spect_noise is not None and not 0.0 < args.spect_noise < 1.0:
        ap.error("--spect-noise must be between 0 and 1 (a fraction, e.g. 0.10)")
    from tqdm import tqdm

    from twin.atomic import write_csv_atomic

    exact = None
    if args.exact_times is not None:
        from twin import stp_update

        exact = {"n1": args.exact_draws, "n2": args.exact_stage2,
                 "times": tuple(args.exact_times),
                 "defensive": stp_update.DEFENSIVE if args.exact_defensive is None
                 else args.exact_defensive,
                 "inflate": stp_update.LAPLACE_INFLATE if args.exact_inflate is None
                 else args.exact_inflate,
                 # PET and SPECT likelihood of the exact update: --likelihood (measured: sigma
                 # at the measured value, as calibration.fit; predicted: the generating one)
                 "likelihood": args.likelihood, "table": noise_table(args.spect_noise)}
    table = noise_table(args.spect_noise)
    note = noise_note(table) + f"; twin weights: sigma at the {args.likelihood} activity"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.summarise_only:
        paths = sorted(args.out.glob("stp_errors_*.csv")) + \
            sorted(args.out.glob("stp_errors_*.csv.gz"))
        if not paths:
            ap.error(f"no stp_errors_*.csv[.gz] in {args.out}")
        df = pd.concat([pd.read_csv(p) for p in paths])
    elif args.from_draws is not None:
        store = load_store(args.from_draws)
        if args.use_draws is not None:
            if not 10 <= args.use_draws <= store["draws"]:
                ap.error(f"--use-draws must be between 10 and {store['draws']}")
            for k in ("d_act", "d_tia", "d_ok"):
                store[k] = store[k][:, :args.use_draws]
            store["draws"] = args.use_draws
        df = spect_rows(store, store["seed"], table=table, likelihood=args.likelihood)
        df = df.assign(model=store["model"], noise=note)
        write_csv_atomic(df, args.out / f"stp_errors_{store['model']}_pbpk.csv")
        write_csv_atomic(ess_table(df), args.out / "stp_ess.csv")
        write_csv_atomic(noise_floor_table(store, table), args.out / "stp_noise_floor.csv")
        if "d_tia" in store:
            write_csv_atomic(pet_twin_calibration_table(store),
                             args.out / "stp_pet_twin_calibration.csv")
    else:
        S = Setup(args.model)
        S.chunk = args.chunk
        S.max_nfev, S.n_starts = args.fit_max_nfev, args.fit_starts
        print(f"noise: {note}", flush=True)
        fails = {}
        parts = []
        for cohort, fn in (("pbpk", cohort_pbpk), ("biexp", cohort_biexp)):
            if args.cohort not in (cohort, "both"):
                continue
            path = args.out / f"stp_errors_{args.model}_{cohort}.csv"

            def checkpoint(d, path=path):
                d = d.assign(model=args.model, noise=note)
                write_csv_atomic(d, path)

            kw = {"table": table, "likelihood": args.likelihood}
            if cohort == "pbpk":
                kw.update({"laplace_check": args.laplace_check,
                           "laplace_times": tuple(args.laplace_times),
                           "importance": not args.no_importance,
                           "ais_times": tuple(args.ais_times), "ais_draws": args.ais_draws,
                           "stage1_store": args.stage1_store, "exact": exact,
                           "store_path": args.out / f"stp_draws_{args.model}.npz"})
            d, f = fn(S, args.n, args.seed, args.draws, tqdm, checkpoint, **kw)
            d = d.assign(model=args.model, noise=note)
            write_csv_atomic(d, path)
            parts.append(d)
            fails[cohort] = f
            if cohort == "pbpk":
                store = load_store(args.out / f"stp_draws_{args.model}.npz")
                write_csv_atomic(noise_floor_table(store, table),
                                 args.out / f"stp_noise_floor_{args.model}.csv")
                if "d_tia" in store:
                    write_csv_atomic(pet_twin_calibration_table(store),
                                     args.out / f"stp_pet_twin_calibration_{args.model}.csv")
        df = pd.concat(parts)
        write_csv_atomic(ess_table(df), args.out / f"stp_ess_{args.model}.csv")
        print(f"failed twin fits: {fails}")
    print(report(df, args.out))
    print(f"\nall scan times: {args.out / 'stp_summary.csv'}; plot "
          f"{args.out / 'stp_error_vs_time.png'}; {time.perf_counter() - t0:.0f} s")


def ess_table(df):
    """Effective sample size of the twin's importance weights per model, cohort and scan time
    (one value per patient and scan time): quantiles and the share of updates with ESS < 20."""
    d = df[df["method"].isin(["twin", "twin-ais"])].drop_duplicates(
        ["model", "cohort", "method", "patient", "time_h"])
    rows = []
    for (m, c, meth, t), g in d.groupby(["model", "cohort", "method", "time_h"]):
        e = g["ess"].dropna()
        rows.append({"model": m, "cohort": c, "method": meth, "time_h": t, "n": len(e),
                     "ess_p10": e.quantile(0.1),
                     "ess_median": e.median(), "ess_p90": e.quantile(0.9),
                     "share_ess_below_20": (e < 20).mean()})
    return pd.DataFrame(rows)


def pet_twin_calibration_table(store):
    """Calibration of each PET twin (the prior of the SPECT update) against the true TIA, per
    region: coverage of its 90% interval (ideal 0.90), mean and SD of the probability integral
    transform P(draw < truth) (ideal 0.5 and 0.289), and its own predicted share of patients
    whose median is more than 10% off against the measured one (twin-pet-only)."""
    regions = [str(r) for r in store["regions"]]
    rows = []
    for j, r in enumerate(regions):
        cov, pit, pred, meas = [], [], [], []
        for h, i in enumerate(store["have"]):
            x = store["d_tia"][h][store["d_ok"][h], j]
            x = x[np.isfinite(x)]
            if len(x) < 10:
                continue
            tr = store["tia"][i, j]
            lo, hi = np.quantile(x, [0.05, 0.95])
            med = np.median(x)
            cov.append(lo <= tr <= hi)
            pit.append(np.mean(x < tr))
            pred.append(np.mean(np.abs(med / x - 1.0) > 0.10))
            meas.append(abs(med / tr - 1.0) > 0.10)
        rows.append({"model": store["model"], "region": r, "n": len(cov),
                     "coverage_90": np.mean(cov), "pit_mean": np.mean(pit),
                     "pit_sd": np.std(pit), "predicted_share_over_10pct": np.mean(pred),
                     "measured_share_over_10pct": np.mean(meas)})
    return pd.DataFrame(rows)


def noise_floor_table(store, table):
    """Noise-only floor per region and scan time: the analytic share of patients over 10% error
    for an estimator that knows the exact curve shape (noise_floor_share at the cohort's true
    activities and the per-class sigma), to compare with the measured exact-shape, hanscheid and
    madsen shares."""
    regions = [str(r) for r in store["regions"]]
    ok = store["ok"]
    rows = []
    for it, t in enumerate(store["times"]):
        a = store["act"][ok, :, it]
        s = _sigma_at(a, regions, table)
        for j, r in enumerate(regions):
            rows.append({"model": store["model"], "region": r, "time_h": float(t),
                         "floor_share_over_10pct": noise_floor_share(a[:, j], s[:, j])})
        les = [j for j, r in enumerate(regions) if r in LESIONS]
        rows.append({"model": store["model"], "region": "lesions", "time_h": float(t),
                     "floor_share_over_10pct": noise_floor_share(a[:, les], s[:, les])})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
