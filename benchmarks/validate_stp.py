"""Validation of single-time-point (STP) dosimetry: Hanscheid, Madsen and the twin prior.

Two radiopharmaceuticals (``--model``): ``psma-pbrpk`` (177Lu-PSMA-617 7.4 GBq / 57.09 nmol;
68Ga-PSMA-11 PET 150 MBq / 3 nmol) and ``sstr`` (177Lu-DOTATATE 7.4 GBq / 105 nmol;
68Ga-DOTATATE PET 150 MBq / 8.6 nmol; amounts and sources in MODELS). Reference TIA = the true
curve's integral over 120 d.

1. ``pbpk`` cohort: virtual patients with personal parameters drawn from the population prior
   (psma: calibration.default_prior; sstr: the parameters and CVs of MODELS['sstr'], cited),
   curves by ``simulate_batch``. Each patient has a PET at 1 h and one SPECT at a scan time t in
   SCAN_TIMES_H; region activities with the noise of calibration.NOISE (PET 10% + 0.02 MBq,
   SPECT 15% + 0.5 MBq: MIRD 26 calibration plus segmentation; sources there), sigma taken
   from the *measured* value, as a clinic would.
   - Twin prior: the PET-calibrated twin (calibration.fit from the population prior: a Laplace
     posterior) is the prior of the SPECT update (``Posterior.as_prior``). The update is done by
     importance sampling (twin.stp.importance_update): ``--draws`` draws from that prior, one
     vmapped solve, weights = the SPECT likelihood under the same Gaussian noise model the fit
     uses; estimate = the posterior median TIA (minimises the expected absolute error). This is
     the exact Bayesian update of the twin's prior (no second Laplace approximation) and costs
     one batched solve instead of a fit per patient and scan time. ``twin-pet-only``: the PET
     twin's prior median TIA, without the SPECT (what the SPECT adds).
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
[--cohort pbpk|biexp|both] [--out DIR]
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

    def simulate(self, regimen, thetas, times):
        """(activity (N, regions, times) MBq, tia (N, regions) MBq h, ok, region names)."""
        from pbpk_models.simulate import prepare, simulate_batch

        model = prepare(self.spec, regimen, np.asarray(times), DAYS)[0]
        base = model.params_from({})
        idx = [model.parameter_names.index(n) for n in self.prior.names]
        P = np.tile(base, (len(thetas), 1))
        P[:, idx] = np.exp(thetas)
        out = simulate_batch(model, regimen, P, np.asarray(times), days=DAYS)
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
                return fit(obs, regimen, self.name, prior=prior, n_starts=1, max_nfev=40)
            except FitError:
                return None


def _obs(regions, t, act, rp, modality, rng):
    """Noisy region activities with calibration.NOISE; sigma from the *measured* value (what the
    clinic knows), the same noise model the fit assumes."""
    from calibration import NOISE, Observations

    act = np.asarray(act, float)
    y = np.clip(act + NOISE[modality].sigma(act) * rng.standard_normal(act.shape), 0.0, None)
    sig = NOISE[modality].sigma(y)
    n = len(regions)
    return Observations(np.array(regions, dtype=object), np.full(n, float(t)), y, sig,
                        np.array([modality] * n, dtype=object), np.array([rp] * n, dtype=object))


def _mono_t_eff(t, a):
    """Mono-exponential effective half-life (h) from a log-linear fit of noise-free points."""
    slope = np.polyfit(t, np.log(np.clip(a, 1e-300, None)), 1)[0]
    return math.log(2) / -slope if slope < 0 else np.inf


CHUNK = 1024   # patients per vmapped solve (fixed, so the solver compiles once per regimen)


def _simulate_chunked(S, regimen, thetas, times, tqdm, desc):
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
        a, t, o, names = S.simulate(regimen, th, times)
        acts.append(a[:m])
        tias.append(t[:m])
        oks.append(o[:m])
    return np.concatenate(acts), np.concatenate(tias), np.concatenate(oks), names


def _update(pred, tia, ok, y, sig):
    """twin.stp.importance_update; NaNs when too few draws solved."""
    from twin.errors import InputError
    from twin.stp import importance_update

    try:
        return importance_update(pred, tia, y, sig, ok)
    except InputError:
        return np.full(tia.shape[1], np.nan), np.full(tia.shape[1], np.nan), 0.0


COLUMNS = ["patient", "region", "time_h", "method", "tia_mbq_h", "tia_true_mbq_h", "cohort",
           "measured_mbq", "ess"]


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
                importance=True):
    """PBPK cohort: population-prior patients, PET at 1 h, one SPECT per scan time.

    ``laplace_check``: for that many patients at 48 h also the Laplace path of twin.stp.twin_tia
    (calibration.fit with the PET twin as prior, posterior-median TIA over its Laplace draws):
    method ``twin-laplace``, on the same observations as ``twin``."""
    from twin.stp import twin_tia
    from twin.stp import hanscheid_tia, madsen_tia

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
    t_eff_pop = {r: float(np.median([_mono_t_eff(np.array(SCAN_TIMES_H), ref_act[i, k])
                                     for i in range(n) if ref_ok[i]]))
                 for r, k in zip(S.regions, ri)}
    print("reference-population median mono-exponential T_eff (h):",
          {k: round(v, 1) for k, v in t_eff_pop.items()}, flush=True)
    truth = {(i, r): float(tia[i, k]) for i in range(n) for r, k in zip(S.regions, ri)}
    # 1. PET-calibrated twin of each patient: calibration.fit from the population prior
    pet_posts = []
    for i in tqdm(range(n), desc=f"{S.name} PET fits"):
        if not (ok[i] and ok_pet[i]):
            pet_posts.append(None)
            continue
        o = _obs(S.regions, 1.0, pet_act[i, [pet_names.index(r) for r in S.regions], 0], S.pet,
                 "PET", rng)
        pet_posts.append(S.fit(o, S.petreg, S.prior))
    n_fail = sum(p is None for p in pet_posts)
    # 2. draws from each twin's posterior (= the prior of the SPECT update, Posterior.as_prior)
    have = [i for i in range(n) if pet_posts[i] is not None]
    if importance:
        th = np.concatenate([pet_posts[i].as_prior().sample_log(draws, seed + 31 * i)
                             for i in have])
        d_act, d_tia, d_ok, _ = _simulate_chunked(S, S.lureg, th, SCAN_TIMES_H, tqdm,
                                                  f"{S.name} twin draws")
        d_act = d_act.reshape(len(have), draws, d_act.shape[1], -1)[:, :, ri]
        d_tia = d_tia.reshape(len(have), draws, -1)[:, :, ri]
        d_ok = d_ok.reshape(len(have), draws)
    rows = []
    for it, t in enumerate(SCAN_TIMES_H):
        lap_posts, lap_keys = [], []
        for i in range(n):
            if not ok[i]:
                continue
            o = _obs(S.regions, t, act[i, ri, it], S.lu, "SPECT", rng)
            y, sig = np.asarray(o.activity_mbq), np.asarray(o.sigma_mbq)
            for j, r in enumerate(S.regions):
                ref = truth[(i, r)]
                # madsen-lit (literature T_eff) is computed from measured_mbq in summarise()
                rows.append((i, r, t, "hanscheid", float(hanscheid_tia(y[j], t)), ref, "pbpk",
                             y[j], np.nan))
                rows.append((i, r, t, "madsen", float(madsen_tia(y[j], t, t_eff_pop[r])), ref,
                             "pbpk", y[j], np.nan))
            if pet_posts[i] is None:
                continue
            if t == 48.0 and i < laplace_check:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        lap, _ = twin_tia(o, pet_posts[i], S.lureg, n_samples=draws,
                                          seed=seed + i, check_peak=False, update="laplace")
                        for j, r in enumerate(S.regions):
                            rows.append((i, r, t, "twin-laplace", float(lap["tia_mbq_h"][j]),
                                         truth[(i, r)], "pbpk", np.nan, np.nan))
                    except Exception as exc:  # noqa: BLE001 - a failed fit is a result here
                        print(f"twin-laplace failed for patient {i}: {exc}", flush=True)
            if t in laplace_times:
                lap_posts.append(S.fit(o, S.lureg, pet_posts[i].as_prior()))
                lap_keys.append((i, t))
            if not importance:
                continue
            h = have.index(i)
            med, pet_only, ess = _update(d_act[h, :, :, it], d_tia[h], d_ok[h], y, sig)
            for j, r in enumerate(S.regions):
                rows.append((i, r, t, "twin", float(med[j]), truth[(i, r)], "pbpk", np.nan, ess))
                rows.append((i, r, t, "twin-pet-only", float(pet_only[j]), truth[(i, r)],
                             "pbpk", np.nan, np.nan))
        if lap_posts:
            rows += _laplace_rows(S, lap_posts, lap_keys, truth, S.regions, names, 64,
                                  seed + 7919 * it, tqdm)
        checkpoint(pd.DataFrame(rows, columns=COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS), n_fail


def cohort_biexp(S, n, seed, draws, tqdm, checkpoint):
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
            o = _obs(regions, t, a_true, S.lu, "SPECT", rng)
            y, sig = np.asarray(o.activity_mbq), np.asarray(o.sigma_mbq)
            for j, r in enumerate(regions):
                rows.append((i, r, t, "hanscheid", float(hanscheid_tia(y[j], t)), truth[(i, r)],
                             "biexp", y[j], np.nan))
            med, _, ess = _update(d_act[:, :, it], d_tia, d_ok, y, sig)
            for j, r in enumerate(regions):
                rows.append((i, r, t, "twin", float(med[j]), truth[(i, r)], "biexp", np.nan,
                             ess))
        checkpoint(pd.DataFrame(rows, columns=COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS), 0


def summarise(df):
    """Errors per model, cohort, region, method and scan time; best scan time per method."""
    from twin.stp import RP_OF_MODEL, literature_t_eff_h, madsen_tia

    df = df.copy()
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
                          "median_signed_err": g["err"].median()})

    keys = ["model", "cohort", "region", "method"]
    summ = df.groupby(keys + ["time_h"])[["err"]].apply(agg).reset_index()
    best = (summ.sort_values(["share_over_10pct", "median_abs_err"])
            .groupby(keys).head(1).sort_values(keys))
    return df, summ, best


def goal_ratios(best):
    """Each twin variant's share > 10% over the better classical method's (each method at its
    best scan time)."""
    rows = []
    for (model, cohort, region), g in best.groupby(["model", "cohort", "region"]):
        s = g.set_index("method")["share_over_10pct"]
        classical = [m for m in ("hanscheid", "madsen", "madsen-lit") if m in s]
        if not classical:
            continue
        cbest = min(classical, key=lambda m: s[m])
        for twin in ("twin", "twin-laplace", "twin-map"):
            if twin not in s:
                continue
            rows.append({"model": model, "cohort": cohort, "region": region, "twin": twin,
                         "twin_share": s[twin], "best_classical": cbest,
                         "classical_share": s[cbest],
                         "ratio": s[twin] / s[cbest] if s[cbest] > 0 else np.nan})
    return pd.DataFrame(rows)


STYLE = {"hanscheid": ("C0", "-"), "madsen": ("C1", "-"), "madsen-lit": ("C1", ":"),
         "twin": ("C3", "-"), "twin-pet-only": ("C3", ":"), "twin-laplace": ("C2", "--"),
         "twin-map": ("C2", ":")}


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
    text = (_table(best) + "\n\nGoal: twin share > 10% / better classical share < 0.5 "
            "(each at its best scan time)\n\n" + ratios.round(2).to_string(index=False))
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
                    help="re-summarise OUT/stp_errors_*.csv (e.g. of parallel runs)")
    args = ap.parse_args(argv)
    if args.draws < 10:
        ap.error("--draws must be at least 10")
    from tqdm import tqdm

    from twin.atomic import write_csv_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.summarise_only:
        df = pd.concat([pd.read_csv(p) for p in sorted(args.out.glob("stp_errors_*.csv"))])
    else:
        S = Setup(args.model)
        S.chunk = args.chunk
        fails = {}
        parts = []
        for cohort, fn in (("pbpk", cohort_pbpk), ("biexp", cohort_biexp)):
            if args.cohort not in (cohort, "both"):
                continue
            path = args.out / f"stp_errors_{args.model}_{cohort}.csv"

            def checkpoint(d, path=path):
                d = d.assign(model=args.model)
                write_csv_atomic(d, path)

            kw = {"laplace_check": args.laplace_check,
                  "laplace_times": tuple(args.laplace_times),
                  "importance": not args.no_importance} if cohort == "pbpk" else {}
            d, f = fn(S, args.n, args.seed, args.draws, tqdm, checkpoint, **kw)
            d = d.assign(model=args.model)
            write_csv_atomic(d, path)
            parts.append(d)
            fails[cohort] = f
        df = pd.concat(parts)
        print(f"failed twin fits: {fails}")
    print(report(df, args.out))
    print(f"\nall scan times: {args.out / 'stp_summary.csv'}; plot "
          f"{args.out / 'stp_error_vs_time.png'}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
