"""``psma-pbrpk``: the published whole-body PSMA radiopharmacokinetic model.

Source of the structure and of every default value unless noted: Fele-Paranj A, Saboury B,
Uribe C, Rahmim A. "Physiologically based radiopharmacokinetic (PBRPK) modeling to simulate and
analyze radiopharmaceutical therapies: studies of non-linearities, multi-bolus injections, and
albumin binding." EJNMMI Radiopharm Chem 2024;9:6, doi:10.1186/s41181-023-00236-w (their SBML
export "Lu177_PSMA"), in the model lineage of Begum NJ et al., J Nucl Med 2018;59:929-933,
doi:10.2967/jnumed.117.203505 and Begum NJ et al., Sci Rep 2019;9:20041. Parameter names are the
published ones. Values are converted from the paper's units (min, L) to the project's canonical
units (h, mL) with :mod:`pbpk_models.units`; each parameter's description gives the published
value. Albumin binding is off in the published defaults (AlbuminDen = 0) and left out here.

Two variants:

``published``  reproduces the published export exactly, including five behaviours that
physiology would not have (document ``shared/data/pbpk/psma_pbrpk.md``):
  1. lambdaPhys = 7.15e-5 /min (half-life 6.73 d) instead of 177Lu's 6.647 d;
  2. the reabsorbed kidney pool returns to blood at rate / 1 L (a placeholder volume) instead of
     / V_KidneyIntera;
  3. the liver's vascular pool drains at F_Liver (hepatic artery) although it receives
     F_Liver + F_GI + F_Spleen (portal vein);
  4. labelled ligand's skin back-exchange uses V_SkinVas instead of V_SkinInt;
  5. labelled ligand does not decay in the reabsorbed kidney pool.
``corrected`` (default) fixes all five and uses population-typical parameter values (see
:data:`POPULATION_TYPICAL`).
"""

from __future__ import annotations

import sympy as sp

from pbpk_models import units as u
from pbpk_models.spec import Binding, Compartment, ModelSpec, Parameter, Transfer, sym

PAPER = "Fele-Paranj et al. 2024, EJNMMI Radiopharm Chem 9:6 (SBML Lu177_PSMA)"

RECEPTOR_ORGANS = ("Tumor1", "Tumor2", "TumorRest", "Kidney", "SG", "Liver", "Spleen",
                   "Prostate", "GI")
# Organs with vascular and interstitial spaces only.
PLAIN_ORGANS = ("Heart", "Bone", "RedMarrow", "Skin", "Muscle", "Brain", "Adipose", "Lungs", "Rest")

# Population-typical values used by the model's authors for virtual patients (lognormal mean;
# psma_pbrpk.md, "Population variability ... used with this model by the same group's
# virtual-patient pipeline"). The SD is used by the calibration priors.
POPULATION_TYPICAL = {
    # name: (mean, sd, source) in the paper's units (nmol/L, 1/min)
    "Rden_Kidney": (45.0, 15.0, "calibrated: kidney TIAC 1.6-2.0 h and T_eff ~40 h of SPECT-based "
                    "177Lu-PSMA-617 dosimetry (docs/research/kidney_dose.md section 4); SD of the "
                    "authors' population (10 nmol/L) scaled to the mean"),
    "lambdaRel_Kidney": (2.0e-4, 0.55e-4, "calibrated: late kidney T_eff 42 h against clinical "
                         "medians 35-40 h (docs/research/kidney_dose.md); authors' SD"),
    "Rden_SG": (60.0, 20.0, "population mean of the PBRPK authors' virtual-patient pipeline"),
    "lambdaRel_SG": (3.9e-4, 0.63e-4, "population mean of the PBRPK authors' virtual-patient "
                     "pipeline"),
}


def _p(name, value, unit, desc, kind="physiological", source=PAPER, lower=0.0, upper=float("inf")):
    return Parameter(name, float(value), unit, desc, source, kind, lower, upper)


