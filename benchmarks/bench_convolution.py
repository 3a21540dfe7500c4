"""Dose convolution benchmark: twin's FFT convolution against scipy.signal.fftconvolve.

    python benchmarks/bench_convolution.py            # the issue's cases, prints a table
    python benchmarks/bench_convolution.py --all      # also 256^3 with the default 11^3 kernel
    python benchmarks/bench_convolution.py --quick    # small volumes (a smoke test)

Methods: "scipy" = scipy.signal.fftconvolve(float32, mode='same') under
scipy.fft.set_workers(<cores>); "ours" = twin.dosimetry.convolve.convolve_dose on a numpy TIA (the
API call; on the CPU backend it runs the host implementation directly); "ours-jit" = the same
function under jax.jit on a jax.Array (the compiled primitive, whose CPU lowering calls scipy.fft
through jax.pure_callback: the operand and result copies of the callback are included).

Each measurement runs in its own child process so that peak memory is that method's alone; the
"baseline" column is the child's resident memory after imports and input creation, before the
first convolution; "peak" is the maximum RSS up to the end of the first call (for JAX this
includes XLA's compilation), "steady" the maximum RSS during the timed calls after it (peak
counter reset through /proc/self/clear_refs). Times are medians of --repeat runs after one warm-up
(JAX: compile + kernel FFT, both cached afterwards). scipy uses float32 input, mode='same' and
scipy.fft.set_workers(<cores>). Inputs: random float32 TIA volumes, 177Lu kernels of the
Lanconelli database resampled by twin.dosimetry.kernels.

On a loaded machine the separate children see different loads; the "interleaved" line times
scipy and ours alternately in one process (best of --repeat each), which is the fairer ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, shape (z, y, x), spacing (z, y, x) mm, kernel half width or None for the default)
CASES = [
    ("256^3, 4.42 mm, 31^3 kernel", (256, 256, 256), (4.42, 4.42, 4.42), 15),
    ("128x128x300, 4.8x4.42x4.42 mm", (300, 128, 128), (4.8, 4.42, 4.42), None),
]
EXTRA = [("256^3, 4.42 mm, 11^3 kernel", (256, 256, 256), (4.42, 4.42, 4.42), None)]
QUICK = [("48x40x36, 4.42 mm", (48, 40, 36), (4.42, 4.42, 4.42), None)]
BATCH = 8


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(method: str, shape, spacing, half_width, repeat: int, batch: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from twin.dosimetry.kernels import MGY_PER_MBQ_S_TO_GY_PER_MBQ_H, voxel_s_values

    rng = np.random.default_rng(0)
    lead = (batch,) if batch > 1 else ()
    x = rng.random(lead + tuple(shape), dtype=np.float32)
    k = (voxel_s_values("Lu-177", spacing, half_width=half_width)
         * MGY_PER_MBQ_S_TO_GY_PER_MBQ_H).astype(np.float32)
    if method == "scipy":
        import scipy.fft
        import scipy.signal

        def run():
            with scipy.fft.set_workers(os.cpu_count() or 1):
                if batch > 1:
                    return [scipy.signal.fftconvolve(v, k, mode="same") for v in x]
                return scipy.signal.fftconvolve(x, k, mode="same")
    else:
        import jax
        import jax.numpy as jnp

        from twin.dosimetry.convolve import convolve_dose

        def one(v):
            return convolve_dose(v, "Lu-177", spacing, half_width=half_width)

        if method == "ours":
            def run():
                return jax.block_until_ready(one(x))
        elif method == "ours-loop":  # the batch one volume at a time
            def run():
                return [jax.block_until_ready(one(v)) for v in x]
        elif method == "ours-jit":  # compiled, on a jax.Array (pure_callback on the CPU)
            fj = jax.jit(one)
            xd = jnp.asarray(x)

            def run():
                return jax.block_until_ready(fj(xd))
        else:
            raise ValueError(method)
    baseline = _rss_mb()
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    peak_first = _peak_mb()
    reset = _reset_peak()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"method": method, "first_s": first, "median_s": times[len(times) // 2],
            "min_s": times[0], "baseline_mb": baseline, "peak_mb": peak_first,
            "steady_peak_mb": _hwm_mb() if reset else float("nan")}


def interleaved(shape, spacing, half_width, repeat: int, batch: int = 1) -> dict:
    """Best-of-``repeat`` times of scipy and ours, alternating in one process (same load).

    With ``batch`` > 1: ours batched (one call) against ours one volume at a time."""
    sys.path.insert(0, str(ROOT))
    import jax
    import numpy as np
    import scipy.fft
    import scipy.signal

    from twin.dosimetry.convolve import convolve_dose
    from twin.dosimetry.kernels import MGY_PER_MBQ_S_TO_GY_PER_MBQ_H, voxel_s_values

    rng = np.random.default_rng(0)
    k = (voxel_s_values("Lu-177", spacing, half_width=half_width)
         * MGY_PER_MBQ_S_TO_GY_PER_MBQ_H).astype(np.float32)
    if batch > 1:
        x = rng.random((batch,) + tuple(shape), dtype=np.float32)
        fns = {"ours-batched": lambda: jax.block_until_ready(
                   convolve_dose(x, "Lu-177", spacing, half_width=half_width)),
               "ours-loop": lambda: [jax.block_until_ready(
                   convolve_dose(v, "Lu-177", spacing, half_width=half_width)) for v in x]}
    else:
        x = rng.random(tuple(shape), dtype=np.float32)

        def sc():
            with scipy.fft.set_workers(os.cpu_count() or 1):
                return scipy.signal.fftconvolve(x, k, mode="same")

        fj = jax.jit(lambda v: convolve_dose(v, "Lu-177", spacing, half_width=half_width))
        xd = jax.numpy.asarray(x)
        fns = {"scipy": sc,
               "ours": lambda: jax.block_until_ready(
                   convolve_dose(x, "Lu-177", spacing, half_width=half_width)),
               "ours-jit": lambda: jax.block_until_ready(fj(xd))}
    for f in fns.values():
        f()
    best = {n: float("inf") for n in fns}
    for _ in range(repeat):
        for n, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[n] = min(best[n], time.perf_counter() - t0)
    return best


def agreement(shape, spacing, half_width) -> float:
    """Max |ours - scipy float64| / max(scipy) on one volume."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import scipy.signal

    from twin.dosimetry.convolve import convolve_dose
    from twin.dosimetry.kernels import MGY_PER_MBQ_S_TO_GY_PER_MBQ_H, voxel_s_values

    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    k = voxel_s_values("Lu-177", spacing, half_width=half_width) * MGY_PER_MBQ_S_TO_GY_PER_MBQ_H
    ref = scipy.signal.fftconvolve(x.astype(np.float64), k, mode="same")
    ours = np.asarray(convolve_dose(x, "Lu-177", spacing, half_width=half_width), np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_info() -> str:
    lines = [f"python {platform.python_version()}, {platform.platform()}",
             f"os.cpu_count() = {os.cpu_count()}"]
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        keep = ("Architecture", "CPU(s):", "Model name", "Thread(s) per core", "Core(s) per socket",
                "Socket(s)", "L3 cache")
        lines += [ln.strip() for ln in txt.splitlines() if ln.strip().startswith(keep)]
    except (OSError, subprocess.CalledProcessError):
        lines.append("lscpu not available")
    import jax
    import numpy
    import scipy

    lines.append(f"jax {jax.__version__} ({jax.default_backend()}), numpy {numpy.__version__}, "
                 f"scipy {scipy.__version__}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--all", action="store_true", help="also the 11^3-kernel 256^3 case")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", nargs=6, metavar=("METHOD", "SHAPE", "SPACING", "HW", "REPEAT",
                                                 "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--agree", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--interleave", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.interleave:
        shape, sp, hw, rep, batch = a.interleave
        print(json.dumps(interleaved(json.loads(shape), json.loads(sp), json.loads(hw),
                                     int(rep), int(batch))))
        return
    if a.worker:
        m, shape, sp, hw, rep, batch = a.worker
        res = worker(m, json.loads(shape), json.loads(sp), json.loads(hw), int(rep), int(batch))
        print(json.dumps(res))
        return
    if a.agree:
        print(json.dumps({"rel": agreement(*(json.loads(v) for v in a.agree))}))
        return
    print(machine_info())
    print(f"load average at start: {os.getloadavg()} (timings under load are noisy; the "
          f"interleaved lines, measured in one process, are the fairer ratios)")
    cases = QUICK if a.quick else (CASES + EXTRA if a.all else CASES)
    print(f"\nsingle volume: median of {a.repeat} after a warm-up; memory = child's peak RSS "
          f"above its baseline (first call incl. compile / steady state)")
    print(f"{'case':31s} {'method':9s} {'time s':>7s} {'ratio':>6s} {'peak MB':>8s} "
          f"{'steady MB':>9s} {'first s':>8s}")
    for name, shape, sp, hw in cases:
        res = {}
        for m in ("scipy", "ours", "ours-jit"):
            res[m] = _child([m, json.dumps(shape), json.dumps(sp), json.dumps(hw), str(a.repeat),
                             "1"])
        for m, r in res.items():
            print(f"{name:31s} {m:9s} {r['median_s']:7.3f} "
                  f"{res['scipy']['median_s'] / r['median_s']:6.2f} "
                  f"{r['peak_mb'] - r['baseline_mb']:8.0f} "
                  f"{r['steady_peak_mb'] - r['baseline_mb']:9.0f} {r['first_s']:8.3f}")
        il = _interleave(shape, sp, hw, a.repeat, 1)
        print(f"{'':31s} interleaved best of {a.repeat}: scipy {il['scipy']:.3f} s, ours "
              f"{il['ours']:.3f} s, ours-jit {il['ours-jit']:.3f} s -> RATIO scipy/ours "
              f"{il['scipy'] / il['ours']:.2f} (jit {il['scipy'] / il['ours-jit']:.2f})")
    name, shape, sp, hw = cases[-1]
    rel = _child_agree(shape, sp, hw)
    print(f"\nfloat32 ours vs float64 scipy on {name}: max rel. difference {rel:.2e}")
    print(f"\nbatched: {BATCH} volumes of {name} (ratio = scipy per volume / method per volume)")
    res = {}
    for m in ("scipy", "ours", "ours-loop"):
        res[m] = _child([m, json.dumps(shape), json.dumps(sp), json.dumps(hw), str(a.repeat),
                         str(BATCH)])
    for m, r in res.items():
        label = {"scipy": "scipy loop", "ours": "ours batch", "ours-loop": "ours loop"}[m]
        print(f"{label:11s} total {r['median_s']:7.3f} s, per volume {r['median_s'] / BATCH:6.3f} "
              f"s, ratio {res['scipy']['median_s'] / r['median_s']:5.2f}, peak "
              f"{r['peak_mb'] - r['baseline_mb']:6.0f} MB, steady "
              f"{r['steady_peak_mb'] - r['baseline_mb']:6.0f} MB above baseline")
    il = _interleave(shape, sp, hw, a.repeat, BATCH)
    print(f"interleaved best of {a.repeat}: batched {il['ours-batched'] / BATCH:.3f} s per "
          f"volume, one at a time {il['ours-loop'] / BATCH:.3f} s -> RATIO batch speed-up "
          f"{il['ours-loop'] / il['ours-batched']:.2f}")


def _interleave(shape, sp, hw, repeat, batch) -> dict:
    out = subprocess.run([sys.executable, __file__, "--interleave", json.dumps(shape),
                          json.dumps(sp), json.dumps(hw), str(repeat), str(batch)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_agree(shape, sp, hw) -> float:
    out = subprocess.run([sys.executable, __file__, "--agree", json.dumps(shape), json.dumps(sp),
                          json.dumps(hw)], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])["rel"]


if __name__ == "__main__":
    main()
