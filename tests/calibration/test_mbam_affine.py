"""MBAM affine engine (calibration.mbam.affine) on the textbook cases, the affine limit algebra,
the full parameter set, therapy-only preserved TIA, and the shipped reduced model
(calibration.mbam.library) against the full model solved independently (Kvaerno5)."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from calibration.mbam.affine import (LIMIT_FACTOR, FullGeometry, apply_affine, host_geodesic,
                                     limit_from_velocity)
from calibration.mbam.geometry import Limit
from tests.calibration.test_mbam import michaelis_menten, two_exp


def _geom(r):
    return FullGeometry(types.SimpleNamespace(r=r))


def test_host_geodesic_two_exponentials_reach_the_fold():
    """Transtrum & Qiu 2014's textbook case through the affine engine (A = I, b = 0)."""
    g = _geom(two_exp)
    geo = host_geodesic(g, np.eye(2), np.zeros(2), np.log([1.0, 3.0]), max_steps=200,
                        tol=1e-3, h0=0.05, sigma_rel=1e-4)
    assert geo["reason"] in ("singular", "speed"), geo["reason"]
    u = geo["u"][-1]
    assert abs(u[0] - u[1]) < 0.05
    lim, _ = limit_from_velocity(geo["v"], ["k1", "k2"], us=geo["u"], reason=geo["reason"])
    assert lim.kind == "equal" and set(lim.names) == {"k1", "k2"}
    # constant data-space speed |J v| along the geodesic (its defining property), against J
    # from central finite differences (independent of forward mode)
    def J_fd(t, h=1e-6):
        return np.stack([(np.asarray(two_exp(jnp.asarray(t + h * e)))
                          - np.asarray(two_exp(jnp.asarray(t - h * e)))) / (2 * h)
                         for e in np.eye(2)], axis=1)
    speeds = [np.linalg.norm(J_fd(t) @ v) for t, v in zip(geo["u"][:6], geo["v"][:6])]
    np.testing.assert_allclose(speeds, speeds[0], rtol=3e-2)