def _parameters(variant: str) -> list[Parameter]:
    per_min = u.per_min_to_per_h
    nmol_per_l = 1.0 / u.ML_PER_L  # nmol/L -> nmol/mL
    P = [
        _p("bodyWeight", 100.0, "kg", "body weight (published default 100 kg)", upper=400),
        _p("bodySurfaceArea", 1.9, "m^2", "body surface area (published 1.9 m^2)", upper=4),
        _p("hematocrit", 0.40, "1", "haematocrit (published 0.40)", upper=0.8),
        _p("TER_Kidney", u.litres_to_ml(per_min(0.2)), "mL/h",
           "kidney tubular extraction rate; GFR = TER/3 * 201/151 (published 0.2 L/min)"),
        _p("phi", 0.66, "1", "filtered fraction of the ligand (published 0.66)", "ligand", upper=1),
        _p("f_exc", 0.96, "1", "excreted fraction of the filtrate (published 0.96)", "ligand",
           upper=1),
        _p("k_on", u.ML_PER_L * per_min(0.046), "mL/nmol/h",
           "association rate constant (published 0.046 L/nmol/min)", "ligand"),
        _p("k_off", per_min(0.368), "1/h",
           "dissociation rate constant (published 0.368 /min; K_D = 8 nM)", "ligand"),
        # organ volumes that are not scaled by body weight (published, L)
        _p("V_Kidney", 311.0, "mL", "kidney volume (published 0.311 L)"),
        _p("V_SG", 21.0, "mL", "salivary gland volume (published 0.021 L)"),
        _p("V_Liver", 1910.0, "mL", "liver volume (published 1.91 L)"),
        _p("V_Spleen", 183.0, "mL", "spleen volume (published 0.183 L)"),
        _p("V_Tumor1", 10.0, "mL", "tumour 1 volume (published 0.01 L)"),
        _p("V_Tumor2", 340.0, "mL", "tumour 2 volume (published 0.34 L)"),
        # The published model gives R0_TumorRest = 13 nmol and V_TumorRest = R0/Rden; here the
        # volume is the free parameter (as for every other organ) and R0 = Rden * V.
        _p("V_TumorRest", u.ML_PER_L * 13.0 / 266.0, "mL",
           "remaining tumour volume = R0_TumorRest / Rden_TumorRest = 13 nmol / 266 nmol/L"),
        _p("Rden_Tumor1", 57.0 * nmol_per_l, "nmol/mL", "receptor density tumour 1 (57 nmol/L)"),
        _p("Rden_Tumor2", 19.0 * nmol_per_l, "nmol/mL", "receptor density tumour 2 (19 nmol/L)"),
        _p("Rden_TumorRest", 266.0 * nmol_per_l, "nmol/mL",
           "receptor density of the remaining tumour (266 nmol/L)"),
        _p("Rden_Kidney", 14.0 * nmol_per_l, "nmol/mL", "kidney receptor density (14 nmol/L)"),
        _p("Rden_SG", 38.0 * nmol_per_l, "nmol/mL", "salivary gland receptor density (38 nmol/L)"),
        # perfusion per tissue volume (published L/min per L)
        _p("f_SG", per_min(0.074), "1/h", "salivary gland perfusion (0.074 L/min/L)"),
        _p("f_Tumor1", per_min(0.5), "1/h", "tumour 1 perfusion (0.5 L/min/L)"),
        _p("f_Tumor2", per_min(0.5), "1/h", "tumour 2 perfusion (0.5 L/min/L)"),
        _p("f_Prostate", per_min(0.18), "1/h",
           "prostate blood perfusion (0.18 L/min/L; plasma flow = f * (1 - hematocrit))"),
        _p("kPS_Muscle", per_min(0.02), "1/h", "permeability-surface per volume, muscle "
                                              "(0.02 /min); GI, Skin, Adipose, Heart, Bone, Rest "
                                              "take this value, Liver, Spleen, Lungs, SG, RedMarrow "
                                              "100 times it"),
        _p("kPS_Tumor1", per_min(0.6), "1/h", "permeability-surface per volume (0.6 /min)"),
        _p("kPS_Tumor2", per_min(0.6), "1/h", "permeability-surface per volume (0.6 /min)"),
        _p("kPS_TumorRest", per_min(0.6), "1/h", "permeability-surface per volume (0.6 /min)"),
        _p("kPS_Prostate", per_min(0.1), "1/h", "permeability-surface per volume (0.1 /min)"),
        _p("kPS_Brain", 0.0, "1/h", "permeability-surface per volume, brain (0: blood-brain "
                                    "barrier)"),
        _p("lambdaRel_Tumor1", per_min(1.5e-4), "1/h", "release rate tumour 1 (1.5e-4 /min)",
           "ligand"),
        _p("lambdaRel_Tumor2", per_min(1.5e-4), "1/h", "release rate tumour 2 (1.5e-4 /min)",
           "ligand"),
        _p("lambdaRel_Kidney", per_min(2.9e-4), "1/h", "release rate kidney (2.9e-4 /min)",
           "ligand"),
        _p("lambdaRel_SG", per_min(4.2e-4), "1/h", "release rate salivary glands (4.2e-4 /min)",
           "ligand"),
    ]
    for organ in ("Liver", "Spleen", "Prostate", "GI"):
        P.append(_p(f"lambdaRel_{organ}", per_min(2.9e-4), "1/h",
                    f"release rate {organ} (published: the kidney's 2.9e-4 /min)", "ligand"))
    for organ in RECEPTOR_ORGANS:
        P.append(_p(f"lambdaIntern_{organ}", per_min(0.001), "1/h",
                    f"internalisation rate {organ} (0.001 /min)", "ligand"))
    fractions = {"Kidney": 0.19, "Liver": 0.065, "Spleen": 0.03, "Muscle": 0.17, "GI": 0.16,
                 "Brain": 0.12, "Skin": 0.05, "Adipose": 0.05, "Bone": 0.05, "RedMarrow": 0.03,
                 "Heart": 0.04}
    for organ, frac in fractions.items():
        P.append(_p(f"fF_{organ}", frac, "1", f"fraction of plasma flow to {organ} ({frac})",
                    upper=1))
    if variant == "corrected":
        pop = {
            "Rden_Kidney": POPULATION_TYPICAL["Rden_Kidney"][0] * nmol_per_l,
            "Rden_SG": POPULATION_TYPICAL["Rden_SG"][0] * nmol_per_l,
            "lambdaRel_Kidney": per_min(POPULATION_TYPICAL["lambdaRel_Kidney"][0]),
            "lambdaRel_SG": per_min(POPULATION_TYPICAL["lambdaRel_SG"][0]),
        }
        P = [p if p.name not in pop else Parameter(
                p.name, pop[p.name], p.unit, p.description, POPULATION_TYPICAL[p.name][2],
                p.kind, p.lower, p.upper) for p in P]
    return P


