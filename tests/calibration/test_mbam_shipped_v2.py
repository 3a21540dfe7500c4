"""MBAM continued to state-removing limits: the symbolic fast-exchange limit with a factor of
unknown sign to sympy (haematocrit), the organ-wise split of a shared parameter (untie), and the
shipped v2 reduced psma-pbrpk (fewer ODE states; therapy TIA against the full model solved
independently with scipy Radau)."""

import dataclasses

import numpy as np
import pytest
import sympy as sp

from calibration.mbam.geometry import Limit
from calibration.mbam.limits import apply_limit, untie
from tests.calibration.mbam_models import tiny_spec

V2 = "psma-pbrpk_pet1h_spect24h_v2"


def _with_haematocrit(spec):
    """tiny_spec whose vascular pool is plasma: V_OrgVas (1 - hct), as in psma-pbrpk."""
    from pbpk_models.spec import Parameter

    h = sp.Symbol("hct")
    vas = sp.Symbol("V_OrgVas") * (1 - h)
    comps = tuple(dataclasses.replace(c, volume=vas) if c.name == "OrgVas" else c
                  for c in spec.compartments)
    trs = tuple(dataclasses.replace(t, rate=t.rate.xreplace({sp.Symbol("V_OrgVas"): vas}))
                if t.source == "OrgVas" else t for t in spec.transfers)
    return spec.replace(compartments=comps, transfers=trs, parameters=spec.parameters + (
        Parameter("hct", 0.4, "1", "haematocrit", "assumed (test)"),))


def test_fast_exchange_with_a_factor_of_unknown_sign_merges_the_pools():
    """PS -> inf where the rate is PS / (V (1 - hct)): sympy returns oo*sign(...) for it; the
    limit must still be the two-way quasi-equilibrium (one pool, binding kept on it with the
    free volume V_Int / share_Int), not an emptied interstitium (the bug this fixes)."""
    spec = _with_haematocrit(tiny_spec())
    vals = spec.default_values()
    red = apply_limit(spec, Limit("infinity", ("PS_Org",), (1,)), vals,
                      {**vals, "PS_Org": 1e7})
    assert red.method == "symbolic"
    names = [c.name for c in red.spec.compartments]
    assert "OrgVas+OrgInt" in names and "OrgBound" in names, names
    (b,) = red.spec.bindings
    assert b.free == "OrgVas+OrgInt"
    # free concentration = amount / (V_Vas (1 - hct) + V_Int): exact for equal concentrations
    v = {sp.Symbol(k): x for k, x in vals.items()}
    expected = vals["V_OrgVas"] * (1 - vals["hct"]) + vals["V_OrgInt"]
    assert float(b.volume.xreplace(v)) == pytest.approx(expected, rel=1e-12)


def test_untie_keeps_the_model_and_splits_the_parameter():
    """untie: same vector field at the shared value (compiled models compared at a random
    state), and the organ's copy then acts on that organ only."""
    from pbpk_models.model import compile_model

    spec = tiny_spec()
    tied = untie(spec, "PS_Org", ["Org"])
    assert "PS_Org_in_Org" in tied.parameter_names
    rps = ("lu177-psma-617",)
    m0, m1 = compile_model(spec, rps), compile_model(tied, rps)
    y = np.random.default_rng(0).uniform(0.1, 1.0, m0.n_states)
    p0 = m0.params_from({})
    p1 = m1.params_from({})
    f0, _ = m0.vector_field_numpy(p0)
    f1, _ = m1.vector_field_numpy(p1)
    np.testing.assert_allclose(f1(0.0, y), f0(0.0, y), rtol=1e-13)
    f2, _ = m1.vector_field_numpy(m1.params_from({"PS_Org_in_Org": 2 * p0[
        m0.parameter_names.index("PS_Org")]}))
    assert not np.allclose(f2(0.0, y), f0(0.0, y))


def _v2():
    from calibration.mbam.library import load_shipped, shipped_names

    if V2 not in shipped_names():
        pytest.fail(f"pbpk_models/library/reduced/{V2}.json is not shipped")
    return load_shipped(V2)


@pytest.mark.slow
def test_v2_has_fewer_states_and_reproduces_the_full_models_therapy_tia():
    """The v2 reduced model (fewer ODE states than the full model and than v1) reproduces the
    full model's preserved therapy TIA (Lu-177-PSMA-617 7.4 GBq, 60 d, population patient)
    within 2 %, both models solved independently of the project's solvers by scipy Radau
    (rtol 1e-10, analytic Jacobian)."""
    from calibration.mbam.library import load_shipped
    from pbpk_models.library import build_spec
    from pbpk_models.model import compile_model
    from pbpk_models.regimen import Regimen
    from tests.pbpk_models.conftest import scipy_radau_reference

    red = _v2()
    v1 = load_shipped("psma-pbrpk_pet1h_spect24h")
    full = build_spec("psma-pbrpk", red.doc["base_variant"])
    reg = Regimen.single("lu177-psma-617", 7400.0, 57.09)
    rps = reg.radiopharmaceuticals
    mf, mr, m1 = (compile_model(s, rps) for s in (full, red.spec, v1.spec))
    assert mr.n_states < m1.n_states < mf.n_states
    t_end = red.protocol.tia_days * 24.0
    tia = {}
    for label, m in (("full", mf), ("reduced", mr)):
        _, y_end = scipy_radau_reference(m, m.params_from({}), reg, [1.0], t_end)
        acc = y_end[m.acc_offset:m.acc_offset + len(m.regions)] * m.mbq_per_nmol[0]
        tia[label] = dict(zip(m.regions, acc))
    for region in red.protocol.preserve:
        assert abs(tia["reduced"][region] / tia["full"][region] - 1) < 0.02, region
