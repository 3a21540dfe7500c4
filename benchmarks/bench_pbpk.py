"""Benchmark: virtual patients through psma-pbrpk, ours (jit + vmap) against a scipy loop.

1,000 virtual patients (lognormal variation, CV 30%, of every receptor density and release rate
of the corrected psma-pbrpk model), one 7.4 GBq administration of 177Lu-PSMA-617, 60 days, at
the same tolerances (rtol 1e-6, atol 1e-9 nmol) in both:
- ours: `simulate_batch` (jit-compiled, vmapped over patients, in chunks), the exact
  total-ligand form (57 ligand states + 20 TIA states), Kvaerno5;
- ours, Rosenbrock: the same with `SolverSettings(method="rosenbrock")` (Rodas5P, analytic
  Jacobian, block-arrowhead linear solver; pbpk_models/rosenbrock.py), and its dense-LU variant
  on the first chunk;
- scipy: a plain `solve_ivp` loop over the same patients on the model's full hot/cold equations
  (138 states) with a NumPy right-hand side, LSODA without a Jacobian ("plain") and with the
  analytic Jacobian (the strongest scipy baseline).
Accuracy: TIA against scipy Radau at rtol 1e-10 (full equations, analytic Jacobian) on the
first --n-ref patients.
Run: python benchmarks/bench_pbpk.py [--n 1000] [--n-scipy 200] [--chunk 250] [--n-kvaerno N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from scipy.integrate import solve_ivp  # noqa: E402

from pbpk_models.library import build_spec  # noqa: E402
from pbpk_models.model import compile_model  # noqa: E402
from pbpk_models.regimen import Regimen  # noqa: E402
from pbpk_models.simulate import SolverSettings, simulate_batch  # noqa: E402


def population(model, n, seed=0, cv=0.3):
    rng = np.random.default_rng(seed)
    names = [k for k in model.parameter_names
             if k.startswith(("Rden_", "lambdaRel_")) and "[" not in k]
    idx = [model.parameter_names.index(k) for k in names]
    sigma = np.sqrt(np.log(1 + cv ** 2))
    P = np.tile(model.default_params(), (n, 1))
    P[:, idx] *= np.exp(rng.normal(-sigma ** 2 / 2, sigma, (n, len(idx))))
    return P


def rosenbrock_steps(model, regimen, P, times):
    """Attempted Rodas5P steps per patient (the solver's own counter)."""
    import jax.numpy as jnp

    from pbpk_models.rosenbrock import PBPKRosenbrock

    rb = PBPKRosenbrock(model)
    t_adm, hot, cold = regimen.dose_arrays(model)
    y0 = jnp.zeros(model.n_states).at[model.dosing_index].add(float(hot.sum() + cold.sum()))

    def one(p):
        vals, kon_v = model.operator(p)
        return rb.solve(vals, kon_v, t_adm[0], y0, t_adm[0], t_adm[0] + 1440.0,
                        jnp.asarray(times), rtol=1e-6, atol=1e-9)[3]

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(P)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-scipy", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--n-kvaerno", type=int, default=None, help="patients for Kvaerno5 "
                    "(default: all)")
    ap.add_argument("--n-ref", type=int, default=3)
    args = ap.parse_args()
    n_kv = args.n if args.n_kvaerno is None else args.n_kvaerno
    spec = build_spec("psma-pbrpk", "corrected")
    regimen = Regimen.single("lu177-psma-617", 7400.0)
    settings = SolverSettings(rtol=1e-6, atol=1e-9, step_to_outputs=False)
    times = np.array([1.0, 4.0, 24.0, 96.0, 168.0])
    total = compile_model(spec, ("lu177-psma-617",), "total")
    full = compile_model(spec, ("lu177-psma-617",), "full")
    P = population(total, args.n)

    def run_ours(s, n):
        # compile once (first chunk), then time the whole population
        t = time.perf_counter()
        simulate_batch(total, regimen, P[:args.chunk], times, settings=s)["tia_mbq_h"] \
            .block_until_ready()
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        tia, ok = [], []
        for i in range(0, n, args.chunk):
            out = simulate_batch(total, regimen, P[i:min(i + args.chunk, n)], times, settings=s)
            tia.append(np.asarray(out["tia_mbq_h"])[:, 0])
            ok.append(np.asarray(out["ok"]))
        return (time.perf_counter() - t) / n, compile_s, np.concatenate(tia), np.concatenate(ok)

    ros = dataclasses.replace(settings, method="rosenbrock")
    ours = {"rosenbrock (block)": run_ours(ros, args.n),
            "rosenbrock (dense LU)": run_ours(dataclasses.replace(ros, linear_solver="dense"),
                                              min(args.chunk, args.n))}
    ours["kvaerno5"] = run_ours(settings, n_kv)
    steps = rosenbrock_steps(total, regimen, P[:args.chunk], times)
    per_patient, _, tia, ok = ours["rosenbrock (block)"]

    # scipy on the first n_scipy patients
    _, hot, cold = regimen.dose_arrays(full)
    y0 = np.zeros(full.n_states)
    y0[full.dosing_index] = np.concatenate([hot[0], cold[0]])
    res = {}
    ref = {}
    for i in range(min(args.n_ref, args.n)):
        f, jac = full.vector_field_numpy(P[i])
        sol = solve_ivp(f, (0, 1440.0), y0, method="Radau", rtol=1e-10, atol=1e-14, jac=jac)
        ref[i] = sol.y[full.acc_offset:, -1] * full.mbq_per_nmol[0]
    for label, use_jac in (("LSODA", False), ("LSODA+jac", True)):
        t = time.perf_counter()
        errs = []
        for i in range(args.n_scipy):
            f, jac = full.vector_field_numpy(P[i])
            sol = solve_ivp(f, (0, 1440.0), y0, method="LSODA", rtol=1e-6, atol=1e-9,
                            jac=jac if use_jac else None)
            acc = sol.y[full.acc_offset:, -1] * full.mbq_per_nmol[0]
            errs.append(np.max(np.abs(acc - tia[i]) / np.maximum(acc, 1e-3)))
        res[label] = ((time.perf_counter() - t) / args.n_scipy, max(errs))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"CPU only; jax {jax.__version__}")
    print(f"patients {args.n} (scipy loop on {args.n_scipy}, Kvaerno5 on {n_kv}, dense LU on "
          f"{min(args.chunk, args.n)}; Radau reference on {len(ref)})")
    for label, (s, comp, tia_l, ok_l) in ours.items():
        err = max(np.max(np.abs(tia_l[i] - r) / np.maximum(r, 1e-3)) for i, r in ref.items())
        print(f"ours {label} (jit+vmap, chunks of {args.chunk}): {s * 1e3:.2f} ms/patient "
              f"(first compile {comp:.1f} s); all ok: {bool(ok_l.all())}; max relative TIA "
              f"error vs Radau 1e-10: {err:.1e}")
    print(f"rosenbrock steps per patient (first chunk): mean {steps.mean():.0f}, max "
          f"{steps.max()}")
    for label, (s, err) in res.items():
        print(f"scipy solve_ivp {label}: {s * 1e3:.1f} ms/patient; ratio scipy/ours: "
              + ", ".join(f"{k} {s / v[0]:.2f}" for k, v in ours.items())
              + f"; max relative TIA difference to rosenbrock {err:.1e}")


if __name__ == "__main__":
    main()