def build(variant: str = "corrected") -> ModelSpec:
    """The ``psma-pbrpk`` model, ``variant`` 'published' or 'corrected'."""
    from pbpk_models.errors import InputError
    from pbpk_models.library.ligands import PSMA_SECONDARY_LIGANDS

    if variant not in ("published", "corrected"):
        raise InputError(f"psma-pbrpk has variants 'published' and 'corrected', not {variant!r}")
    published = variant == "published"
    S = sym
    relative_rden = {
        "Rden_Prostate": sp.Rational(1, 10) * S("Rden_TumorRest"),
        "Rden_Liver": sp.Rational(5, 100) * S("Rden_Prostate"),
        "Rden_Spleen": sp.Rational(2, 100) * S("Rden_Prostate"),
        "Rden_GI": sp.Rational(6, 100) * S("Rden_Prostate"),
    }
    notes = []
    if published:
        notes.append("published variant: reproduces the SBML export including its five "
                     "departures from physiology")
    return build_template(
        name="psma-pbrpk", variant=variant, published=published,
        parameters=_parameters(variant), extra_derived=relative_rden,
        principal_ligand="psma-617", secondary_ligands=PSMA_SECONDARY_LIGANDS,
        default_radiopharmaceutical="lu177-psma-617", kidney_trapping=False,
        description="Whole-body PSMA radioligand PBPK (Fele-Paranj et al. 2024; Begum et al. "
                    "2018): 20 regions, hot and cold ligand competing for PSMA receptors, "
                    "internalisation, release, renal filtration and reabsorption, decay.",
        references=(
            "Fele-Paranj A, Saboury B, Uribe C, Rahmim A. EJNMMI Radiopharm Chem 2024;9:6. "
            "doi:10.1186/s41181-023-00236-w",
            "Begum NJ, Thieme A, Eberhardt N, et al. J Nucl Med 2018;59:929-933. "
            "doi:10.2967/jnumed.117.203505",
            "Begum NJ, Glatting G, Wester HJ, Eiber M, Beer AJ, Kletting P. Sci Rep "
            "2019;9:20041. doi:10.1038/s41598-019-56603-x",
        ),
        notes=tuple(notes))


