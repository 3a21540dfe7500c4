"""Benchmark: the Rosenbrock block solver with organ blocks padded to the largest (one group)
against blocks grouped by size (up to three groups), on vmapped populations.

Two measurements, each side by side in one process, CPU seconds (``time.process_time``: the
machine is shared, CPU time is less sensitive to other jobs than wall time), compile and run
separately (the on-disk compile cache is off for the compile numbers):

1. ``simulate``-style solve: one 7.4 GBq Lu-177-PSMA-617 administration, 60 days, total-ligand
   form, vmapped over ``--n`` patients (one call; the 7 personal parameters varied), for
   psma-pbrpk and its MBAM v2 reduction;
2. the virtual-trial engine (:func:`twin.trials.engine.solve_rows`, 6 cycles, organ doses and
   BED) at one chunk of ``--chunk`` patients, for psma-pbrpk.

    python benchmarks/bench_blocks.py [--n 64] [--chunk 256]

Prints one RATIO line per case (grouped throughput / one-group throughput).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_enable_compilation_cache", False)

V2 = Path(__file__).parents[1] / "pbpk_models" / "library" / "reduced" / \
    "psma-pbrpk_pet1h_spect24h_v2.json"


def _cpu(f, *a, repeats=3):
    best = np.inf
    for _ in range(repeats):
        t = time.process_time()
        jax.block_until_ready(f(*a))
        best = min(best, time.process_time() - t)
    return best


def solve_case(spec, n, groups):
    import jax.numpy as jnp

    from pbpk_models.regimen import Administration, Regimen
    from pbpk_models.rosenbrock import PBPKRosenbrock
    from pbpk_models.simulate import prepare

    regimen = Regimen((Administration(0.0, "lu177-psma-617", 7400.0, 57.09),))
    m, _, hot, cold, _, t_end = prepare(spec, regimen, np.array([1.0, 24.0]), 60.0, "auto")
    rb = PBPKRosenbrock(m, "block", max_groups=groups)
    y0 = jnp.zeros(m.n_states).at[np.asarray(m.dosing_index)].add(
        float(hot[0].sum() + cold[0].sum()))
    ts = jnp.asarray([1.0, 24.0, 96.0])

    def one(p):
        K, kon = m.operator(p)
        return rb.solve(K, kon, 0.0, y0, 0.0, float(t_end), ts, rtol=1e-6, atol=1e-9)[0]

    f = jax.jit(jax.vmap(one))
    # the personal parameters varied (lognormal, CV ~0.3: assumed, for timing only), the
    # others at the model's values, as in bench_mbam.py
    from calibration.priors import PERSONAL

    p0 = np.asarray(m.params_from({}))
    rng = np.random.default_rng(0)
    P = np.repeat(p0[None], n, axis=0)
    for k in PERSONAL["psma-pbrpk"]:
        if k in m.parameter_names:
            P[:, m.parameter_names.index(k)] *= rng.lognormal(0.0, 0.3, n)
    P = jnp.asarray(P)
    t = time.process_time()
    c = f.lower(P).compile()
    compile_s = time.process_time() - t
    return rb.struct, compile_s, _cpu(c, P), np.asarray(c(P))


def engine_case(chunk, groups):
    import twin.trials.engine as eng
    from twin.trials.populations import sample

    pop = sample("mcrpc", chunk, seed=1)
    hot, cold = eng.nmol_per_cycle(pop.model, np.full((chunk, 6), 7400.0))
    old = eng.GROUPED_CHUNK
    eng.GROUPED_CHUNK = 1 if groups > 1 else 10 ** 9
    try:
        t = time.process_time()
        first = eng.solve_rows(pop.model, pop.params, hot, cold, n_cycles=6, interval_h=1008.0,
                               chunk_size=chunk, progress=False, sharding=False)
        compile_s = time.process_time() - t
        run = _cpu(lambda: eng.solve_rows(pop.model, pop.params, hot, cold, n_cycles=6,
                                          interval_h=1008.0, chunk_size=chunk, progress=False,
                                          sharding=False)["tia"], repeats=2)
    finally:
        eng.GROUPED_CHUNK = old
    return compile_s - run, run, first["kidney_bed"]


def main():
    from calibration.fit import model_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64, help="patients of the vmapped solve")
    ap.add_argument("--chunk", type=int, default=256, help="patients of the engine chunk")
    ap.add_argument("--skip-engine", action="store_true")
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; jax {jax.__version__}")
    for name, spec in (("psma-pbrpk", model_spec("psma-pbrpk", "corrected")),
                       ("MBAM v2", model_spec(str(V2)))):
        res = {g: solve_case(spec, a.n, g) for g in (1, 3)}
        for g, (st, comp, run, _) in res.items():
            print(f"{name}, groups <= {g}: layout {st.groups} + {st.n_hubs} hubs "
                  f"({st.n_padded} padded for {st.n} states); compile {comp:.1f} s CPU; "
                  f"{a.n} patients {run * 1e3:.0f} ms CPU")
        dev = np.max(np.abs(res[3][3] - res[1][3]) / np.maximum(np.abs(res[1][3]), 1e-12))
        print(f"RATIO {name} vmapped solve ({a.n} patients), grouped / one group throughput: "
              f"{res[1][2] / res[3][2]:.2f}x (compile {res[3][1] / res[1][1]:.2f}x; max rel "
              f"difference {dev:.1e})")
    if not a.skip_engine:
        r1 = engine_case(a.chunk, 1)
        r3 = engine_case(a.chunk, 3)
        dev = np.max(np.abs(r3[2] - r1[2]) / r1[2])
        print(f"trial engine, psma-pbrpk (mcrpc), 6 cycles, {a.chunk} patients: one group "
              f"{r1[1]:.1f} s CPU (compile ~{r1[0]:.0f} s), grouped {r3[1]:.1f} s CPU (compile "
              f"~{r3[0]:.0f} s)")
        print(f"RATIO trial engine ({a.chunk} patients per chunk), grouped / one group "
              f"throughput: {r1[1] / r3[1]:.2f}x (kidney BED max rel difference {dev:.1e})")


if __name__ == "__main__":
    main()
