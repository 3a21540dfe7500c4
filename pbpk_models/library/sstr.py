"""``sstr``: 177Lu-DOTATATE therapy and 68Ga-DOTATATE imaging on the PSMA model's organ template.

Structure: the whole-body template of ``psma-pbrpk`` (corrected physics) with three SSTR-specific
changes (docs/research/sstr.md):
1. kidney: filtered peptide reabsorbed in the proximal tubule is trapped (residualising 177Lu-DOTA
   catabolites; megalin-mediated reabsorption, the pathway amino acids block) and released at
   ``lambdaRel_KidneyTrap``; no tubular SSTR2 binding by default (Rden_Kidney = 0);
2. SSTR2-binding organs: spleen, liver, GI and the tumours; salivary glands and prostate have no
   relevant SSTR2 (Rden 0);
3. the metal changes sst2 affinity tenfold, so 68Ga-DOTATATE is its own ligand ``ga-dotatate``.

Every value says whether it was read in a source (checked), computed from one (derived) or
assumed; assumed values are to be calibrated to the clinical targets in
``shared/data/pbpk/clinical_reference.md``. See docs/research/sstr.md for the evidence.
"""

from __future__ import annotations

import dataclasses

from pbpk_models import units as u
from pbpk_models.library import psma
from pbpk_models.spec import ModelSpec, Parameter

_K_ON = u.ML_PER_L * u.per_min_to_per_h(0.046)  # template k_on, L/nmol/min -> mL/nmol/h
_NMOL_PER_L = 1.0 / u.ML_PER_L
SIEBINGA_2021 = "Siebinga H et al., EJNMMI Res 2021;11:73, doi:10.1186/s13550-021-00821-7"
JIMENEZ_FRANCO_2021 = "Jimenez-Franco LD et al., J Nucl Med 2021;62:92"
SPINK_2024 = "Spink S et al., EJNMMI Phys 2024, doi:10.1186/s40658-024-00665-9"
IC50 = ("sst2 IC50 (as K_D proxy): Lu-DOTATATE 2.0 +/- 0.8 nM, Ga-DOTATATE 0.2 +/- 0.04 nM "
        "(Reubi JC et al., Eur J Nucl Med 2000;27:273, as tabulated in Pharmacol Rev; "
        "shared/data/pbpk/sstr_and_imaging_ligands.md)")


def _kd_to_koff(kd_nm: float) -> float:
    return kd_nm * _NMOL_PER_L * _K_ON


# name: (value in canonical units, source)
_SSTR_VALUES = {
    "k_off": (_kd_to_koff(2.0), IC50 + "; k_off = K_D * k_on with the template k_on (assumed)"),
    "Rden_Spleen": (24.0 * _NMOL_PER_L, f"derived: 4.40 nmol spleen receptors ({SIEBINGA_2021}) "
                                        "/ 0.183 L template spleen"),
    "Rden_Liver": (4.1 * _NMOL_PER_L, f"derived: 7.80 nmol liver receptors ({SIEBINGA_2021}) / "
                                      "1.91 L template liver"),
    "Rden_GI": (4.1 * _NMOL_PER_L, "assumed equal to the liver (physiologic stomach/pancreas "
                                   "uptake; no value found)"),
    "Rden_Tumor1": (34.0 * _NMOL_PER_L, f"{JIMENEZ_FRANCO_2021} (34 +/- 20 nmol/L)"),
    "Rden_Tumor2": (34.0 * _NMOL_PER_L, f"{JIMENEZ_FRANCO_2021} (34 +/- 20 nmol/L)"),
    "Rden_TumorRest": (34.0 * _NMOL_PER_L, f"{JIMENEZ_FRANCO_2021} (34 +/- 20 nmol/L)"),
    "Rden_Kidney": (0.0, "assumed: kidney retention by reabsorption and trapping, not SSTR2"),
    "Rden_SG": (0.0, "assumed: no relevant salivary SSTR2 uptake"),
    "Rden_Prostate": (0.0, "assumed: no prostate SSTR2 uptake"),
    "phi": (0.57, "1 - plasma protein binding 43% (Lutathera label; unverified)"),
    "f_exc": (0.97, "calibration start: trapped kidney uptake ~2 %IA (docs/research/sstr.md)"),
    "lambdaRel_KidneyTrap": (u.per_min_to_per_h(1.3e-4),
                             f"derived: kidney T_eff 56 +/- 13 h ({SPINK_2024}) with the 177Lu "
                             "half-life gives a biological half-life of 86 h"),
}
for _organ in ("Kidney", "Liver", "Spleen", "GI", "Prostate", "SG"):
    _SSTR_VALUES[f"lambdaRel_{_organ}"] = (
        u.per_min_to_per_h(1.3e-4), "assumed equal to the kidney-derived release (calibrate)")
