"""Named, versioned virtual populations: covariates and PBPK parameters, reproducible from a seed.

A population is a joint lognormal (Gaussian copula on log scale) distribution of covariates and
physiological parameters mapped onto a model's parameter vector. ``sample(n, seed)`` returns a
:class:`VirtualPopulation` (covariates table + parameter matrix aligned with the compiled
model's ``parameter_names``); the same name, version, n and seed always give the same patients.

``mcrpc`` (version 1) - men with metastatic castration-resistant prostate cancer treated with
177Lu-PSMA-617, model ``psma-pbrpk`` (corrected variant). Variables and sources:

========================  =====================  ==============================================
variable                  distribution           source
========================  =====================  ==============================================
sex                       all male               mCRPC
age (y)                   normal 71, SD 7        median 70.0 (VISION), 72.1 (TheraP), 71
                                                 (PSMAfore) [population_radiobiology.md];
                                                 SD 7 assumed; age only reported (no parameter
                                                 depends on it)
body weight (kg)          lognormal mean 85,     **assumed** (body-weight distributions of the
                          CV 0.17                trials were not read, population_radiobiology.md)
height (cm)               lognormal mean 175,    **assumed**
                          CV 0.04
BSA (m^2)                 Du Bois formula        Du Bois D, Du Bois EF, Arch Intern Med
                                                 1916;17:863: 0.007184 W^0.425 H^0.725
kidney volume V_Kidney    311 mL x (BSA/1.9) x   311 mL: the model's ICRP-89-like default
                          lognormal CV 0.25      (Fele-Paranj 2024); scaling with BSA: renal
                                                 volume correlates with BSA (r = 0.68) and GFR
                                                 (r = 0.62) [population_radiobiology.md]; CV 0.25
                                                 **assumed** (kidney length 110 +/- 12 mm, CV
                                                 0.11, volume ~ length^2-3)
GFR via TER_Kidney        lognormal mean 0.2     ``calibration.priors`` catalogue (published
                          L/min, CV 0.25         0.2 L/min, CV 0.25 assumed there)
Rden_Kidney, lambdaRel_   lognormal, catalogue   ``calibration.priors.prior_catalogue``
Kidney, Rden_SG,          means and CVs          (PBRPK authors' virtual-patient population,
lambdaRel_SG                                     Fele-Paranj et al. 2024; kidney recalibrated)
Rden_Tumor1/2/Rest        lognormal, CV 1.0      catalogue (published means; CV an assumption
                                                 stated there)
total tumour volume       lognormal, median      log-normal sampling of PSMA-PET total tumour
                          399 mL, sd_log 1.0     volume: a modelling choice (Seifert R et al.
                                                 2021: prognostic per doubling); median = the
                                                 model's default lesions (10 + 340 + 48.9 mL);
                                                 sd_log 1.0 **assumed** (Begum 2018 explored
                                                 0.3-3 L)
index lesion V_Tumor1     lognormal median 10    **assumed** spread around the model default
                          mL, sd_log 0.8
========================  =====================  ==============================================

Correlations on the log scale (all **assumed** except GFR-kidney volume): weight-height 0.4;
kidney-volume residual with GFR 0.62 (the published r of renal parenchymal volume with GFR);
everything else independent. The kidney volume also inherits the weight/height correlation
through BSA. Schedule: 6 cycles every 6 weeks (VISION, Sartor O et al., NEJM 2021).

``net`` (version 1) - patients with well-differentiated, SSTR-positive gastro-entero-pancreatic
neuroendocrine tumours treated with 177Lu-DOTATATE, model ``sstr`` (corrected), schedule 4
cycles every 8 weeks (NETTER-1: 7.4 GBq every 8 weeks x 4; Strosberg J et al., NEJM
2017;376:125). Variables and sources ("checked" = read in the source or in
shared/data/*/ with that status; everything else says **assumed**):

========================  =====================  ==============================================
variable                  distribution           source
========================  =====================  ==============================================
sex                       P(male) 0.656          40 men / 21 women in the 61-patient 177Lu-
                                                 DOTATATE dosimetry cohort (Clin Nucl Med 2013;
                                                 "Dosimetric analyses of kidneys, liver, spleen,
                                                 pituitary gland and NETs ...", checked abstract)
age (y)                   normal 62, SD 10       NET/PRRT cohorts about 61-63 y (checked,
                                                 population_radiobiology.md); SD 10 **assumed**;
                                                 reported only
body weight (kg)          lognormal mean 73 (M)  ICRP 89 reference adults 73 / 60 kg (checked
                          / 60 (F), CV 0.17      through code transcriptions); CV **assumed** (as
                                                 mcrpc)
height (cm)               lognormal mean 176 (M) ICRP 89 reference adult heights (recalled,
                          / 163 (F), CV 0.04     **unverified**); CV **assumed**
BSA (m^2)                 Du Bois formula        Du Bois 1916
kidney volume V_Kidney    310 (M) / 275 (F) mL   ICRP 89 kidney masses 310 / 275 g (checked
                          x BSA / BSA_ref(sex)   through code transcriptions; 1 g/mL), scaled by
                          x lognormal CV 0.25    BSA (r = 0.68, checked) relative to the sex's
                                                 reference BSA; CV **assumed** (as mcrpc)
GFR via TER_Kidney        lognormal, mean the    mean: the sstr model's default (the PSMA
                          model's, CV 0.25       template's 200 mL/min); CV 0.25 as in the
                                                 calibration prior catalogue (**assumed** there)
kidney effective          lognormal mean 56 h,   Spink S et al., EJNMMI Phys 2024 (31 patients,
half-life T_eff           SD 13 h                56 +/- 13 h, checked); sets the trapped-pool
                                                 release lambdaRel_KidneyTrap = ln2/T_eff -
                                                 ln2/T_phys (derived, as the sstr model does);
                                                 T_eff capped at 0.95 T_phys
reabsorbed fraction       lognormal mean 0.03    mean: the sstr model's f_exc 0.97; CV
1 - f_exc                 CV 0.20                **assumed**, chosen so that, with the other
                                                 kidney variables, the kidney dose per GBq varies
                                                 as in published cohorts (CV 0.16-0.50:
                                                 0.57 +/- 0.09, 0.43 +/- 0.13, 0.38 +/- 0.19
                                                 Gy/GBq; checked, clinical_reference.md);
                                                 benchmarks/validate_trials.py prints the check
Rden_Tumor1/2/Rest        lognormal mean 34      Jimenez-Franco LD et al., J Nucl Med 2021;62:92
                          nmol/L, SD 20          (34 +/- 20 nmol/L, checked); correlation 0.5
                                                 between a patient's lesions **assumed**
Rden_Spleen, Rden_Liver   lognormal, the model's derived: CVs of the spleen and liver doses of the
                          means, CV 0.12 / 0.19  61-patient cohort (1.17 +/- 0.14 and 0.27 +/-
                                                 0.05 mGy/MBq, checked), **assuming** the dose
                                                 varies with the receptor amount only
total tumour volume       lognormal, median      **assumed** (as mcrpc: the model's default
                          399 mL, sd_log 1.0     lesions; no NET tumour-volume distribution read)
index lesion V_Tumor1     lognormal median 10    **assumed**
                          mL, sd_log 0.8
========================  =====================  ==============================================

Correlations on the log scale: weight-height 0.4 (**assumed**), kidney-volume residual with GFR
0.62 (checked r), tumour receptor densities 0.5 between lesions (**assumed**); everything else
independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from twin.errors import InputError

POPULATIONS = {"mcrpc": "1", "net": "1"}
MODEL_OF = {"mcrpc": ("psma-pbrpk", "corrected", "lu177-psma-617"),
            "net": ("sstr", "corrected", "lu177-dotatate")}
# standard schedule (cycles, weeks between cycles): VISION (Sartor O et al., NEJM 2021) and
# NETTER-1 (Strosberg J et al., NEJM 2017;376:125)
SCHEDULE = {"mcrpc": (6, 6.0), "net": (4, 8.0)}


@dataclass(frozen=True)
class VirtualPopulation:
    """``covariates``: pandas table, one row per patient; ``params``: (n, n_params) aligned with
    ``model.parameter_names``; ``name``/``version``/``seed`` identify it; ``n_cycles`` and
    ``interval_weeks`` are the population's standard schedule, ``radiopharmaceutical`` its
    therapy."""

    name: str
    version: str
    seed: int
    model: object = field(repr=False)
    covariates: object = field(repr=False)
    params: np.ndarray = field(repr=False)
    sources: dict = field(repr=False, default_factory=dict)
    radiopharmaceutical: str = "lu177-psma-617"
    n_cycles: int = 6
    interval_weeks: float = 6.0

    @property
    def n(self) -> int:
        return self.params.shape[0]


def _lognormal(mean, cv):
    sd = math.sqrt(math.log1p(cv * cv))
    return math.log(mean) - 0.5 * sd * sd, sd


def du_bois_bsa(weight_kg, height_cm):
    """Body surface area (m^2), Du Bois D, Du Bois EF, Arch Intern Med 1916;17:863-871."""
    return 0.007184 * np.asarray(weight_kg) ** 0.425 * np.asarray(height_cm) ** 0.725


def population_model(name: str):
    """The compiled model (full mode, therapy radiopharmaceutical only) of a population."""
    from pbpk_models.library import build_spec
    from pbpk_models.model import compile_model

    model_name, variant, rp = _lookup(name)
    cache = _MODELS
    if name not in cache:
        cache[name] = compile_model(build_spec(model_name, variant), (rp,), "full")
    return cache[name]


_MODELS: dict = {}


def _lookup(name):
    key = str(name).lower()
    if key not in POPULATIONS:
        raise InputError(f"unknown population {name!r}; known: {', '.join(POPULATIONS)}")
    return MODEL_OF[key]


def sample(name: str, n: int, seed: int = 0) -> VirtualPopulation:
    """Draw ``n`` virtual patients of population ``name`` (reproducible from ``seed``)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"the number of virtual patients must be a positive integer, got {n!r}")
    _lookup(name)
    return {"mcrpc": _mcrpc, "net": _net}[str(name).lower()](int(n), int(seed))


