"""Benchmark: wall time of a complete MBAM reduction of psma-pbrpk (PET 1 h + SPECT 24 h), and
simulation speed of the reduced model against the full one (patients per second, vmapped,
``simulate_batch`` with the population Rosenbrock settings, compile excluded).

    python benchmarks/bench_mbam.py [--n 200] [--reduced REDUCED.json] [--out REDUCED.json]

With --reduced an existing reduction is timed for simulation only (the reduction's own wall time
is read from the file). Timings on a shared 2-core CPU vary; compare the ratio.
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


def patients_per_s(spec, regimen, thetas_names, values, n, seed=0):
    from pbpk_models.model import compile_model
    from pbpk_models.simulate import simulate_batch

    model = compile_model(spec, regimen.radiopharmaceuticals)
    base = model.params_from({})
    idx = [model.parameter_names.index(k) for k in thetas_names]
    rng = np.random.default_rng(seed)
    P = np.repeat(base[None], n, axis=0)
    # a population around the model's values: lognormal spread CV ~ 0.3 (assumed, for timing)
    P[:, idx] = np.array([values[k] for k in thetas_names]) * np.exp(
        0.3 * rng.standard_normal((n, len(idx))))
    ts = np.array([1.0, 24.0, 96.0])
    out = simulate_batch(spec, regimen, P[:2], ts)  # compile
    jax.block_until_ready(out["tia_mbq_h"])
    t = time.perf_counter()
    out = simulate_batch(spec, regimen, P, ts)
    jax.block_until_ready(out["tia_mbq_h"])
    return n / (time.perf_counter() - t), int(np.asarray(out["ok"]).sum())


def main():
    from calibration.fit import model_spec
    from calibration.mbam import Protocol, reduce_model
    from calibration.mbam.io import dumps_hierarchy, load_reduced
    from calibration.priors import PERSONAL
    from pbpk_models.regimen import Regimen

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reduced", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("REDUCED_psma.json"))
    ap.add_argument("--geodesic-steps", type=int, default=60)
    a = ap.parse_args()
    full = model_spec("psma-pbrpk")
    if a.reduced is None:
        t = time.perf_counter()
        h = reduce_model(full, Protocol.from_json(PROTOCOL), PERSONAL["psma-pbrpk"],
                         base_model="psma-pbrpk",
                         geodesic_options={"max_steps": a.geodesic_steps},
                         callback=lambda h: print(f"  step {len(h.steps)}: "
                                                  f"{h.steps[-1]['limit']} "
                                                  f"({time.perf_counter() - t:.0f} s)",
                                                  flush=True))
        wall = time.perf_counter() - t
        a.out.write_text(dumps_hierarchy(h))
        red, names, vals = h.spec, h.names[-1], h.values[-1]
        print(f"reduction: {len(h.full_names)} -> {h.n_parameters} parameters, {wall:.1f} s "
              f"wall ({h.status})")
    else:
        red, doc = load_reduced(a.reduced)
        names, vals = doc["personal"], doc["parameters"]
        print(f"reduction (from {a.reduced}): {doc['n_parameters_full']} -> "
              f"{doc['n_parameters']} parameters, {doc['time_s']:.1f} s wall")
    reg = Regimen.single("lu177-psma-617", 7400.0, 57.09)
    fv = full.default_values()
    pf, okf = patients_per_s(full, reg, PERSONAL["psma-pbrpk"], fv, a.n)
    pr, okr = patients_per_s(red, reg, names, vals, a.n) if names else \
        patients_per_s(red, reg, [], {}, a.n)
    print(f"simulation, {a.n} patients vmapped: full {pf:.1f} patients/s ({okf} ok), reduced "
          f"{pr:.1f} patients/s ({okr} ok); ratio {pr / pf:.2f}x")


if __name__ == "__main__":
    main()
