"""One quick demo run shared by the demo, run and report tests (one per test process).

Import ``demo_dir`` into a test module to use it; the run is cached at module level so that
the modules that import the fixture share it.
"""

import json

import pytest

DEMO_SEED = 3
_CACHE: dict = {}


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    if "dir" not in _CACHE:
        from twin.cli import main

        out = tmp_path_factory.mktemp("demo") / "out"
        assert main(["demo", "--quick", "--out", str(out), "--seed", str(DEMO_SEED)]) == 0
        _CACHE["dir"] = out
    return _CACHE["dir"]


def assert_complete_outputs(folder):
    """Every file under ``folder`` is complete and readable; no temporary file is left."""
    from pathlib import Path

    import pandas as pd
    import pydicom
    import SimpleITK as sitk

    folder = Path(folder)
    for p in folder.rglob("*"):
        assert ".tmp" not in p.name, f"temporary file left: {p}"
        if not p.is_file():
            continue
        if p.suffix == ".csv":
            assert len(pd.read_csv(p).columns) > 0, p
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.name.endswith(".nii.gz"):
            assert sitk.GetArrayFromImage(sitk.ReadImage(str(p))).size > 0, p
        elif p.suffix == ".dcm":
            ds = pydicom.dcmread(p)
            assert ds.pixel_array.size > 0 if "PixelData" in ds else True, p
        elif p.suffix == ".html":
            text = p.read_text()
            assert text.rstrip().endswith("</html>"), p
        else:
            assert p.stat().st_size > 0, p