def radiopharmaceutical_of(name: str) -> str:
    """The therapy radiopharmaceutical of a population (e.g. 'net' -> 'lu177-dotatate')."""
    return _lookup(name)[2]


def _mcrpc(n: int, seed: int) -> VirtualPopulation:
    import pandas as pd

    from calibration.priors import prior_catalogue
    model = population_model("mcrpc")
    cat = prior_catalogue("psma-pbrpk")
    rng = np.random.default_rng(seed)
    # latent standard normals: logW, logH, logTER, kidney residual, TTV, V_Tumor1, then the
    # independent receptor/release parameters
    pk = ("Rden_Kidney", "lambdaRel_Kidney", "Rden_SG", "lambdaRel_SG",
          "Rden_Tumor1", "Rden_Tumor2", "Rden_TumorRest")
    k = 6 + len(pk)
    R = np.eye(k)
    R[0, 1] = R[1, 0] = 0.4      # weight-height (assumed)
    R[2, 3] = R[3, 2] = 0.62     # GFR - kidney volume (population_radiobiology.md)
    z = rng.standard_normal((n, k)) @ np.linalg.cholesky(R).T

    def ln(col, mean, cv):
        m, s = _lognormal(mean, cv)
        return np.exp(m + s * z[:, col])

    weight = ln(0, 85.0, 0.17)
    height = ln(1, 175.0, 0.04)
    bsa = du_bois_bsa(weight, height)
    ter_mean, ter_cv, ter_src = cat["TER_Kidney"]
    ter = ln(2, ter_mean, ter_cv)
    v_kidney = 311.0 * (bsa / 1.9) * ln(3, 1.0, 0.25)
    ttv = np.exp(math.log(10.0 + 340.0 + 48.9) + 1.0 * z[:, 4])
    v_t1 = np.exp(math.log(10.0) + 0.8 * z[:, 5])
    age = 71.0 + 7.0 * rng.standard_normal(n)
    values = {
        "bodyWeight": weight, "bodySurfaceArea": bsa, "TER_Kidney": ter, "V_Kidney": v_kidney,
        "V_Tumor1": v_t1, "V_Tumor2": ttv * 340.0 / 398.9, "V_TumorRest": ttv * 48.9 / 398.9,
    }
    for j, name in enumerate(pk):
        mean, cv, _ = cat[name]
        values[name] = ln(6 + j, mean, cv)
    base = model.params_from(None)
    P = np.tile(base, (n, 1))
    names = list(model.parameter_names)
    for name, v in values.items():
        P[:, names.index(name)] = v
    # GFR (mL/min) as the model defines it: TER/3 * 201/151 (psma_pbrpk.md)
    gfr = ter / 60.0 / 3.0 * 201.0 / 151.0
    cov = pd.DataFrame({
        "patient": np.arange(n), "sex": "M", "age_y": age, "weight_kg": weight,
        "height_cm": height, "bsa_m2": bsa, "gfr_ml_min": gfr, "kidney_volume_ml": v_kidney,
        "tumour_volume_ml": ttv + v_t1, "index_lesion_ml": v_t1,
        **{n_: values[n_] for n_ in pk},
    })
    sources = {name: cat[name][2] for name in pk}
    sources["TER_Kidney"] = ter_src
    sources["weight, height, age SD, kidney CV, tumour volumes, correlations"] = \
        "assumed (see twin.trials.populations docstring)"
    return VirtualPopulation("mcrpc", POPULATIONS["mcrpc"], seed, model, cov, P, sources,
                             "lu177-psma-617", *SCHEDULE["mcrpc"])


