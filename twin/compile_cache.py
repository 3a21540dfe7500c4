"""A persistent cache of compiled XLA programs for the command line.

Every ``twin`` command is a new process, and a new process compiles the stiff solves of the
PBPK model again: 10-60 s per program on 2 CPU cores, often more than the work itself
(``twin fit`` then ``twin simulate`` then ``twin plan`` on one patient compile much the same
programs). JAX can keep compiled programs on disk and load them in a later process
(``jax_compilation_cache_dir``; https://docs.jax.dev/en/latest/persistent_compilation_cache.html);
the key covers the program, the compile options, the JAX/XLA version and the device, so a
cached program is only reused where it is the same program. Measured here: a fit's first call
11 s instead of 22 s in a second process (the remainder is Python tracing and model building,
which no cache saves).

Where: ``TWIN_COMPILE_CACHE`` (a folder, or ``off``), else ``$XDG_CACHE_HOME/twin/jax``, else
``~/.cache/twin/jax``. A cache that JAX was already given (``JAX_COMPILATION_CACHE_DIR``) is
left as it is. Programs that compile in under a second are not stored (JAX's default); the
folder is kept under :data:`MAX_BYTES` by least-recently-used eviction, which JAX does under a
file lock (``filelock``) so concurrent processes share it safely. A folder that cannot be
created leaves caching off (compilation as usual), never an error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MAX_BYTES = 2 * 1024 ** 3   # 2 GiB: a psma-pbrpk program is 0.1-10 MB, a full demo ~100 MB
ENV = "TWIN_COMPILE_CACHE"


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "twin" / "jax"


def enable(path: str | os.PathLike | None = None) -> Path | None:
    """Switch on JAX's persistent compilation cache (see the module doc); returns the folder,
    or None when caching stays off (``TWIN_COMPILE_CACHE=off``, an unusable folder, or a cache
    folder already configured, which is then returned)."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    setting = os.environ.get(ENV, "")
    if setting.strip().lower() in ("off", "0", "no", "false"):
        return None
    folder = Path(path or setting or default_dir()).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        log.debug("compile cache off: %s is not writable (%s)", folder, exc)
        return None
    try:
        import filelock  # noqa: F401  (JAX's eviction needs it)

        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    except ImportError:  # without it JAX cannot evict: leave the size unbounded
        pass
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
