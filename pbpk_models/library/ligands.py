"""Ligand-specific parameters of imaging ligands that share a patient's physiology.

A secondary ligand's parameter ``NAME[ligand]`` takes the value given here; where none is
given it is assumed equal to the principal (therapy) ligand's value, and the parameter's
``source`` says so (internalisation and release hardly matter within a 1-2 h PET; receptor
densities are the patient's and always shared). Affinities: the therapy model's 8 nM is an
effective in-vivo value fitted by the model's authors, not an assay K_D, so an imaging ligand's
K_D is the model's 8 nM scaled by the ratio of the two ligands' affinities measured in one assay;
k_on is kept (no in-vivo k_on is published) and k_off = K_D * k_on. Evidence:
docs/research/imaging_ligands.md.
"""

from __future__ import annotations

from pbpk_models import units as u
from pbpk_models.spec import Parameter

_K_ON_PSMA617_ML_PER_NMOL_H = u.ML_PER_L * u.per_min_to_per_h(0.046)  # Fele-Paranj 2024
_KD_MODEL_PSMA617_NM = 8.0  # Fele-Paranj 2024: k_off / k_on = 0.368 / 0.046


def _k_off_from_kd(kd_nmol_per_l: float) -> float:
    """k_off (1/h) = K_D (nmol/mL) * k_on (mL/nmol/h)."""
    return kd_nmol_per_l / u.ML_PER_L * _K_ON_PSMA617_ML_PER_NMOL_H


PSMA_SECONDARY_LIGANDS = {
    # 68Ga-PSMA-11 (Glu-NH-CO-NH-Lys-(Ahx)-HBED-CC)
    "psma-11": {
        "k_off": Parameter(
            "k_off", _k_off_from_kd(_KD_MODEL_PSMA617_NM * 2.9 / 5.4), "1/h",
            "dissociation rate of Ga-PSMA-11: K_D = 8 nM * 2.9/5.4 = 4.3 nM (derived)",
            "same-assay K_D of Ga-PSMA-11 2.9 +/- 0.6 nM and In-PSMA-617 5.4 +/- 0.8 nM (Gourni E "
            "et al., PLoS One 2015;10:e0145755); k_on assumed equal to PSMA-617's", "ligand"),
    },
    # 18F-DCFPyL
    "dcfpyl": {
        "k_off": Parameter(
            "k_off", _k_off_from_kd(_KD_MODEL_PSMA617_NM / 2.0), "1/h",
            "dissociation rate of DCFPyL: K_D = 8 nM / 2 = 4 nM (derived, assumption)",
            "about twice PSMA-617's affinity: K_i 1.1 +/- 0.1 nM (Chen Y et al., Clin Cancer Res "
            "2011;17:7645) and the 0.49 vs 1 nM pair of an independent PBPK code for the two "
            "ligands (docs/research/imaging_ligands.md); k_on assumed equal to PSMA-617's",
            "ligand"),
    },
}
