"""Cohorts on Dask: a LocalCluster with 2 workers runs the whole pipeline per patient (``twin
cohort --config``, the ``twin run`` TOML format); a corrupted study is reported, never fatal.

The studies are the demo's synthetic patient at the demo's quick settings (6.6 mm voxels,
``twin demo --quick``'s configuration with fewer posterior samples and no MBAM display): two
copies of one study and one corrupted copy. The ground truth of the synthetic patient (the
region TIA of the twin that generated its images) is the independent reference.
"""

import shutil

import numpy as np
import pandas as pd
import pytest

CONFIG = """
[model]
name = "psma-pbrpk"
variant = "corrected"

[radiopharmaceuticals]
therapy = "lu177-psma-617"
ligand_nmol = {{ "ga68-psma-11" = {pet_nmol}, "lu177-psma-617" = {therapy_nmol} }}

[imaging]
spect_calibration_cps_per_mbq = {cal}

[prediction]
samples = 8
seed = 0

[reduce]
enabled = false
"""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from twin.cli.demo import PET_NMOL, QUICK_SPACING_MM, THERAPY_NMOL, synthetic_study

    root = tmp_path_factory.mktemp("cohort")
    phantom, truth = synthetic_study(root / "demo", QUICK_SPACING_MM, 0)
    studies = root / "studies"
    for name in ("patient-a", "patient-b", "patient-c"):
        shutil.copytree(root / "demo" / "dicom", studies / name)
    # corrupt patient-c: every SPECT file replaced by garbage
    for f in (studies / "patient-c").rglob("*"):
        if f.is_file() and f.parent.name.startswith("NM"):
            f.write_bytes(b"not a DICOM file")
    cal = phantom.settings["spect_calibration_cps_per_mbq"]
    config = root / "cohort.toml"
    config.write_text(CONFIG.format(pet_nmol=PET_NMOL, therapy_nmol=THERAPY_NMOL, cal=cal))
    return studies, cal, config, truth


@pytest.mark.slow
def test_local_cluster_pipeline_cohort_with_a_corrupted_study(cohort, tmp_path, capsys):
    """``twin cohort --config`` on a LocalCluster of 2 workers: each patient through
    run_pipeline (calibration.fit); 2 studies complete with their reports, the corrupted one is
    reported (status table and stderr) and leaves no output; exit code 0."""
    from twin.cli import main

    studies, _cal, config, truth = cohort
    out = tmp_path / "out"
    rc = main(["cohort", str(studies), "--out", str(out), "--config", str(config),
               "--workers", "2", "--retries", "1", "--no-progress"])
    assert rc == 0
    assert "patient-c failed" in capsys.readouterr().err
    status = pd.read_csv(out / "cohort_status.csv", keep_default_na=False)
    st = status.set_index("patient")["status"].to_dict()
    assert st == {"patient-a": "ok", "patient-b": "ok", "patient-c": "failed"}
    assert set(status.method) == {"pipeline"}
    assert status.loc[status.patient == "patient-c", "error"].iloc[0] != ""
    # per-patient pipeline outputs; nothing left of the failed patient
    for p in ("patient-a", "patient-b"):
        for f in ("report.html", "regions.csv", "twin.json", "provenance.json"):
            assert (out / "patients" / p / f).is_file()
    assert sorted(x.name for x in (out / "patients").iterdir()) == ["patient-a", "patient-b"]
    table = pd.read_csv(out / "cohort_regions.csv")
    assert set(table.patient) == {"patient-a", "patient-b"}
    assert {"dose_gy_per_gbq", "mean_gy", "tia_low", "tia_high"} <= set(table.columns)
    kid = table[table.region == "Kidney"].set_index("patient")
    # the two copies of the same study give the same calibrated kidney TIA
    assert kid.tia_mbq_h["patient-a"] == pytest.approx(kid.tia_mbq_h["patient-b"], rel=1e-9)
    # the calibrated twin recovers the synthetic patient's true kidney TIA
    assert kid.tia_mbq_h["patient-a"] == pytest.approx(truth["Kidney"], rel=0.25)
    assert (kid.tia_low <= kid.tia_mbq_h).all() and (kid.tia_mbq_h <= kid.tia_high).all()
    assert (kid.dose_gy > 0).all() and (kid.volume_ml > 0).all()
    # the cohort table is the pipeline's own regions.csv of the patient
    own = pd.read_csv(out / "patients" / "patient-a" / "regions.csv").set_index("region")
    assert kid.tia_mbq_h["patient-a"] == pytest.approx(own.tia_mbq_h["Kidney"], rel=1e-12)


def test_kinetics_method_on_one_study(cohort):
    """The lighter method (no calibration), still available: region TIA by exponential fits of
    the SPECT series, near the synthetic patient's truth for the kidney."""
    from twin.trials.cohort import process_study

    studies, cal, _config, truth = cohort
    res = process_study(studies / "patient-a", cal)
    rows = pd.DataFrame(res["regions"]).set_index("region")
    assert res["patient"] == "patient-a"
    assert rows.tia_mbq_h["Kidney"] == pytest.approx(truth["Kidney"], rel=0.3)
    assert np.isfinite(rows.dose_gy["Kidney"]) and rows.dose_gy["Kidney"] > 0
    with pytest.raises(Exception):
        process_study(studies / "patient-c", cal)


def test_cohort_cli_config_errors(cohort, tmp_path, capsys):
    from twin.cli import main

    studies, _cal, config, _truth = cohort
    rc = main(["cohort", str(studies), "--out", str(tmp_path / "o"), "--config",
               str(tmp_path / "missing.toml")])
    err = capsys.readouterr().err
    assert rc != 0 and "not found" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    rc = main(["cohort", str(studies), "--out", str(tmp_path / "o"), "--config", str(config),
               "--method", "kinetics"])
    assert rc != 0 and "--config" in capsys.readouterr().err
    rc = main(["cohort", str(studies), "--out", str(studies / "inside"), "--config",
               str(config)])
    assert rc != 0 and "inside" in capsys.readouterr().err
    assert not (studies / "inside").exists()
    # the fixed interface without --config runs the whole pipeline too (twin run's defaults):
    # the pipeline's own check of the output folder fires, the kinetics method has none
    rc = main(["cohort", str(studies), "--out", str(studies / "inside")])
    assert rc != 0 and "inside" in capsys.readouterr().err
    assert not (studies / "inside").exists()


def test_run_cohort_defaults_to_the_pipeline(cohort):
    from twin.errors import InputError
    from twin.trials.cohort import run_cohort

    studies, _cal, _config, _truth = cohort
    with pytest.raises(InputError, match="give out"):
        run_cohort(studies)
    with pytest.raises(InputError, match="method must be one of"):
        run_cohort(studies, method="exponential", out=studies.parent / "o")
