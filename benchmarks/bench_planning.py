"""Benchmark: time to optimise a 6-cycle plan for one twin with posterior samples (issue 7).

Ours: Planner.optimise (single-cycle surrogate over all posterior samples at a few activity
levels, exhaustive search over number of cycles x common activity, full 6-cycle verification).
Baseline: bisection on the common activity of 6 cycles with the full 6-cycle simulation of all
posterior samples at every step (what one would do without the surrogate; it does not search
the number of cycles). Both after compilation (a warm-up run compiles). Goal: < 30 s.
Run: python benchmarks/bench_planning.py [--samples 48] [--baseline-steps 10]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--baseline-steps", type=int, default=10)
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    from twin.planning import Planner, PlanSettings, default_limits, posterior_from_prior

    limits = default_limits()
    post = posterior_from_prior("psma-pbrpk")
    settings = PlanSettings(max_cycles=6, n_samples=args.samples)
    t = time.perf_counter()
    Planner(post, settings).optimise(limits)  # compiles (surrogate and 6-cycle functions)
    t_compile = time.perf_counter() - t
    planner = Planner(post, settings)  # fresh: no cached surrogate
    t = time.perf_counter()
    plan = planner.optimise(limits)
    t_ours = time.perf_counter() - t

    # baseline: bisection with the full simulation
    times = np.arange(6) * settings.interval_weeks * 168.0
    lo, hi = (x * 1000 for x in settings.activity_gbq)

    def feasible(a):
        d = planner.what_if(planner.regimen(np.full(6, a), times))
        for lim in limits:
            j = d.regions.index(lim.region)
            v = d.total(lim.quantity)[1:, j][d.ok[1:]]
            if np.quantile(v, settings.quantile) > lim.value * (1 - settings.numerical_margin):
                return False
        return True

    t = time.perf_counter()
    if feasible(hi):
        a_base = hi
    else:
        a, b = lo, hi
        for _ in range(args.baseline_steps):
            m = 0.5 * (a + b)
            a, b = (m, b) if feasible(m) else (a, m)
        a_base = a
    t_base = time.perf_counter() - t
    print(f"posterior samples: {args.samples}; compile + first plan: {t_compile:.1f} s")
    print(f"ours (surrogate + verification): {t_ours:.2f} s -> "
          f"{len(plan.activities_mbq)} x {plan.activities_mbq[0] / 1000:.3f} GBq, "
          f"{plan.corrections} correction(s), binding {plan.binding}")
    print(f"baseline (bisection, full 6-cycle solve per step, {args.baseline_steps} steps): "
          f"{t_base:.2f} s -> 6 x {a_base / 1000:.3f} GBq")
    print(f"ratio baseline/ours: {t_base / t_ours:.1f}x; goal < 30 s: "
          f"{'met' if t_ours < 30 else 'NOT met'}")


if __name__ == "__main__":
    main()