# net, version 1 (see the module docstring for every value's source)
NET_P_MALE = 40.0 / 61.0                      # Clin Nucl Med 2013, 61 patients (checked)
NET_AGE_MEAN, NET_AGE_SD = 62.0, 10.0         # 61-63 y (checked); SD assumed
NET_WEIGHT_KG = {"M": 73.0, "F": 60.0}        # ICRP 89 reference adults (checked, transcribed)
NET_HEIGHT_CM = {"M": 176.0, "F": 163.0}      # ICRP 89 reference heights (recalled, unverified)
NET_KIDNEY_ML = {"M": 310.0, "F": 275.0}      # ICRP 89 kidney masses, g (checked), at 1 g/mL
NET_KIDNEY_TEFF_H = (56.0, 13.0)              # Spink 2024, mean +/- SD (checked)
NET_REABSORBED_CV = 0.20                      # assumed (module docstring)
NET_RDEN_TUMOUR = (0.034, 0.020)              # nmol/mL, Jimenez-Franco 2021 (checked)
NET_RDEN_CV = {"Rden_Spleen": 0.14 / 1.17, "Rden_Liver": 0.05 / 0.27}  # derived, Clin Nucl Med 2013
NET_TUMOUR_CORR = 0.5                         # assumed


def _net(n: int, seed: int) -> VirtualPopulation:
    import pandas as pd

    from pbpk_models import radionuclides as rn

    model = population_model("net")
    rng = np.random.default_rng(seed)
    # latent normals: 0 logW, 1 logH, 2 logTER, 3 kidney residual, 4 TTV, 5 V_Tumor1, 6 T_eff,
    # 7 reabsorbed fraction, 8-10 tumour Rden, 11 Rden_Spleen, 12 Rden_Liver
    k = 13
    R = np.eye(k)
    R[0, 1] = R[1, 0] = 0.4                         # weight-height (assumed)
    R[2, 3] = R[3, 2] = 0.62                        # GFR - kidney volume (checked r)
    for i in (8, 9, 10):
        for j in (8, 9, 10):
            if i != j:
                R[i, j] = NET_TUMOUR_CORR           # lesions of one patient (assumed)
    z = rng.standard_normal((n, k)) @ np.linalg.cholesky(R).T
    male = rng.random(n) < NET_P_MALE
    age = NET_AGE_MEAN + NET_AGE_SD * rng.standard_normal(n)

    def ln(col, mean, cv):
        m, s = _lognormal(mean, cv)
        return np.exp(m + s * z[:, col])

    def by_sex(table):
        return np.where(male, table["M"], table["F"])

    weight = by_sex(NET_WEIGHT_KG) * ln(0, 1.0, 0.17)
    height = by_sex(NET_HEIGHT_CM) * ln(1, 1.0, 0.04)
    bsa = du_bois_bsa(weight, height)
    bsa_ref = np.where(male, du_bois_bsa(NET_WEIGHT_KG["M"], NET_HEIGHT_CM["M"]),
                       du_bois_bsa(NET_WEIGHT_KG["F"], NET_HEIGHT_CM["F"]))
    v_kidney = by_sex(NET_KIDNEY_ML) * (bsa / bsa_ref) * ln(3, 1.0, 0.25)
    base = model.params_from(None)
    names = list(model.parameter_names)
    ter = ln(2, float(base[names.index("TER_Kidney")]), 0.25)
    t_phys = math.log(2.0) / rn.decay_constant_per_h("Lu-177")
    teff = np.minimum(ln(6, NET_KIDNEY_TEFF_H[0], NET_KIDNEY_TEFF_H[1] / NET_KIDNEY_TEFF_H[0]),
                      0.95 * t_phys)
    release = math.log(2.0) / teff - math.log(2.0) / t_phys
    reabs = ln(7, 1.0 - float(base[names.index("f_exc")]), NET_REABSORBED_CV)
    ttv = np.exp(math.log(10.0 + 340.0 + 48.9) + 1.0 * z[:, 4])
    v_t1 = np.exp(math.log(10.0) + 0.8 * z[:, 5])
    mean_r, sd_r = NET_RDEN_TUMOUR
    values = {
        "bodyWeight": weight, "bodySurfaceArea": bsa, "TER_Kidney": ter, "V_Kidney": v_kidney,
        "V_Tumor1": v_t1, "V_Tumor2": ttv * 340.0 / 398.9, "V_TumorRest": ttv * 48.9 / 398.9,
        "lambdaRel_KidneyTrap": release, "f_exc": 1.0 - reabs,
        "Rden_Tumor1": ln(8, mean_r, sd_r / mean_r), "Rden_Tumor2": ln(9, mean_r, sd_r / mean_r),
        "Rden_TumorRest": ln(10, mean_r, sd_r / mean_r),
    }
    for col, (name, cv) in zip((11, 12), NET_RDEN_CV.items()):
        values[name] = ln(col, float(base[names.index(name)]), cv)
    P = np.tile(base, (n, 1))
    for name, v in values.items():
        P[:, names.index(name)] = v
    gfr = ter / 60.0 / 3.0 * 201.0 / 151.0          # the template's GFR (psma_pbrpk.md)
    cov = pd.DataFrame({
        "patient": np.arange(n), "sex": np.where(male, "M", "F"), "age_y": age,
        "weight_kg": weight, "height_cm": height, "bsa_m2": bsa, "gfr_ml_min": gfr,
        "kidney_volume_ml": v_kidney, "tumour_volume_ml": ttv + v_t1, "index_lesion_ml": v_t1,
        "kidney_teff_h": teff, "reabsorbed_fraction": reabs,
        **{n_: values[n_] for n_ in ("lambdaRel_KidneyTrap", "Rden_Tumor1", "Rden_Tumor2",
                                     "Rden_TumorRest", "Rden_Spleen", "Rden_Liver")},
    })
    sources = {
        "schedule": "NETTER-1: 7.4 GBq every 8 weeks x 4 (Strosberg J et al., NEJM 2017;376:125)",
        "sex": "40 M / 21 F, 61-patient 177Lu-DOTATATE dosimetry cohort (Clin Nucl Med 2013)",
        "age": "NET/PRRT cohorts 61-63 y (population_radiobiology.md); SD 10 assumed",
        "weight, kidney mass": "ICRP Publication 89 reference adults (male/female)",
        "height": "ICRP 89 reference heights (unverified)",
        "kidney T_eff": "Spink S et al., EJNMMI Phys 2024, doi:10.1186/s40658-024-00665-9: "
                        "56 +/- 13 h",
        "tumour Rden": "Jimenez-Franco LD et al., J Nucl Med 2021;62:92: 34 +/- 20 nmol/L",
        "spleen/liver Rden CV": "dose CVs of the 61-patient cohort (Clin Nucl Med 2013), derived",
        "GFR-kidney volume r 0.62, kidney volume ~ BSA": "population_radiobiology.md (checked)",
        "weight/height/kidney/GFR CVs, reabsorbed-fraction CV, tumour volumes, correlations":
            "assumed (see twin.trials.populations docstring)",
    }
    return VirtualPopulation("net", POPULATIONS["net"], seed, model, cov, P, sources,
                             "lu177-dotatate", *SCHEDULE["net"])