@pytest.mark.slow
def test_affine_michaelis_menten_limit_is_first_order_elimination():
    """V_max, K_M -> inf at fixed V_max/K_M, applied through theta = A u + b, predicts first-order
    elimination exp(-(V_max/K_M) t) (analytic) within 1%."""
    g = _geom(michaelis_menten)
    u0 = np.log([10.0, 20.0])
    geo = host_geodesic(g, np.eye(2), np.zeros(2), u0, max_steps=40, tol=1e-2)
    lim, _ = limit_from_velocity(geo["v"], ["Vmax", "KM"])
    assert lim.kind == "ratio" and set(lim.names) == {"Vmax", "KM"}
    names, A, b, u = apply_affine(lim, ["Vmax", "KM"], np.eye(2), np.zeros(2), geo["u"][-1])
    assert len(names) == 1 and "_over_" in names[0]
    k = np.exp(u[0]) if names[0] == "Vmax_over_KM" else 1 / np.exp(u[0])
    theta = A @ u + b
    got = np.asarray(michaelis_menten(jnp.asarray(theta)))
    t = np.array([1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(got, np.exp(-k * t) / 0.01, rtol=1e-2)


def test_apply_affine_algebra():
    """Each limit is the affine map its definition says (log-parameters)."""
    L = np.log(LIMIT_FACTOR)
    names = ["a", "b", "c"]
    u = np.array([0.3, -1.2, 2.0])
    A, b = np.eye(3), np.zeros(3)
    n1, A1, b1, u1 = apply_affine(Limit("zero", ("b",), (-1,)), names, A, b, u)
    assert n1 == ["a", "c"]
    np.testing.assert_allclose(A1 @ u1 + b1, [0.3, -1.2 - L, 2.0])
    n2, A2, b2, u2 = apply_affine(Limit("ratio", ("a", "c"), (1, 1)), names, A, b, u)
    th = A2 @ u2 + b2
    assert n2 == ["a_over_c", "b"]
    np.testing.assert_allclose([th[0] - th[2], th[2], th[1]], [0.3 - 2.0, 2.0 + L, -1.2])
    n3, A3, b3, u3 = apply_affine(Limit("product", ("a", "b"), (1, -1)), names, A, b, u)
    th = A3 @ u3 + b3
    np.testing.assert_allclose([th[0] + th[1], th[1]], [0.3 - 1.2, -1.2 - L])
    n4, A4, b4, u4 = apply_affine(Limit("equal", ("a", "b"), (0, 0)), names, A, b, u)
    th = A4 @ u4 + b4
    assert n4 == ["a_eq_b", "c"] and th[0] == th[1]
    # a further limit on a combination composes (the chain stays affine)
    n5, A5, b5, u5 = apply_affine(Limit("infinity", ("a_over_c",), (1,)), n2, A2, b2, u2)
    th5 = A5 @ u5 + b5
    assert n5 == ["b"]
    np.testing.assert_allclose(th5[0] - th5[2], 0.3 - 2.0 + L)


def test_full_parameter_set_and_therapy_only_tia():
    """'full' = every free parameter but physical constants and zeros; the preserved TIA is the
    therapy radiopharmaceutical's only; ligand copies follow their principal parameter."""
    from calibration.fit import model_spec
    from calibration.mbam.predictions import Protocol, full_parameter_set

    spec = model_spec("psma-pbrpk")
    names = full_parameter_set(spec)
    assert "k_on" in names and "kPS_Tumor1" in names and "fF_Kidney" in names
    assert not {"V_Kidney", "bodyWeight", "hematocrit", "kPS_Brain"} & set(names)
    assert all(spec.parameter(n).value > 0 for n in names)
    pr = Protocol.from_dict({
        "regimen": [{"time_h": 0, "radiopharmaceutical": "ga68-psma-11", "activity_mbq": 150,
                     "ligand_nmol": 3.0},
                    {"time_h": 168, "radiopharmaceutical": "lu177-psma-617",
                     "activity_mbq": 7400, "ligand_nmol": 57.09}],
        "observations": [{"region": "Kidney", "time_h": 1, "modality": "PET",
                          "relative_sigma": 0.1}],
        "preserve": ["Kidney"], "parameters": "full"})
    assert pr.therapy == ("lu177-psma-617",)
    assert pr.resolve_parameters(spec) == names


@pytest.mark.slow
def test_ligand_copies_follow_their_principal_parameter():
    """k_off varied by MBAM moves k_off[psma-11] by the same factor (checked against simulating
    the PET ligand with the copy set by hand)."""
    from calibration.mbam.predictions import Protocol, prediction_map
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import SolverSettings, simulate
    from tests.calibration.mbam_models import tiny_spec

    import dataclasses

    spec = tiny_spec()
    k_off11 = dataclasses.replace(spec.parameter("k_off"), value=0.5)
    spec = spec.replace(ligands={"psma-11": {"k_off": k_off11}})
    pr = Protocol.from_dict({
        "regimen": [{"time_h": 0, "radiopharmaceutical": "ga68-psma-11", "activity_mbq": 150,
                     "ligand_nmol": 3.0}],
        "observations": [{"region": "Org", "time_h": 1.0, "modality": "PET",
                          "relative_sigma": 0.1}], "curve_times_h": []})
    pm = prediction_map(spec, pr, ("k_off",))
    got = float(pm.predict(jnp.asarray(pm.theta0 + np.log(3.0)))[0])
    reg = Regimen.single("ga68-psma-11", 150.0, 3.0)
    ref = simulate(spec, reg, {"k_off[psma-11]": 1.5}, times_h=np.array([1.0]),
                   settings=SolverSettings(rtol=1e-10, atol=1e-12))
    np.testing.assert_allclose(got, ref.activity("Org")[0], rtol=1e-6)


# -- the shipped reduced model -----------------------------------------------------------------

def _shipped():
    from calibration.mbam.library import load_shipped, shipped_names

    if "psma-pbrpk_pet1h_spect24h" not in shipped_names():
        pytest.fail("pbpk_models/library/reduced/psma-pbrpk_pet1h_spect24h.json is not shipped")
    return load_shipped("psma-pbrpk_pet1h_spect24h")


def test_shipped_reduced_model_loads_without_recomputation():
    red = _shipped()
    d = red.doc
    assert d["n_parameters"] < d["n_parameters_full"] == len(red.full_parameters)
    assert red.steps and all(s["meaning"] and s["worst_error"] <= d["tolerance"]
                             for s in red.steps)
    for key in ("command", "date", "protocol_file", "tolerance"):
        assert key in red.produced
    assert [m["parameters"] for m in red.hierarchy][-1] == d["mbam_parameters"]
    assert set(red.personal) <= set(red.spec.parameter_names)
    assert red.protocol.therapy == ("lu177-psma-617",)
    assert set(red.preserved_tia()) == {f"TIA {r} (lu177-psma-617)"
                                        for r in red.protocol.preserve}


@pytest.mark.slow
def test_shipped_reduced_model_reproduces_the_full_models_tia():
    """At the population-typical parameters (the library defaults the reduction started from),
    the shipped reduced model (Rosenbrock) reproduces the preserved therapy TIA of the full
    model solved independently with diffrax Kvaerno5 (rtol 1e-8) within the tolerance."""
    from pbpk_models.library import build_spec
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import SolverSettings, simulate

    red = _shipped()
    pr = red.protocol
    a = [x for x in pr.regimen.administrations if x.radiopharmaceutical == "lu177-psma-617"][0]
    reg = Regimen.single(a.radiopharmaceutical, a.activity_mbq, a.ligand_nmol)
    full = simulate(build_spec("psma-pbrpk", red.doc["base_variant"]), reg,
                    times_h=np.array([1.0, 24.0]), days=pr.tia_days,
                    settings=SolverSettings(rtol=1e-8, atol=1e-10, method="kvaerno5"))
    reduced = simulate(red.spec, reg, times_h=np.array([1.0, 24.0]), days=pr.tia_days,
                       settings=SolverSettings(rtol=1e-8, atol=1e-10, method="rosenbrock"))
    ft, rt = full.tia(), reduced.tia()
    for region in pr.preserve:
        assert abs(rt[region] / ft[region] - 1) <= red.doc["tolerance"], region

