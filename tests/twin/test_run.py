"""``twin run`` on the demo's own DICOM folder, with a config written as a user would, gives the
same results as the demo; the documented example config parses; bad configs fail cleanly."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.twin.demo_fixture import DEMO_SEED, assert_complete_outputs, demo_dir  # noqa: F401
from twin.cli import main

ROOT = Path(__file__).resolve().parents[2]

USER_CONFIG = f"""
# my study: PSMA PET, then one 7.4 GBq cycle with SPECT/CT at 4, 24, 96 and 168 h
[model]
name = "psma-pbrpk"
variant = "corrected"

[radiopharmaceuticals]
therapy = "lu177-psma-617"
ligand_nmol = {{ "ga68-psma-11" = 3.0, "lu177-psma-617" = 57.09 }}

[imaging]
spect_calibration_cps_per_mbq = 20.0

[fit]
seed = {DEMO_SEED}

[prediction]
samples = 60
seed = {DEMO_SEED}
"""


@pytest.mark.slow
def test_run_on_the_demo_dicom_gives_the_demo_results(demo_dir, tmp_path):  # noqa: F811
    cfg = tmp_path / "my_config.toml"
    cfg.write_text(USER_CONFIG)
    out = tmp_path / "results"
    assert main(["run", str(demo_dir / "study" / "dicom"), "--config", str(cfg),
                 "--out", str(out)]) == 0
    for name in ("regions.csv", "observations.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(demo_dir / name), pd.read_csv(out / name))
    from calibration import read_twin

    a, ra = read_twin(demo_dir / "twin.json")
    b, rb = read_twin(out / "twin.json")
    np.testing.assert_array_equal(a.theta_map, b.theta_map)
    pd.testing.assert_frame_equal(ra.to_frame(), rb.to_frame())
    assert (out / "report.html").is_file()
    assert_complete_outputs(out)


@pytest.mark.slow
def test_plan_stage_writes_a_plan_that_meets_its_limits(demo_dir, tmp_path):  # noqa: F811
    """With [plan] enabled the pipeline writes plan.csv (a regimen file) and plan_summary.csv;
    the plan holds its limits at the 95th percentile, and replaying plan.csv through the
    independent Kvaerno5 solve at the twin's MAP keeps the kidney BED under 40 Gy."""
    from calibration import read_twin
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import simulate
    from twin.dosimetry.radiobiology import bed, tissue

    cfg = tmp_path / "plan.toml"
    cfg.write_text(USER_CONFIG + '\n[plan]\nenabled = true\nlimits = ["Kidney:bed_gy<=40"]\n')
    out = tmp_path / "planned"
    assert main(["run", str(demo_dir / "study" / "dicom"), "--config", str(cfg),
                 "--out", str(out)]) == 0
    plan = Regimen.from_csv(out / "plan.csv")
    assert 1 <= len(plan.administrations) <= 6
    assert all(3700 - 1e-6 <= a.activity_mbq <= 11100 + 1e-6 for a in plan.administrations)
    summary = pd.read_csv(out / "plan_summary.csv").set_index("region")
    assert summary.loc["Kidney", "margin_gy"] >= 0
    assert "cumulative BED per cycle" in (out / "report.html").read_text()
    post, _ = read_twin(out / "twin.json")
    from calibration import model_spec

    spec = model_spec(post.model_name, post.variant).with_values({**post.fixed,
                                                                  **post.map_values})
    t = np.concatenate([a.time_h + np.geomspace(1e-3, 1000.0, 400)
                        for a in plan.administrations])
    res = simulate(spec, plan, times_h=np.unique(t))
    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u

    from pbpk_models.model import compile_model

    model_mass = compile_model(spec, ("lu177-psma-617",)).region_masses_g()["Kidney"]
    rate = res.activity("Kidney") * u.gy_per_mbq_h(rn.energy_per_decay_mev("Lu-177"),
                                                    model_mass)
    k = tissue("kidney")
    kidney_bed = bed(res.times_h, rate, k.alpha_beta_gy, k.repair_half_time_h)
    assert kidney_bed <= 40.0 * 1.01


def test_the_example_config_parses_and_matches_the_demo():
    from twin.cli.demo import demo_config
    from twin.cli.run import load_config

    cfg, title = load_config(ROOT / "docs" / "run_config_example.toml")
    demo = demo_config(quick=False, seed=0, spect_calibration_cps_per_mbq=20.0)
    for name in ("model", "variant", "therapy", "ligand_nmol", "spect_calibration_cps_per_mbq",
                 "fit_scans", "starts", "max_nfev", "fit_seed", "samples", "sample_seed",
                 "level", "days", "limits", "volumes_from_masks"):
        assert getattr(cfg, name) == getattr(demo, name), name
    assert cfg.region_map["kidneys"] == "Kidney" and cfg.region_map["lesion 1"] == "Tumor1"
    assert cfg.calibration_rel == {"PET": 0.05, "SPECT": 0.10}
    assert title


@pytest.mark.parametrize("text,message", [
    ("[model]\nnmae = 'psma-pbrpk'\n", "unknown key 'nmae'"),
    ("[modle]\nname = 'psma-pbrpk'\n", "unknown section [modle]"),
    ("[prediction]\nsamples = 'many'\n", "expected a int"),
    ("[limits]\nKidney = -1\n", "positive"),
    ("[fit]\nscans = 'some'\n", "fit scans must be one of"),
    ("[model\n", "not valid TOML"),
])
def test_bad_config_is_a_one_line_error(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    study = tmp_path / "study"
    study.mkdir()
    out = tmp_path / "out"
    assert main(["run", str(study), "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_run_refuses_missing_study_and_output_inside_it(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    assert main(["run", str(tmp_path / "nope"), "--config", str(cfg), "--out",
                 str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    study = tmp_path / "study"
    study.mkdir()
    assert main(["run", str(study), "--config", str(cfg), "--out", str(study / "o")]) == 2
    assert "inside the study" in capsys.readouterr().err
