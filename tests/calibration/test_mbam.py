"""MBAM: geometry against finite differences, textbook boundaries, symbolic limits against
large-value simulations, REDUCED.json round trip, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calibration.mbam import Limit, Protocol, apply_limit, avv, geodesic, identify_limit, jacobian
from calibration.mbam.serialize import spec_from_dict, spec_to_dict
from pbpk_models.errors import InputError
from pbpk_models.regimen import Regimen
from pbpk_models.simulate import SolverSettings, simulate
from tests.calibration.mbam_models import tiny_protocol_dict, tiny_spec

T_EXP = jnp.array([0.5, 1.0, 2.0, 4.0])


def two_exp(theta):
    """y = exp(-k1 t) + exp(-k2 t), sigma = 1 (Transtrum & Qiu 2014's textbook case)."""
    k = jnp.exp(theta)
    return jnp.exp(-k[0] * T_EXP) + jnp.exp(-k[1] * T_EXP)


T_MM = jnp.array([1.0, 2.0, 4.0, 8.0])


def michaelis_menten(theta, n_sub=64):
    """C' = -Vmax C / (K_M + C), C(0) = 1 << K_M, observed at T_MM with sigma 0.01 (classical
    RK4 on a fixed grid: smooth in theta, cheap to compile)."""
    vmax, km = jnp.exp(theta)

    def f(c):
        return -vmax * c / (km + c)

    def step(c, _):
        h = 1.0 / n_sub
        k1 = f(c)
        k2 = f(c + 0.5 * h * k1)
        k3 = f(c + 0.5 * h * k2)
        k4 = f(c + h * k3)
        c = c + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return c, c

    _, cs = jax.lax.scan(step, jnp.asarray(1.0, theta.dtype), None, length=8 * n_sub)
    idx = (T_MM * n_sub).astype(int) - 1
    return cs[idx] / 0.01


def test_jacobian_and_avv_match_finite_differences():
    th = jnp.array([np.log(0.7), np.log(2.5)])
    v = jnp.array([0.6, -0.8])
    J = np.asarray(jacobian(two_exp, th))
    h = 1e-6
    J_fd = np.stack([(two_exp(th + h * e) - two_exp(th - h * e)) / (2 * h)
                     for e in np.eye(2)], axis=1)
    np.testing.assert_allclose(J, J_fd, rtol=1e-7, atol=1e-9)
    A = np.asarray(avv(two_exp, th, v))
    h = 1e-4
    A_fd = (two_exp(th + h * v) - 2 * two_exp(th) + two_exp(th - h * v)) / h ** 2
    np.testing.assert_allclose(A, A_fd, rtol=1e-5, atol=1e-7)
    # and through an ODE solve (the Michaelis-Menten model)
    th = jnp.array([np.log(10.0), np.log(20.0)])
    A = np.asarray(avv(michaelis_menten, th, v))
    A_fd = (michaelis_menten(th + h * v) - 2 * michaelis_menten(th)
            + michaelis_menten(th - h * v)) / h ** 2
    np.testing.assert_allclose(A, A_fd, rtol=1e-4, atol=1e-6)


def test_two_exponentials_reach_the_fold_where_rates_merge():
    geo = geodesic(two_exp, np.log([1.0, 3.0]))
    assert geo.reason in ("singular", "speed")
    th = geo.theta[-1]
    assert abs(th[0] - th[1]) < 0.05          # k1 = k2: the boundary (fold) of the manifold
    assert geo.sigma_min[-1] < 0.05 * geo.sigma_min[0]    # J loses rank
    lim = identify_limit(geo, ["k1", "k2"])
    assert lim is not None and lim.kind == "equal" and set(lim.names) == {"k1", "k2"}
    # the geodesic has constant data-space speed |J v| (its defining property)
    speeds = [np.linalg.norm(np.asarray(jacobian(two_exp, jnp.asarray(t))) @ v)
              for t, v in zip(geo.theta[:5], geo.v[:5])]
    np.testing.assert_allclose(speeds, speeds[0], rtol=2e-2)


@pytest.mark.slow
def test_michaelis_menten_reduces_to_first_order():
    geo = geodesic(michaelis_menten, np.log([10.0, 20.0]))
    lim = identify_limit(geo, ["Vmax", "KM"])
    assert lim is not None and lim.kind == "ratio" and set(lim.names) == {"Vmax", "KM"}
    assert lim.directions == (1, 1)           # both -> infinity
    vmax, km = np.exp(geo.theta[-1])
    assert vmax > 100 and km > 100
    # the finite combination is the first-order rate: C(t) = exp(-(Vmax/K_M) t)
    k = vmax / km
    assert abs(k - 0.5) < 0.1                 # the start had Vmax/K_M = 0.5
    np.testing.assert_allclose(np.asarray(michaelis_menten(jnp.asarray(geo.theta[-1]))),
                               np.exp(-k * np.asarray(T_MM)) / 0.01, rtol=2e-2)


REG = Regimen.single("lu177-psma-617", 7400.0, 50.0)
TS = np.array([1.0, 24.0, 96.0])
FAST = SolverSettings(rtol=1e-9, atol=1e-12, method="rosenbrock")


@pytest.mark.slow
@pytest.mark.parametrize("limit, big, effect", [
    (Limit("infinity", ("PS_Org",), (1,)), {"PS_Org": 1e7}, "quasi-equilibrium"),
    (Limit("zero", ("lambdaRel",), (-1,)), {"lambdaRel": 1e-12}, "release"),
    (Limit("zero", ("Rden_Org",), (-1,)), {"Rden_Org": 1e-12}, "non-specific"),
    (Limit("infinity", ("Rden_Org",), (1,)), {"Rden_Org": 1e4}, "linear"),
    (Limit("infinity", ("lambdaRel",), (1,)), {"lambdaRel": 1e6}, "quasi-steady state"),
])
def test_symbolic_limits_match_the_full_model_near_the_limit(limit, big, effect):
    spec = tiny_spec()
    red = apply_limit(spec, limit, spec.default_values(), {**spec.default_values(), **big})
    assert red.method == "symbolic"
    assert any(effect in e for e in red.effects)
    for n in limit.names:
        assert n not in red.spec.parameter_names
    a = simulate(red.spec, REG, times_h=TS, settings=FAST)
    b = simulate(spec.with_values(big), REG, times_h=TS, settings=FAST)
    # the large-value model is only near the limit: agreement to 1e-3
    np.testing.assert_allclose(a.activity_mbq, b.activity_mbq, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(a.tia_mbq_h, b.tia_mbq_h, rtol=1e-3)
    # the reduced model is smaller when a state disappears
    if limit.kind == "infinity":
        assert len(red.spec.compartments) < len(spec.compartments)


def test_equilibrium_binding_falls_back_to_a_documented_numerical_limit():
    spec = tiny_spec()
    vals = spec.default_values()
    red = apply_limit(spec, Limit("ratio", ("k_on", "k_off"), (1, 1)), vals,
                      {**vals, "k_on": 1e5, "k_off": 1e3})
    assert red.method == "numerical" and "algebraic" in red.effects[0]
    assert red.new_parameter[0] == "k_on_over_k_off"
    np.testing.assert_allclose(red.new_parameter[1], 100.0)
    assert "k_on" not in red.spec.parameter_names


def test_spec_json_round_trip_simulates_identically():
    spec = tiny_spec()
    red = apply_limit(spec, Limit("infinity", ("PS_Org",), (1,)), spec.default_values(),
                      spec.default_values()).spec
    back = spec_from_dict(json.loads(json.dumps(spec_to_dict(red))))
    a = simulate(red, REG, times_h=TS, settings=FAST)
    b = simulate(back, REG, times_h=TS, settings=FAST)
    np.testing.assert_array_equal(a.activity_mbq, b.activity_mbq)


def test_bad_protocols_are_refused_with_clear_messages():
    d = tiny_protocol_dict(preserve=())
    d["observations"] = []
    with pytest.raises(InputError, match="observes nothing"):
        Protocol.from_dict(d)
    d = tiny_protocol_dict()
    d["observations"][0]["relative_sigma"] = 0
    with pytest.raises(InputError, match="relative_sigma"):
        Protocol.from_dict(d)
    from calibration.mbam import prediction_map, reduce_model

    pr = Protocol.from_dict(tiny_protocol_dict())
    with pytest.raises(InputError, match="no parameters to reduce"):
        reduce_model(tiny_spec(), pr, ())
    d = tiny_protocol_dict()
    d["observations"][0]["region"] = "Liver"
    with pytest.raises(InputError, match="unknown region"):
        prediction_map(tiny_spec(), Protocol.from_dict(d), ("CL",))


def test_protocol_region_group_observes_the_sum_of_its_members():
    """A protocol observation of a region group ("Body" = Blood + Org) predicts the sum of the
    members' activities: checked against scipy's Radau on the model's own equations; the group
    survives the JSON round trip; a group of unknown regions is refused."""
    from scipy.integrate import solve_ivp

    from calibration.mbam import prediction_map
    from pbpk_models.model import compile_model

    d = tiny_protocol_dict(preserve=())
    d["observations"] = [{"region": "Body", "time_h": t, "modality": "SPECT",
                          "relative_sigma": 0.1} for t in (1.0, 24.0)]
    d["region_groups"] = {"Body": ["Blood", "Org"]}
    pr = Protocol.from_dict(d)
    assert Protocol.from_dict(json.loads(json.dumps(pr.to_dict()))).region_groups == \
        pr.region_groups
    spec = tiny_spec()
    pm = prediction_map(spec, pr, ("CL",))
    got = np.asarray(pm.predict(jnp.asarray(pm.theta0)))[:2]
    full = compile_model(spec, ("lu177-psma-617",), "full")
    p = full.params_from({})
    f, jac = full.vector_field_numpy(p)
    y0 = np.zeros(full.n_states)
    at, hot, cold = Regimen.single("lu177-psma-617", 7400.0, 50.0).dose_arrays(full)
    y0[full.dosing_index] += np.concatenate([hot[0], cold[0]])
    sol = solve_ivp(f, (0.0, 24.0), y0, method="Radau", jac=jac, t_eval=[1.0, 24.0],
                    rtol=1e-10, atol=1e-14)
    amt = np.asarray(full.region_amounts(sol.y.T))  # (times, radiopharmaceuticals, regions)
    want = amt[:, 0, :].sum(axis=1) * np.asarray(full.mbq_per_nmol)[0]
    assert set(full.regions) == {"Blood", "Org"}
    np.testing.assert_allclose(got, want, rtol=1e-6)
    d["region_groups"] = {"Body": ["Blood", "Liver"]}
    with pytest.raises(InputError, match="unknown model region"):
        prediction_map(spec, Protocol.from_dict(d), ("CL",))
    d["region_groups"] = {"Body": []}
    with pytest.raises(InputError, match="region_groups"):
        Protocol.from_dict(d)


@pytest.mark.slow
def test_one_reduction_round_on_a_small_model_and_reduced_json_is_a_model(tmp_path):
    """The loop end to end: geodesic -> limit -> reduction -> re-fit -> REDUCED.json, read back
    by calibration.fit.model_spec and simulated."""
    from calibration.fit import model_spec
    from calibration.mbam import reduce_model
    from calibration.mbam.io import dumps_hierarchy, read_reduced

    pr = Protocol.from_dict(tiny_protocol_dict())
    h = reduce_model(tiny_spec(), pr, ("k_on", "k_off", "CL"), tolerance=0.02, max_rounds=1,
                     geodesic_options={"max_steps": 60})
    step = h.steps[0]
    # binding is fast at these values: k_on, k_off -> inf at fixed K_D (equilibrium binding)
    assert step["kind"] == "ratio" and set(step["parameters"]) == {"k_on", "k_off"}
    if step.get("rejected"):  # the re-fit could not bring it within the tolerance: kept full
        assert h.status.startswith("tolerance") and step["worst_error"] > 0.02
        assert h.n_parameters == 3
    else:
        assert h.status == "max rounds", h.status
        assert step["worst_error"] < 0.02 and h.n_parameters == 2
    path = tmp_path / "REDUCED.json"
    path.write_text(dumps_hierarchy(h))
    doc = read_reduced(path)
    assert doc["n_parameters"] == h.n_parameters and doc["n_parameters_full"] == 3
    assert (doc["limits"] or doc["rejected"])[0]["meaning"]
    spec = model_spec(str(path))
    a = simulate(spec, REG, times_h=TS, settings=FAST)
    ref = np.asarray(h.reference[:6])  # Blood, Org at 1, 24, 96 h (protocol order)
    got = np.concatenate([a.activity("Blood"), a.activity("Org")])
    np.testing.assert_allclose(got, ref, rtol=0.02)
