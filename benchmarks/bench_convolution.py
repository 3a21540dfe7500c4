"""Dose convolution benchmark: twin's JAX FFT convolution against scipy.signal.fftconvolve.

    python benchmarks/bench_convolution.py            # all cases, prints a table
    python benchmarks/bench_convolution.py --quick    # small volumes (a smoke test)

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
    ("256^3, 4.42 mm, 11^3 kernel", (256, 256, 256), (4.42, 4.42, 4.42), None),
    ("256^3, 4.42 mm, 31^3 kernel", (256, 256, 256), (4.42, 4.42, 4.42), 15),
    ("128x128x300, 4.8x4.42x4.42 mm", (300, 128, 128), (4.8, 4.42, 4.42), None),
]
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

        from twin.dosimetry.convolve import convolve_dose

        def one(v):
            return convolve_dose(v, "Lu-177", spacing, half_width=half_width)

        if method == "ours":
            def run():
                return jax.block_until_ready(one(x))
        elif method == "ours-loop":  # the batch one volume at a time
            def run():
                return [jax.block_until_ready(one(v)) for v in x]
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

        fns = {"scipy": sc, "ours": lambda: jax.block_until_ready(
            convolve_dose(x, "Lu-177", spacing, half_width=half_width))}
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
    cases = QUICK if a.quick else CASES
    print(f"\nsingle volume (median of {a.repeat} after warm-up; peak = child's max RSS)")
    print(f"{'case':34s} {'method':8s} {'first s':>8s} {'median s':>9s} {'base MB':>8s} "
          f"{'peak MB':>8s} {'steady MB':>9s}")
    for name, shape, sp, hw in cases:
        res = {}
        for m in ("scipy", "ours"):
            r = _child([m, json.dumps(shape), json.dumps(sp), json.dumps(hw), str(a.repeat), "1"])
            res[m] = r
            print(f"{name:34s} {m:8s} {r['first_s']:8.3f} {r['median_s']:9.3f} "
                  f"{r['baseline_mb']:8.0f} {r['peak_mb']:8.0f} {r['steady_peak_mb']:9.0f}")
        print(f"{'':34s} ratio scipy/ours (median time): "
              f"{res['scipy']['median_s'] / res['ours']['median_s']:.2f}; peak-memory above "
              f"baseline: scipy {res['scipy']['peak_mb'] - res['scipy']['baseline_mb']:.0f} MB, "
              f"ours {res['ours']['peak_mb'] - res['ours']['baseline_mb']:.0f} MB (steady: "
              f"scipy {res['scipy']['steady_peak_mb'] - res['scipy']['baseline_mb']:.0f} MB, "
              f"ours {res['ours']['steady_peak_mb'] - res['ours']['baseline_mb']:.0f} MB)")
        il = _interleave(shape, sp, hw, a.repeat, 1)
        print(f"{'':34s} interleaved (best of {a.repeat}): scipy {il['scipy']:.3f} s, ours "
              f"{il['ours']:.3f} s, ratio {il['scipy'] / il['ours']:.2f}")
    name, shape, sp, hw = cases[-1]
    rel = _child_agree(shape, sp, hw)
    print(f"\nfloat32 ours vs float64 scipy on {name}: max rel. difference {rel:.2e}")
    print(f"\nbatched: {BATCH} volumes of {name}")
    res = {}
    for m in ("ours", "ours-loop", "scipy"):
        r = _child([m, json.dumps(shape), json.dumps(sp), json.dumps(hw), str(a.repeat),
                    str(BATCH)])
        res[m] = r
        print(f"{m:10s} total {r['median_s']:7.3f} s, per volume {r['median_s'] / BATCH:6.3f} s, "
              f"peak {r['peak_mb']:6.0f} MB, steady {r['steady_peak_mb']:6.0f} MB "
              f"(baseline {r['baseline_mb']:.0f})")
    print(f"per-volume speed-up of the batch over one at a time: "
          f"{res['ours-loop']['median_s'] / res['ours']['median_s']:.2f}; over scipy: "
          f"{res['scipy']['median_s'] / res['ours']['median_s']:.2f}")
    il = _interleave(shape, sp, hw, a.repeat, BATCH)
    print(f"interleaved (best of {a.repeat}): batched {il['ours-batched'] / BATCH:.3f} s per "
          f"volume, one at a time {il['ours-loop'] / BATCH:.3f} s, speed-up "
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