def build_template(*, name, variant, published, parameters, extra_derived, principal_ligand,
                   secondary_ligands, default_radiopharmaceutical, kidney_trapping, description,
                   references, notes=(), radiopharmaceutical_ligands=None) -> ModelSpec:
    """The whole-body organ template of the PSMA PBRPK model with a given parameter set.

    ``kidney_trapping``: the reabsorbed kidney pool is trapped in tubular cells and released
    from the body at ``lambdaRel_KidneyTrap`` instead of returning to blood (residualising
    radiometal labels, megalin-mediated reabsorption; see docs/research/kidney_dose.md 3.2).
    """
    S = sym
    hct, bsa, bw = S("hematocrit"), S("bodySurfaceArea"), S("bodyWeight")
    Vp, F, scale = S("V_p"), S("F"), S("bodyWeightScale")

    derived: dict[str, sp.Expr] = {
        # plasma volume 2.8 L * (1 - Hct) * BSA, plasma flow 1.23 V_p per min (published)
        "V_p": u.ML_PER_L * 2.8 * (1 - hct) * bsa,
        "F": u.per_min_to_per_h(1.23) * Vp,
        "GFR": S("TER_Kidney") / 3 * sp.Rational(201, 151),
        "bodyWeightScale": bw / 71,
        "lambdaRel_TumorRest": (S("lambdaRel_Tumor1") + S("lambdaRel_Tumor2")) / 2,
        **extra_derived,
    }
    # body-weight-scaled organ volumes: published L per 71 kg reference
    for organ, litres in {"Prostate": 0.016, "GI": 1.187, "Muscle": 30.078, "Skin": 3.408,
                          "Brain": 1.45, "Lungs": 1.0, "Heart": 0.341, "Adipose": 13.465,
                          "RedMarrow": 1.1}.items():
        derived[f"V_{organ}"] = u.ML_PER_L * litres * scale
    derived["V_Bone"] = u.ML_PER_L * 10.165 * scale - S("V_RedMarrow")
    rest_minus = ("Lungs", "Brain", "Heart", "Bone", "RedMarrow", "Adipose", "Skin", "GI",
                  "Muscle", "Liver", "Kidney", "Spleen", "Prostate", "SG")
    derived["V_Rest"] = u.ML_PER_L * bw - sum(S(f"V_{o}") for o in rest_minus)
    # permeability-surface per volume of organs that share a published value
    for organ in ("GI", "Skin", "Adipose", "Heart", "Bone", "Rest"):
        derived[f"kPS_{organ}"] = S("kPS_Muscle")
    for organ in ("Liver", "Spleen", "Lungs", "SG", "RedMarrow"):
        derived[f"kPS_{organ}"] = 100 * S("kPS_Muscle")
    # flows
    for organ in ("Kidney", "Liver", "Spleen", "Muscle", "GI", "Brain", "Skin", "Adipose", "Bone",
                  "RedMarrow", "Heart"):
        derived[f"F_{organ}"] = S(f"fF_{organ}") * F
    derived["F_SG"] = S("f_SG") * S("V_SG")
    derived["F_Tumor1"] = S("f_Tumor1") * S("V_Tumor1")
    derived["F_Tumor2"] = S("f_Tumor2") * S("V_Tumor2")
    derived["F_TumorRest"] = S("f_Tumor1") * S("V_TumorRest")  # published: f_Tumor1
    derived["F_Prostate"] = S("f_Prostate") * (1 - hct) * S("V_Prostate")
    derived["F_Lungs"] = F
    derived["F_Rest"] = F - sum(S(f"F_{o}") for o in (
        "Kidney", "Liver", "Spleen", "Muscle", "GI", "Brain", "Skin", "Adipose", "Bone",
        "RedMarrow", "Heart", "SG", "Prostate"))
    for organ in RECEPTOR_ORGANS:
        derived[f"R0_{organ}"] = S(f"Rden_{organ}") * S(f"V_{organ}")
    for organ in (*RECEPTOR_ORGANS, *PLAIN_ORGANS):
        if organ != "Kidney":
            derived[f"PS_{organ}"] = S(f"kPS_{organ}") * S(f"V_{organ}")

    # sub-compartment volumes (mL)
    vas: dict[str, sp.Expr] = {}
    intl: dict[str, sp.Expr] = {}
    for t in ("Tumor1", "Tumor2", "TumorRest"):
        vas[t] = sp.Rational(5, 100) * (1 - hct) * S(f"V_{t}")
        intl[t] = sp.Rational(38, 100) * S(f"V_{t}")
    vas["Kidney"] = sp.Rational(55, 1000) * S("V_Kidney")
    intl["Kidney"] = sp.Rational(15, 100) * S("V_Kidney")
    vas["SG"] = sp.Rational(3, 100) * (1 - hct) * S("V_SG")
    intl["SG"] = sp.Rational(23, 100) * S("V_SG")
    vas["Liver"], intl["Liver"] = sp.Rational(85, 1000) * S("V_Liver"), sp.Rational(2, 10) * S("V_Liver")
    vas["Spleen"], intl["Spleen"] = sp.Rational(12, 100) * S("V_Spleen"), sp.Rational(2, 10) * S("V_Spleen")
    vas["Prostate"] = sp.Rational(4, 1000) * (1 - hct) * S("V_Prostate")
    intl["Prostate"] = sp.Rational(25, 100) * S("V_Prostate")
    for organ, (fv, k) in {"GI": ("0.076", "8.8"), "Muscle": ("0.14", "5.9"),
                           "Skin": ("0.03", "8.9"), "Lungs": ("0.105", "5.5"),
                           "Heart": ("0.01", "3.7"), "Adipose": ("0.05", "15.5"),
                           "RedMarrow": ("0.04", "3.7")}.items():
        vas[organ] = sp.Rational(fv) * Vp
        intl[organ] = sp.Rational(k) * vas[organ]
    vas["Brain"] = sp.Rational("0.012") * Vp
    intl["Brain"] = sp.Integer(1000)  # published: BrainInt = 1 L
    vas["Bone"] = sp.Rational("0.07") * Vp - vas["RedMarrow"]
    intl["Bone"] = sp.Rational("8.4") * vas["Bone"]
    vas["Rest"] = Vp - sum(vas[o] for o in rest_minus)
    intl["Rest"] = sp.Rational("4.1") * vas["Rest"]
    V_Art, V_Vein = sp.Rational("0.105") * Vp, sp.Rational("0.225") * Vp
    V_Intera = (S("V_Kidney") - intl["Kidney"] - vas["Kidney"]) * sp.Rational(2, 3)

    comps = [Compartment("Art", "Art", V_Art, "blood"), Compartment("Vein", "Vein", V_Vein, "blood")]
    transfers: list[Transfer] = []
    bindings: list[Binding] = []

    def T(src, dst, rate, species="all", process=""):
        transfers.append(Transfer(src, dst, sp.sympify(rate), species, process))

    organs = ("Lungs", *RECEPTOR_ORGANS, *[o for o in PLAIN_ORGANS if o != "Lungs"])
    for organ in organs:
        Vv, Vi = vas[organ], intl[organ]
        comps.append(Compartment(f"{organ}Vas", organ, Vv, "vascular"))
        interstitial_kind = "tubular" if organ == "Kidney" else "interstitial"
        comps.append(Compartment(f"{organ}Int", organ, Vi, interstitial_kind))
        Fo = S(f"F_{organ}")
        if organ == "Lungs":
            T("Vein", "LungsVas", Fo / V_Vein, process="flow")
            T("LungsVas", "Art", Fo / Vv, process="flow")
        else:
            T("Art", f"{organ}Vas", Fo / V_Art, process="flow")
            if organ in ("GI", "Spleen"):
                T(f"{organ}Vas", "LiverVas", Fo / Vv, process="flow (portal)")
            elif organ == "Liver":
                out_flow = Fo if published else Fo + S("F_GI") + S("F_Spleen")
                T("LiverVas", "Vein", out_flow / Vv, process="flow (hepatic vein)")
            else:
                T(f"{organ}Vas", "Vein", Fo / Vv, process="flow")
        if organ == "Kidney":
            gfr_phi = S("GFR") * S("phi")
            comps.append(Compartment("KidneyIntera", "Kidney", V_Intera, "reabsorbed"))
            T("KidneyVas", "KidneyInt", gfr_phi / Vv, process="glomerular filtration")
            T("KidneyInt", "Urine", gfr_phi * S("f_exc") / Vi, process="excretion")
            T("KidneyInt", "KidneyIntera", gfr_phi * (1 - S("f_exc")) / Vi,
              process="tubular reabsorption")
            if kidney_trapping:
                T("KidneyIntera", "Released", S("lambdaRel_KidneyTrap"),
                  process="release of trapped reabsorbed ligand")
            else:
                ret_vol = sp.Integer(1000) if published else V_Intera
                T("KidneyIntera", "KidneyVas", gfr_phi * (1 - S("f_exc")) / ret_vol,
                  process="return of reabsorbed ligand to blood")
        else:
            PS = S(f"PS_{organ}")
            T(f"{organ}Vas", f"{organ}Int", PS / Vv, process="capillary exchange")
            if organ == "Skin" and published:
                T("SkinInt", "SkinVas", PS / Vv, "labelled", "capillary exchange (published)")
                T("SkinInt", "SkinVas", PS / Vi, "unlabelled", "capillary exchange")
            else:
                T(f"{organ}Int", f"{organ}Vas", PS / Vi, process="capillary exchange")
        if organ in RECEPTOR_ORGANS:
            comps.append(Compartment(f"{organ}Bound", organ, None, "bound"))
            comps.append(Compartment(f"{organ}Intern", organ, None, "internalised"))
            bindings.append(Binding(f"{organ}Int", f"{organ}Bound", S(f"R0_{organ}"), Vi,
                                    S("k_on"), S("k_off"), organ))
            T(f"{organ}Bound", f"{organ}Intern", S(f"lambdaIntern_{organ}"),
              process="internalisation")
            T(f"{organ}Intern", "Released", S(f"lambdaRel_{organ}"), process="release")

    region_volumes = {organ: S(f"V_{organ}") for organ in organs}
    ligand_params = frozenset(
        {"k_on", "k_off", "phi", "f_exc"}
        | {f"lambdaIntern_{o}" for o in RECEPTOR_ORGANS}
        | {f"lambdaRel_{o}" for o in RECEPTOR_ORGANS if o != "TumorRest"}
        | ({"lambdaRel_KidneyTrap"} if kidney_trapping else set()))
    return ModelSpec(
        name=name,
        variant=variant,
        description=description,
        parameters=tuple(parameters),
        derived=derived,
        compartments=tuple(comps),
        transfers=tuple(transfers),
        bindings=tuple(bindings),
        sinks=("Urine", "Released"),
        dosing_compartment="Vein",
        principal_ligand=principal_ligand,
        ligand_parameters=ligand_params,
        ligands=secondary_ligands,
        radiopharmaceutical_ligands=dict(radiopharmaceutical_ligands or {}),
        no_decay=frozenset({"KidneyIntera"}) if published else frozenset(),
        # published lambdaPhys = 7.15e-5 /min for 177Lu (Fele-Paranj et al. 2024 SBML)
        decay_overrides={"Lu-177": u.per_min_to_per_h(7.15e-5)} if published else {},
        region_volumes=region_volumes,
        default_radiopharmaceutical=default_radiopharmaceutical,
        references=tuple(references),
        notes=tuple(notes),
    )
