"""Outcome models: dose-limiting toxicity from organ BED/dose, efficacy from lesion dose.

Each model is a callable ``f(doses: dict) -> array`` on the arrays of
:class:`twin.trials.engine.LevelDoses` (``doses.as_dict()``), so any of them can be replaced
(``OutcomeModel(toxicity=my_fn, ...)``).

Toxicity (probability of a DLT over the planned course; the virtual trial assumes complete
follow-up of late renal toxicity, an idealisation):
- kidney: LKB NTCP (``twin.dosimetry.radiobiology.ntcp_lkb``, Burman C et al. 1991: TD50 28 Gy,
  m 0.10, whole organ, uniform dose so EUD = mean dose) applied to the EQD2 of the course's
  kidney BED, EQD2 = BED / (1 + 2 Gy / (alpha/beta)), alpha/beta 2.6 Gy (Barone 2005; MIRD 20);
- red marrow: the project's checked references give no NTCP model for radioligand therapy
  (only the 2 Gy limit, Benua 1962, and 11% grade 3/4 haematotoxicity after PRRT). **Assumed**:
  a probit in absorbed dose with TD50 = 3 Gy and m = 0.26, so that the 2 Gy limit sits at a 10%
  complication probability;
- DLT = kidney or marrow toxicity, independent: p = 1 - (1 - NTCP_k)(1 - NTCP_m).

Efficacy:
- ``lesion_response``: responder if the cycle-1 mean lesion absorbed dose exceeds 7.5 Gy
  (177Lu-PSMA-617: mean lesion dose > 7.5 Gy in cycle 1 went with a median PSA change of -70%
  against +5%, 65-patient study listed in population_radiobiology.md, authors unverified);
- ``net_lesion_response`` (default of the ``net`` population): logistic in the cycle-1 mean
  lesion absorbed dose with the odds ratio 1.5 per 50 Gy of Alipour R et al. (EJNMMI
  2023;50:2997, 90 GEP-NEN patients treated with 177Lu-DOTATATE: RECIST partial response 24%,
  lesion doses 2-77 Gy per cycle). The intercept is **assumed**: P = 0.24 (the cohort's partial
  response rate) at 39.5 Gy, the middle of the reported dose range (the cohort's median dose
  was not read). Returns a probability, so the response rates are expected values;
- ``tcp(alpha_per_gy, clonogens_per_ml)``: Poisson LQ TCP of a uniform lesion
  (``twin.dosimetry.radiobiology.tcp_poisson``'s formula, vectorised) on the course's lesion
  dose (lesion BED needs a repair half-time the checked references do not give); no default
  parameters.

Limits for "patients over the limit" (``twin.planning.default_limits``): kidney BED 40 Gy
(Bodei 2008), red-marrow dose 2 Gy (Benua 1962).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from twin.errors import InputError

MARROW_TD50_GY = 3.0   # assumed (see the module docstring)
MARROW_M = 0.26        # assumed: TD50 (1 - 1.2816 m) = 2 Gy -> NTCP(2 Gy) = 10%
RESPONSE_THRESHOLD_GY = 7.5  # cycle-1 mean lesion dose (population_radiobiology.md)
NET_RESPONSE_OR_PER_50GY = 1.5   # Alipour R et al., EJNMMI 2023;50:2997 (checked)
NET_RESPONSE_RATE = 0.24         # RECIST 1.1 partial response in the same cohort (checked)
NET_RESPONSE_REF_GY = 39.5       # assumed: middle of the reported 2-77 Gy per cycle


def kidney_ntcp(doses: dict) -> np.ndarray:
    """LKB NTCP of the kidneys from the course's kidney BED (see the module docstring)."""
    from twin.dosimetry.radiobiology import LKB_KIDNEY, eqd2, ntcp_lkb, tissue

    bed = np.asarray(doses["kidney_bed_gy"], dtype=np.float64)
    return ntcp_lkb(eqd2(bed, tissue("kidney").alpha_beta_gy), LKB_KIDNEY)


