"""A Dask LocalCluster with 2 workers runs a small cohort; a corrupted study is reported."""

import shutil

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from twin.imaging.phantom import simulate_phantom, write_phantom

    root = tmp_path_factory.mktemp("cohort")
    # the coarsest synthetic patient that keeps every region (13.2 mm voxels), SPECT only
    ph = simulate_phantom(spacing_mm=13.2, pet_time_h=None, seed=0)
    write_phantom(ph, root / "phantom")
    studies = root / "studies"
    for name in ("patient-a", "patient-b", "patient-c"):
        shutil.copytree(root / "phantom" / "dicom", studies / name)
    # corrupt patient-c: every SPECT file truncated to garbage
    for f in (studies / "patient-c").rglob("*"):
        if f.is_file() and f.parent.name.startswith("NM"):
            f.write_bytes(b"not a DICOM file")
    return studies, ph.settings["spect_calibration_cps_per_mbq"]


@pytest.mark.slow
def test_local_cluster_cohort_with_a_corrupted_study(cohort, tmp_path, capsys):
    """``twin cohort`` on a LocalCluster of 2 workers: 2 studies complete, the corrupted one is
    reported (status table and stderr), exit code 0."""
    from twin.cli import main

    studies, cal = cohort
    out = tmp_path / "out"
    rc = main(["cohort", str(studies), "--out", str(out), "--workers", "2", "--retries", "1",
               "--spect-calibration", str(cal), "--no-progress"])
    assert rc == 0
    assert "patient-c failed" in capsys.readouterr().err
    status = pd.read_csv(out / "cohort_status.csv", keep_default_na=False)
    st = status.set_index("patient")["status"].to_dict()
    assert st == {"patient-a": "ok", "patient-b": "ok", "patient-c": "failed"}
    assert status.loc[status.patient == "patient-c", "error"].iloc[0] != ""
    table = pd.read_csv(out / "cohort_regions.csv")
    assert set(table.patient) == {"patient-a", "patient-b"}
    kid = table[table.region == "Kidney"].set_index("patient")
    # the two copies of the same study give the same kidney TIA
    assert kid.tia_mbq_h["patient-a"] == pytest.approx(kid.tia_mbq_h["patient-b"], rel=1e-12)
    assert (kid.tia_mbq_h > 0).all() and (kid.dose_gy > 0).all()
