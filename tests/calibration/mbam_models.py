"""Tiny ModelSpecs for the MBAM tests (values assumed: round numbers of the right order for a
radioligand, not literature; they only exercise the reduction)."""

import sympy as sp

from pbpk_models.spec import Binding, Compartment, ModelSpec, Parameter, Transfer

S = sp.Symbol


def tiny_spec(ps: float = 5.0, rden: float = 0.05, rel: float = 0.01) -> ModelSpec:
    """Blood -> organ (vascular <-> interstitial at PS, binding, internalisation, release);
    renal elimination from blood."""
    P = lambda n, v, unit, kind="physiological": Parameter(n, v, unit, n, "assumed (test)", kind)
    params = (
        P("V_Blood", 5000.0, "mL"), P("Q_Org", 6000.0, "mL/h"), P("V_OrgVas", 30.0, "mL"),
        P("V_OrgInt", 100.0, "mL"), P("PS_Org", ps * 100.0, "mL/h"), P("CL", 600.0, "mL/h"),
        P("Rden_Org", rden, "nmol/mL"), P("k_on", 100.0, "mL/nmol/h", "ligand"),
        P("k_off", 1.0, "1/h", "ligand"), P("lambdaInt", 0.1, "1/h", "ligand"),
        P("lambdaRel", rel, "1/h", "ligand"))
    comps = (Compartment("Blood", "Blood", S("V_Blood"), "blood"),
             Compartment("OrgVas", "Org", S("V_OrgVas"), "vascular"),
             Compartment("OrgInt", "Org", S("V_OrgInt"), "interstitial"),
             Compartment("OrgBound", "Org", None, "bound"),
             Compartment("OrgIntern", "Org", None, "internalised"))
    T = Transfer
    transfers = (
        T("Blood", "OrgVas", S("Q_Org") / S("V_Blood"), process="flow"),
        T("OrgVas", "Blood", S("Q_Org") / S("V_OrgVas"), process="flow"),
        T("OrgVas", "OrgInt", S("PS_Org") / S("V_OrgVas"), process="exchange"),
        T("OrgInt", "OrgVas", S("PS_Org") / S("V_OrgInt"), process="exchange"),
        T("Blood", "Urine", S("CL") / S("V_Blood"), process="excretion"),
        T("OrgBound", "OrgIntern", S("lambdaInt"), process="internalisation"),
        T("OrgIntern", "Released", S("lambdaRel"), process="release"))
    bindings = (Binding("OrgInt", "OrgBound", S("R0_Org"), S("V_OrgInt"), S("k_on"),
                        S("k_off"), "Org"),)
    return ModelSpec(
        name="tiny", variant="test", description="test model", parameters=params,
        derived={"R0_Org": S("Rden_Org") * S("V_OrgInt")}, compartments=comps,
        transfers=transfers, bindings=bindings, sinks=("Urine", "Released"),
        dosing_compartment="Blood", principal_ligand="psma-617",
        ligand_parameters=frozenset({"k_on", "k_off", "lambdaInt", "lambdaRel"}),
        region_volumes={"Org": S("V_OrgVas") + S("V_OrgInt")},
        default_radiopharmaceutical="lu177-psma-617")


def tiny_protocol_dict(preserve=("Org",)):
    return {"regimen": [{"time_h": 0, "radiopharmaceutical": "lu177-psma-617",
                         "activity_mbq": 7400, "ligand_nmol": 50.0}],
            "observations": [{"region": r, "time_h": t, "modality": "SPECT",
                              "relative_sigma": 0.1}
                             for r in ("Blood", "Org") for t in (1.0, 24.0, 96.0)],
            "preserve": list(preserve)}