def marrow_ntcp(doses: dict, td50_gy: float = MARROW_TD50_GY, m: float = MARROW_M):
    """Probit NTCP of the red marrow in absorbed dose (assumed parameters, module docstring)."""
    from scipy.special import ndtr

    d = np.asarray(doses["marrow_dose_gy"], dtype=np.float64)
    return ndtr((d - td50_gy) / (m * td50_gy))


def dlt_probability(doses: dict) -> np.ndarray:
    """P(DLT) = 1 - (1 - NTCP_kidney)(1 - NTCP_marrow)."""
    return 1.0 - (1.0 - kidney_ntcp(doses)) * (1.0 - marrow_ntcp(doses))


def lesion_response(doses: dict, threshold_gy: float = RESPONSE_THRESHOLD_GY) -> np.ndarray:
    """1 if the cycle-1 mean lesion dose exceeds ``threshold_gy``, else 0."""
    return (np.asarray(doses["lesion_dose_c1_gy"]) > threshold_gy).astype(np.float64)


def net_lesion_response(doses: dict) -> np.ndarray:
    """P(response) = logistic(logit 0.24 + ln(1.5)/50 Gy x (D_cycle1 - 39.5 Gy)) (docstring)."""
    d = np.asarray(doses["lesion_dose_c1_gy"], dtype=np.float64)
    x = (math.log(NET_RESPONSE_RATE / (1 - NET_RESPONSE_RATE))
         + math.log(NET_RESPONSE_OR_PER_50GY) / 50.0 * (d - NET_RESPONSE_REF_GY))
    return 1.0 / (1.0 + np.exp(-x))


def tcp(alpha_per_gy: float, clonogens_per_ml: float, key: str = "lesion_dose_gy",
        volume_key: str | None = None, volume_ml: float = 1.0) -> Callable:
    """Poisson TCP = exp(-N V exp(-alpha D)) of a uniform lesion of ``volume_ml`` mL."""
    for name, v in (("alpha_per_gy", alpha_per_gy), ("clonogens_per_ml", clonogens_per_ml),
                    ("volume_ml", volume_ml)):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise InputError(f"{name} must be a positive number, got {v!r}")

    def f(doses: dict) -> np.ndarray:
        d = np.asarray(doses[key], dtype=np.float64)
        return np.exp(-clonogens_per_ml * volume_ml * np.exp(-alpha_per_gy * d))

    return f


def over_limits(doses: dict, limits=None) -> dict:
    """{name: 0/1 array} for each limit (default ``twin.planning.default_limits()``)."""
    from twin.planning import default_limits

    key = {("Kidney", "bed_gy"): "kidney_bed_gy", ("Kidney", "dose_gy"): "kidney_dose_gy",
           ("RedMarrow", "dose_gy"): "marrow_dose_gy", ("SG", "dose_gy"): "salivary_dose_gy"}
    out = {}
    for lim in (default_limits() if limits is None else limits):
        k = key.get((lim.region, lim.quantity))
        if k is None:
            raise InputError(f"the trial engine has no {lim.region} {lim.quantity}; "
                             f"known: {sorted(key)}")
        out[f"over_{lim.region.lower()}_{lim.quantity}_{lim.value:g}"] = (
            np.asarray(doses[k]) > lim.value).astype(np.float64)
    return out


@dataclass(frozen=True)
class OutcomeModel:
    """Pluggable outcome callables on a dose dict: toxicity -> P(DLT), efficacy -> P(response)."""

    toxicity: Callable = dlt_probability
    efficacy: Callable = lesion_response
    limits: tuple | None = None

    def evaluate(self, doses: dict) -> dict:
        p = np.asarray(self.toxicity(doses), dtype=np.float64)
        r = np.asarray(self.efficacy(doses), dtype=np.float64)
        if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
            raise InputError("the toxicity model must return probabilities in [0, 1]")
        return {"p_dlt": p, "response": r, **over_limits(doses, self.limits)}


def default_outcome_model(population: str | None = None) -> OutcomeModel:
    """The default outcomes of a population: DLT from kidney and marrow NTCP for all; response
    by the 7.5 Gy cycle-1 threshold (mcrpc) or the NET dose-response logistic (net)."""
    if population is not None and str(population).lower() == "net":
        return OutcomeModel(efficacy=net_lesion_response)
    return OutcomeModel()