_SSTR_VALUES["lambdaRel_Spleen"] = (
    u.per_min_to_per_h(2.0e-4),
    "calibrated: spleen self-dose 1.17 +/- 0.14 mGy/MBq of 177Lu-DOTATATE with amino acids "
    "(Clin Nucl Med 2013, 61 patients; shared/data/pbpk/sstr_and_imaging_ligands.md); 1.96e-4 "
    "/min reproduces it with this template")
for _t in ("Tumor1", "Tumor2"):
    _SSTR_VALUES[f"lambdaRel_{_t}"] = (u.per_min_to_per_h(1.0e-4),
                                       "assumed (calibrate): longer tumour than kidney retention")
for _organ in psma.RECEPTOR_ORGANS:
    _SSTR_VALUES[f"lambdaIntern_{_organ}"] = (
        u.per_min_to_per_h(0.002), "assumed: SSTR2 agonists internalise faster than PSMA "
                                   "inhibitors (calibrate; range 0.001-0.01 /min)")


def _parameters() -> list[Parameter]:
    base = {p.name: p for p in psma._parameters("corrected")}
    # the template's organ-relative PSMA densities become free SSTR parameters
    for organ in ("Prostate", "Liver", "Spleen", "GI"):
        base[f"Rden_{organ}"] = Parameter(f"Rden_{organ}", 0.0, "nmol/mL",
                                          f"receptor density {organ}", kind="physiological")
    base["lambdaRel_KidneyTrap"] = Parameter(
        "lambdaRel_KidneyTrap", 0.0, "1/h", "release of the trapped reabsorbed kidney pool",
        kind="ligand")
    out = []
    for name, p in base.items():
        if name in _SSTR_VALUES:
            value, source = _SSTR_VALUES[name]
            p = dataclasses.replace(p, value=float(value), source=source)
        elif name in ("k_on",):
            p = dataclasses.replace(p, source="assumed equal to the PSMA template's (no checked "
                                              "SSTR value; calibrate to the spleen curve)")
        out.append(p)
    return out


SSTR_SECONDARY_LIGANDS = {
    "ga-dotatate": {
        "k_off": Parameter("k_off", _kd_to_koff(0.2), "1/h",
                           "dissociation rate of Ga-DOTATATE from K_D = 0.2 nM", IC50, "ligand"),
    },
}


def build(variant: str = "corrected") -> ModelSpec:
    """The ``sstr`` model (one variant, 'corrected': the template's corrected physics)."""
    from pbpk_models.errors import InputError

    if variant != "corrected":
        raise InputError(f"sstr has only the variant 'corrected', not {variant!r}")
    return psma.build_template(
        name="sstr", variant=variant, published=False, parameters=_parameters(),
        extra_derived={}, principal_ligand="dotatate", secondary_ligands=SSTR_SECONDARY_LIGANDS,
        radiopharmaceutical_ligands={"ga68-dotatate": "ga-dotatate"},
        default_radiopharmaceutical="lu177-dotatate", kidney_trapping=True,
        description="SSTR2 radioligand PBPK (177Lu-DOTATATE, 68Ga-DOTATATE) on the organ template "
                    "of the PSMA PBRPK model, with tubular trapping in the kidney.",
        references=(SIEBINGA_2021, JIMENEZ_FRANCO_2021, SPINK_2024, IC50),
        notes=("parameters marked 'assumed' await calibration to patient data",))
