"""One quick demo run shared by the demo, run and report tests (one per test process).

Import ``demo_dir`` into a test module to use it; the run is cached at module level so that
the modules that import the fixture share it (tests/conftest.py keeps the three files on one
xdist worker). Also the user's config for ``twin run`` on the demo's study and a REDUCED.json
document for the MBAM stage.
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


def user_config(seed: int, extra: str = "") -> str:
    """A ``twin run`` config written as a user would for the demo's study (same results)."""
    return f"""
# my study: PSMA PET, then one 7.4 GBq cycle with SPECT/CT at 4, 24, 96 and 168 h
[model]
name = "psma-pbrpk"
variant = "corrected"

[radiopharmaceuticals]
therapy = "lu177-psma-617"
ligand_nmol = {{ "ga68-psma-11" = 3.0, "lu177-psma-617" = 57.09 }}

[imaging]
spect_calibration_cps_per_mbq = 20.0
pvc = "gtm"
pet_fwhm_mm = 6.0
spect_fwhm_mm = 12.0

[fit]
seed = {seed}

[prediction]
samples = 60
seed = {seed}
{extra}"""


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


def reduced_doc(base_model="psma-pbrpk", base_variant="corrected") -> dict:
    """A REDUCED.json document in the format of calibration.mbam.io (two accepted limits and a
    rejected one), for the report and pipeline tests; the numbers are made up (format only)."""
    def step(limit, meaning, left, err, **kw):
        return {"limit": limit, "kind": "zero", "parameters": [limit.split()[0]],
                "meaning": meaning, "method": "symbolic", "parameters_left": left,
                "n_parameters_left": len(left), "worst_error": err,
                "worst_prediction": "TIA Kidney (lu177-psma-617)", **kw}

    full = ["Rden_Kidney", "lambdaRel_Kidney", "Rden_SG", "lambdaRel_SG", "Rden_Tumor1",
            "Rden_Tumor2", "Rden_TumorRest"]
    return {
        "format": "twin-reduced-model", "version": 1, "base_model": base_model,
        "base_variant": base_variant, "n_parameters": 5, "n_parameters_full": 7,
        "limits": [step("lambdaRel_SG -> 0", "irreversible trapping (test)", full[:3] + full[4:],
                        0.004),
                   step("lambdaRel_Kidney -> 0", "irreversible trapping (test)",
                        [full[0], full[2]] + full[4:], 0.012)],
        "rejected": [step("Rden_Tumor2 -> 0", "the organ becomes non-specific (test)",
                          [full[0], full[2], full[4], full[6]], 0.31, rejected=True)],
        "hierarchy": [{"model": 0, "parameters": full, "values": {}, "worst_error": 0.0,
                       "eigenvalues": [10.0 ** (3 - k) for k in range(7)]},
                      {"model": 1, "parameters": full[:3] + full[4:], "values": {},
                       "worst_error": 0.004, "eigenvalues": [10.0 ** (3 - k) for k in range(6)]},
                      {"model": 2, "parameters": [full[0], full[2]] + full[4:], "values": {},
                       "worst_error": 0.012, "eigenvalues": None}],
        "status": "tolerance: the next limit would exceed it", "tolerance": 0.02,
        "protocol": {"observations": [
            {"region": "Kidney", "time_h": 1.0, "modality": "PET", "relative_sigma": 0.1},
            {"region": "Kidney", "time_h": 192.0, "modality": "SPECT", "relative_sigma": 0.15}],
            "preserve": ["Kidney", "SG"]},
        "model": {}}
