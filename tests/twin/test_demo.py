"""The demo end to end: the twin drives the synthetic DICOM patient, which is read back,
observed, calibrated and dosed; the same seed gives identical tables; Ctrl-C leaves only
complete files.

One quick demo run is shared by the tests of this module and by tests/twin/test_run.py and
tests/twin/test_report.py (the session fixture ``demo_dir`` of tests/twin/demo_fixture.py); no
test runs a second demo.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.twin.demo_fixture import (  # noqa: F401
    DEMO_SEED,
    assert_complete_outputs,
    demo_dir,
    user_config,
)
from twin.cli import main

pytestmark = pytest.mark.slow


def test_demo_outputs_are_complete(demo_dir):  # noqa: F811
    for name in ("report.html", "regions.csv", "observations.csv", "twin.json", "dose.nii.gz",
                 "dose_rtdose.dcm", "provenance.json"):
        assert (demo_dir / name).is_file(), name
    assert_complete_outputs(demo_dir)
    prov = json.loads((demo_dir / "provenance.json").read_text())
    assert prov["demo"]["seed"] == DEMO_SEED and prov["model"]["name"] == "psma-pbrpk"
    for stage in ("truth_twin", "phantom", "read_observe", "calibrate", "reduce", "dose",
                  "report"):
        assert prov["timings_s"][f"{stage}_s"] >= 0
        assert prov["timings_s"][f"{stage}_cpu_s"] >= 0
    assert prov["input_sha256_16"]["study"]
    # the MBAM stage: the shipped reduction, or a note saying there is none
    assert prov["reduction"]["file"] or "no shipped reduction" in prov["reduction"]["note"]


def test_demo_calibration_recovers_the_truth_within_its_bands(demo_dir):  # noqa: F811
    """The fitted twin's kidney TIA is near the synthetic patient's true TIA (the truth folder
    written by the phantom), and the organ dose is consistent with the twin's self-dose."""
    regions = pd.read_csv(demo_dir / "regions.csv").set_index("region")
    truth = pd.read_csv(demo_dir / "study" / "truth" / "tacs.csv")
    kid = truth[(truth["radiopharmaceutical"] == "lu177-psma-617") & (truth["region"] == "Kidney")]
    from scipy.integrate import trapezoid

    # the synthetic patient's true kidney TIA: its dense true curve (from the therapy on)
    true_tia = trapezoid(kid["activity_mbq"], kid["time_h"])
    k = regions.loc["Kidney"]
    assert k["tia_low"] <= k["tia_mbq_h"] <= k["tia_high"]
    # fitted on the PET and the 4 h SPECT only: the kidney TIA is within 25% of the truth
    assert k["tia_mbq_h"] == pytest.approx(true_tia, rel=0.25)
    # with the partial-volume correction (GTM) small regions are not biased low: the salivary
    # glands and lesions within 20% of the truth (uncorrected they fell 30-57% below it)
    lu = truth[truth["radiopharmaceutical"] == "lu177-psma-617"]
    for r in ("SG", "Tumor1", "Tumor2"):
        curve = lu[lu["region"] == r]
        true_r = trapezoid(curve["activity_mbq"], curve["time_h"])
        assert regions.loc[r, "tia_mbq_h"] == pytest.approx(true_r, rel=0.20), r
    # voxel mean dose vs the twin's own self-dose: within 30% (cross-dose, partial volume and
    # the kernel's spread make the difference)
    assert k["mean_gy"] == pytest.approx(k["dose_gy"], rel=0.3)
    assert k["limit_gy"] == 23.0
    assert k["fraction_of_limit"] == pytest.approx(k["mean_gy"] / 23.0)
    obs = pd.read_csv(demo_dir / "observations.csv")
    assert set(obs["modality"]) == {"PET", "SPECT"}
    assert set(obs["radiopharmaceutical"]) == {"ga68-psma-11", "lu177-psma-617"}


def test_demo_twice_with_the_same_seed_gives_identical_tables(demo_dir, tmp_path):  # noqa: F811
    """Shown in two halves, without a second 60 s demo: (1) the synthetic study (the demo's
    stages 1-2) made again with the same seed is byte-identical (the folder hash the demo
    recorded) with the same ground truth; (2) the pipeline on identical DICOM gives identical
    tables: ``twin run`` on the demo's DICOM reproduces regions.csv, observations.csv and
    twin.json exactly (tests/twin/test_run.py)."""
    from twin.cli.demo import QUICK_SPACING_MM, synthetic_study
    from twin.pipeline import _folder_hash

    prov = json.loads((demo_dir / "provenance.json").read_text())
    study = tmp_path / "study"
    synthetic_study(study, QUICK_SPACING_MM, DEMO_SEED)
    assert _folder_hash(study / "dicom") == prov["input_sha256_16"]["study"]
    for name in ("tacs.csv",):
        pd.testing.assert_frame_equal(pd.read_csv(demo_dir / "study" / "truth" / name),
                                      pd.read_csv(study / "truth" / name))
    # the hash is not blind: one changed byte in one file changes it
    victim = next(p for p in sorted((study / "dicom").rglob("*")) if p.is_file())
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    assert _folder_hash(study / "dicom") != prov["input_sha256_16"]["study"]


def test_ctrl_c_leaves_no_half_written_file(demo_dir, tmp_path):  # noqa: F811
    """SIGINT while a run is calibrating (after its first outputs): exit 130, a one-line
    message, and every file in the output folder complete; no temporary file left. (``twin
    run`` on the demo's DICOM: the same pipeline and signal handling as ``twin demo``, without
    re-making the synthetic patient.)"""
    cfg = tmp_path / "c.toml"
    cfg.write_text(user_config(DEMO_SEED))
    out = tmp_path / "interrupted"
    env = dict(os.environ, JAX_ENABLE_X64="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "twin.cli", "run",
                             str(demo_dir / "study" / "dicom"), "--config", str(cfg), "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=str(Path(__file__).resolve().parents[2]),
                            # as from a terminal: a suite started in the background of a
                            # non-interactive shell ignores SIGINT, and the child inherits that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 900
        while not (out / "observations.csv").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the run did not reach its first output"
            time.sleep(0.2)
        time.sleep(1.0)  # into the calibration stage
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (out / "report.html").exists()  # interrupted before the report
    assert_complete_outputs(out)


def test_demo_refuses_a_file_as_output(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--out", str(f)]) == 2
    assert "not a folder" in capsys.readouterr().err
