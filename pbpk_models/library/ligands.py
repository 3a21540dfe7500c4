"""Ligand-specific parameters of imaging ligands that share a patient's physiology.

A secondary ligand's parameter ``NAME[ligand]`` takes the value given here; where none is
given it is assumed equal to the principal (therapy) ligand's value, and the parameter's
``source`` says so. Affinities are converted to rate constants by keeping the therapy ligand's
association rate k_on (no ligand-specific k_on is published for these ligands in vivo) and
setting k_off = K_D * k_on, so that the equilibrium affinity is the measured one.
"""

from __future__ import annotations

from pbpk_models import units as u
from pbpk_models.spec import Parameter

_K_ON_PSMA617_ML_PER_NMOL_H = u.ML_PER_L * u.per_min_to_per_h(0.046)  # Fele-Paranj 2024


def _k_off_from_kd(kd_nmol_per_l: float) -> float:
    """k_off (1/h) = K_D (nmol/mL) * k_on (mL/nmol/h)."""
    return kd_nmol_per_l / u.ML_PER_L * _K_ON_PSMA617_ML_PER_NMOL_H


PSMA_SECONDARY_LIGANDS = {
    # 68Ga-PSMA-11 (Glu-NH-CO-NH-Lys-(Ahx)-HBED-CC)
    "psma-11": {
        "k_off": Parameter(
            "k_off", _k_off_from_kd(2.9), "1/h",
            "dissociation rate of Ga-PSMA-11 from K_D = 2.9 nM and the PSMA-617 k_on",
            "Gourni E et al., PLoS One 2015;10:e0145755 (K_D 2.9 +/- 0.6 nM, LNCaP); "
            "k_on assumed equal to PSMA-617's", "ligand"),
    },
    # 18F-DCFPyL
    "dcfpyl": {
        "k_off": Parameter(
            "k_off", _k_off_from_kd(1.1), "1/h",
            "dissociation rate of DCFPyL from K_i = 1.1 nM and the PSMA-617 k_on",
            "Chen Y et al., Clin Cancer Res 2011;17:7645 (K_i 1.1 +/- 0.1 nM); k_on assumed "
            "equal to PSMA-617's", "ligand"),
    },
}
