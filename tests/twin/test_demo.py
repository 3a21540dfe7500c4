"""The demo end to end: the twin drives the synthetic DICOM patient, which is read back,
observed and dosed; the same seed gives identical tables."""

import json

import pandas as pd
import pytest

from twin.cli import main


@pytest.mark.slow
def test_demo_quick_is_reproducible_and_complete(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["demo", "--quick", "--out", str(a), "--seed", "3"]) == 0
    assert main(["demo", "--quick", "--out", str(b), "--seed", "3"]) == 0
    for name in ("regions.csv", "observations.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(a / name), pd.read_csv(b / name))
    for name in ("dose.nii.gz", "dose_rtdose.dcm", "provenance.json"):
        assert (a / name).is_file()
    regions = pd.read_csv(a / "regions.csv").set_index("region")
    # the voxel dose of the kidneys agrees with the twin's self-dose within 30% (cross-dose,
    # partial volume of the SPECT pattern and the kernel's spread make the difference)
    self_dose = regions.loc["Kidney", "dose_gy_per_gbq"] * 7.4
    assert regions.loc["Kidney", "mean_gy"] == pytest.approx(self_dose, rel=0.3)
    obs = pd.read_csv(a / "observations.csv")
    assert set(obs["modality"]) == {"PET", "SPECT"}
    # the PET at 1 h sees 68Ga-PSMA-11, the SPECTs 177Lu-PSMA-617
    assert set(obs["radiopharmaceutical"]) == {"ga68-psma-11", "lu177-psma-617"}
    prov = json.loads((a / "provenance.json").read_text())
    assert prov["seed"] == 3 and prov["model"]["name"] == "psma-pbrpk"


def test_demo_refuses_a_file_as_output(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--out", str(f)]) == 2
    assert "not a folder" in capsys.readouterr().err
