"""The batched trial engine: agrees with the organ dosimetry engine, same result sharded.

One subprocess with 2 forced host CPU devices (XLA_FLAGS) runs the engine sharded over both
devices and unsharded, and the organ engine's own path (``organ_doses`` on rows of the
unsharded chunks' shape, so it shares that compiled function): one process, two compilations.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from pbpk_models.regimen import Regimen
    from twin.dosimetry.organ import organ_doses
    from twin.trials.engine import level_doses
    from twin.trials.populations import sample
    pop = sample("mcrpc", 3, seed=5)          # 3 patients x 2 levels = 6 rows, chunks of 4:
    levels = [5.0, 9.0]                      # padding on both the chunk and the device split
    out = {"devices": len(jax.devices())}
    for sh in (True, False):
        d = level_doses(pop, levels, points_per_cycle=8, chunk_size=4, progress=False,
                        sharding=sh)
        out[str(sh)] = {k: v.tolist() for k, v in d.as_dict().items()}
    ref = {}
    # 4 rows (the last patient twice): the shape of the unsharded engine's chunks, so
    # organ_doses runs the compiled function the engine used instead of compiling a 3-row one
    P4 = np.vstack([pop.params, pop.params[-1:]])
    for a in levels:
        r = organ_doses(pop.model, Regimen.single("lu177-psma-617", a * 1000.0), P4,
                        points_per_cycle=8)
        k, m = r.region_index("Kidney"), r.region_index("RedMarrow")
        ref.setdefault("kidney_dose_gy", []).append(r.dose_gy[:3, 0, k].tolist())
        ref.setdefault("kidney_bed_gy", []).append(r.bed_gy[:3, 0, k].tolist())
        ref.setdefault("marrow_dose_gy", []).append(r.dose_gy[:3, 0, m].tolist())
    out["organ_doses"] = ref
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_engine_sharded_unsharded_and_organ_engine():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 2
    sharded, single = out["True"], out["False"]
    for k, v in sharded.items():
        assert np.allclose(v, single[k], rtol=1e-12, atol=0), k
    # the superposed 6-cycle course = 6 x one cycle of the organ engine's own path
    for k, ref in out["organ_doses"].items():
        assert np.allclose(np.asarray(single[k]), 6 * np.asarray(ref).T, rtol=1e-10), k
    kb = np.asarray(single["kidney_bed_gy"])
    c1 = np.asarray(single["lesion_dose_c1_gy"])
    # more activity, more kidney BED; less lesion dose per GBq (saturable binding)
    assert np.all(kb[:, 1] > kb[:, 0])
    assert np.all(c1[:, 1] / 9.0 < c1[:, 0] / 5.0)
