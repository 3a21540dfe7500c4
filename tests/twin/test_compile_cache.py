"""The command line's on-disk compile cache (twin.compile_cache): a second process loads what
the first compiled (counted by JAX's own cache-hit events), 'off' stores nothing, an unusable
folder leaves caching off without an error."""

import os
import subprocess
import sys

SCRIPT = """
import jax, jax.numpy as jnp
from twin import compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if "cache_hit" in name else None)
folder = compile_cache.enable()
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)
f(jnp.ones((8, 8))).block_until_ready()
print(folder, len(hits))
"""


def _run(setting):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "TWIN_TESTS_OWN_JAX_CACHE"))}
    env.update(TWIN_COMPILE_CACHE=str(setting), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    folder, hits = out.stdout.split()[-2:]
    return folder, int(hits)


def test_second_process_loads_the_compiled_programs(tmp_path):
    cache = tmp_path / "cache"
    folder, hits = _run(cache)
    assert folder == str(cache) and hits == 0
    stored = sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache"))
    assert any(n.startswith("jit__lambda") for n in stored)
    folder, hits = _run(cache)
    assert hits >= 1  # the lambda's program (and JAX's small helpers) came from disk
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache")) == stored


def test_off_and_unusable_folders_leave_caching_off(tmp_path):
    assert _run("off") == ("None", 0)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _run(blocker / "cache") == ("None", 0)
