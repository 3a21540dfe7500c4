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
through BSA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from twin.errors import InputError

POPULATIONS = {"mcrpc": "1"}
MODEL_OF = {"mcrpc": ("psma-pbrpk", "corrected", "lu177-psma-617")}


@dataclass(frozen=True)
class VirtualPopulation:
    """``covariates``: pandas table, one row per patient; ``params``: (n, n_params) aligned with
    ``model.parameter_names``; ``name``/``version``/``seed`` identify it."""

    name: str
    version: str
    seed: int
    model: object = field(repr=False)
    covariates: object = field(repr=False)
    params: np.ndarray = field(repr=False)
    sources: dict = field(repr=False, default_factory=dict)

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
    key = name.lower()
    if key not in POPULATIONS:
        raise InputError(f"unknown population {name!r}; known: {', '.join(POPULATIONS)} "
                         f"(the 'net' population for 177Lu-DOTATATE is not built yet)")
    return MODEL_OF[key]


def sample(name: str, n: int, seed: int = 0) -> VirtualPopulation:
    """Draw ``n`` virtual patients of population ``name`` (reproducible from ``seed``)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"the number of virtual patients must be a positive integer, got {n!r}")
    _lookup(name)
    return _mcrpc(int(n), int(seed))


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
    return VirtualPopulation("mcrpc", POPULATIONS["mcrpc"], seed, model, cov, P, sources)
