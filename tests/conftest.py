"""Test configuration: PBPK and calibration tests need JAX's 64-bit mode."""

import os
import tempfile

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")
# One on-disk JAX compile cache per test run (twin/compile_cache.py), created by the first
# process and inherited by the xdist workers, the Dask workers of the cohort tests, the notebook
# kernels and the CLI: a program compiled in one process is loaded by the others instead of
# being compiled again. Fresh per run (as on CI's clean machine), removed at the end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="twin-tests-jax-cache-")
    os.environ["TWIN_TESTS_OWN_JAX_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 1024 ** 3))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


# The suite runs on every core with pytest-xdist (`-n auto --dist loadgroup` in pyproject.toml).
# Tests of one file share compiled JAX functions and module fixtures, so a file stays on one
# worker. The tests that use the one shared demo run (the ``demo_dir`` fixture of
# tests/twin/demo_fixture.py, in test_demo.py, test_report.py and test_run.py) form one group;
# the other tests of those files do not need it and may run elsewhere. Each notebook runs in its
# own kernel and shares nothing, so each is its own group.
_DEMO_FILES = {"test_demo.py", "test_report.py", "test_run.py"}


import pytest  # noqa: E402


# The heaviest groups (CI --durations, 2 cores; the demo group is one ~4-5 min chain) are handed
# out first, longest first (pyproject.toml turns off xdist's default of ordering groups by
# their number of tests, which sent the long one-test groups, a notebook or the cohort, last):
# a long group started last leaves the other worker idle at the end of the run. Groups not
# listed follow in collection order. Names that no longer exist are harmless.
_HEAVY_FIRST = (
    "demo",
    "tests/twin/planning/test_planning.py",
    "tests/calibration/test_mbam.py",
    "tests/twin/test_stp.py",
    "tests/twin/trials/test_cohort.py",
    "tests/calibration/test_fit.py",
    "tests/test_notebooks.py::test_notebook_runs[calibration_mbam.ipynb]",
    "tests/pbpk_models/test_physics.py",
    "tests/twin/trials/test_imaged_arm.py",
    "tests/calibration/test_twin_predict.py",
    "tests/pbpk_models/test_solver_accuracy.py",
    "tests/twin/trials/test_engine.py",
)


# Files whose compiled programs have the same shapes run in one group (one process): the
# lesion-response planners use test_planning.py's settings, so the planner's surrogate solve
# is compiled once for both files.
_SAME_GROUP = {"tests/twin/planning/test_response.py": "tests/twin/planning/test_planning.py"}


def _group(config, item) -> str:
    name = item.path.name
    if name in _DEMO_FILES and "demo_dir" in getattr(item, "fixturenames", ()):
        return "demo"
    if name == "test_notebooks.py":
        return item.nodeid
    path = item.path.relative_to(config.rootpath).as_posix()
    return _SAME_GROUP.get(path, path)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        groups[item] = _group(config, item)
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    rank = {g: k for k, g in enumerate(_HEAVY_FIRST)}
    items.sort(key=lambda it: rank.get(groups[it], len(rank)))  # stable: order kept inside


def pytest_unconfigure(config):
    own = os.environ.get("TWIN_TESTS_OWN_JAX_CACHE")
    if own and getattr(config, "workerinput", None) is None:  # the controller, at the very end
        import shutil

        shutil.rmtree(own, ignore_errors=True)


def pytest_collection_finish(session):
    """xdist's loadgroup tags each node id with ``@group`` on the worker; pytest 9.2 with
    pytest-xdist 3.8 silently stopped doing so (pytest-dev/pytest-xdist#1386), and the suite
    then ran every module fixture once per worker. Say so instead of running slowly."""
    config, items = session.config, session.items
    if getattr(config, "workerinput", None) is None or not config.getvalue("loadgroup"):
        return
    if items and not any("@" in item.nodeid for item in items):
        import warnings

        warnings.warn(
            "pytest-xdist did not apply the xdist_group marks (pytest-dev/pytest-xdist#1386): "
            "module fixtures will run once per worker and the suite will be slower; install "
            "the versions pinned in pyproject.toml ('pip install -e .[test]').",
            stacklevel=1,
        )


# Each compiled XLA executable maps its code into memory. A long-lived xdist worker that
# compiles hundreds of stiff-solver programs grew to 11k memory mappings after three test files
# (measured with /proc/self/maps), towards Linux's default limit of 65530 (vm.max_map_count);
# past it LLVM's code allocation fails and XLA crashes inside a compile (a segfault seen twice,
# always late in a worker's life, never reproducible alone). After each test module, a worker
# with many mappings drops the compiled programs it holds (they are recompiled if needed).
_MAPS_LIMIT = 20000


def _n_mappings() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    yield
    if _n_mappings() > _MAPS_LIMIT:
        import gc

        jax.clear_caches()
        gc.collect()
