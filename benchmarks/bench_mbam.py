"""Benchmark: simulation speed of the MBAM-reduced psma-pbrpk against the full model (patients per
second, vmapped ``simulate_batch`` with the population Rosenbrock settings, compile excluded),
and the wall time of the complete reduction (read from the REDUCED.json header, or measured
with --reduce).

    python benchmarks/bench_mbam.py [--n 200] [--reduced REDUCED.json]
    python benchmarks/bench_mbam.py --reduce --max-time 1500      # a new reduction, timed

The population: the 7 personal parameters of psma-pbrpk varied by the same lognormal factors
(CV ~0.3, assumed, for timing only) around each model's values (the reduced model's kept
personal parameters). Timings on a shared 2-core CPU vary; compare the ratio.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

HERE = Path(__file__).parent
PROTOCOL = HERE / "protocol_pet1h_spect24h.json"
SHIPPED = HERE.parent / "pbpk_models" / "library" / "reduced" / "psma-pbrpk_pet1h_spect24h.json"


def patients_per_s(spec, regimen, factors, names, n, repeats=2):
    from pbpk_models.model import compile_model
    from pbpk_models.simulate import simulate_batch

    model = compile_model(spec, regimen.radiopharmaceuticals)
    base = model.params_from({})
    P = np.repeat(base[None], n, axis=0)
    for j, k in enumerate(names):
        if k in model.parameter_names:
            i = model.parameter_names.index(k)
            P[:, i] = base[i] * factors[:, j]
    ts = np.array([1.0, 24.0, 96.0])
    out = simulate_batch(spec, regimen, P[:2], ts)  # compile
    jax.block_until_ready(out["tia_mbq_h"])
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = simulate_batch(spec, regimen, P, ts)
        jax.block_until_ready(out["tia_mbq_h"])
        best = min(best, time.perf_counter() - t)
    return n / best, int(np.asarray(out["ok"]).sum()), np.asarray(out["tia_mbq_h"])


def main():
    from calibration.fit import model_spec
    from calibration.mbam.io import load_reduced
    from calibration.priors import PERSONAL
    from pbpk_models.regimen import Regimen

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reduced", type=Path, default=SHIPPED)
    ap.add_argument("--reduce", action="store_true", help="run (and time) a new reduction")
    ap.add_argument("--max-time", type=float, default=1500.0)
    ap.add_argument("--out", type=Path, default=Path("REDUCED_psma.json"))
    a = ap.parse_args()
    full = model_spec("psma-pbrpk")
    if a.reduce:
        from calibration.mbam import Protocol
        from calibration.mbam.affine import reduce_affine
        from calibration.mbam.io import dumps_hierarchy
        from calibration.mbam.predictions import full_parameter_set

        t = time.perf_counter()
        h = reduce_affine(full, Protocol.from_json(PROTOCOL), full_parameter_set(full),
                          base_model="psma-pbrpk", max_time_s=a.max_time)
        wall = time.perf_counter() - t
        a.out.write_text(dumps_hierarchy(h))
        red, doc = load_reduced(a.out)
        print(f"reduction: {len(h.full_names)} -> {h.n_parameters} parameters, {wall:.1f} s "
              f"wall ({h.status})")
    else:
        red, doc = load_reduced(a.reduced)
        print(f"reduction (from {a.reduced}): {doc['n_parameters_full']} -> "
              f"{doc['n_parameters']} parameters, {doc['time_s']:.1f} s wall "
              f"({doc['status'][:60]}); compartments {len(full.compartments)} -> "
              f"{len(red.compartments)}")
    reg = Regimen.single("lu177-psma-617", 7400.0, 57.09)
    names = PERSONAL["psma-pbrpk"]
    rng = np.random.default_rng(0)
    factors = np.exp(0.3 * rng.standard_normal((a.n, len(names))))
    from pbpk_models.model import compile_model

    nf = compile_model(full, reg.radiopharmaceuticals).n_states
    nr = compile_model(red, reg.radiopharmaceuticals).n_states
    print(f"ODE states (one radiopharmaceutical): full {nf}, reduced {nr}")
    pf, okf, tf = patients_per_s(full, reg, factors, names, a.n)
    pr, okr, tr = patients_per_s(red, reg, factors, names, a.n)
    print(f"simulation, {a.n} patients vmapped (Rosenbrock, rtol 1e-6): full {pf:.1f} "
          f"patients/s ({okf} ok), reduced {pr:.1f} patients/s ({okr} ok)")
    print(f"RATIO reduced/full simulation speed: {pr / pf:.2f}x")


if __name__ == "__main__":
    main()
