"""``twin run`` on the demo's own DICOM folder, with a config written as a user would, gives the
same results as the demo; the documented example config parses; bad configs fail cleanly."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.twin.demo_fixture import (  # noqa: F401
    DEMO_SEED,
    assert_complete_outputs,
    demo_dir,
    reduced_doc,
    user_config,
)
from twin.cli import main

ROOT = Path(__file__).resolve().parents[2]

@pytest.mark.slow
def test_run_on_the_demo_dicom_gives_the_demo_results_and_a_plan(demo_dir, tmp_path):  # noqa: F811
    """One ``twin run`` on the demo's DICOM, config written as a user would, with the planning
    stage and a given REDUCED.json:
    - the same tables and twin as the demo (same DICOM, same seeds);
    - plan.csv (a regimen file) and plan_summary.csv; the plan holds its limit at the 95th
      percentile, and replaying plan.csv through the independent Kvaerno5 solve at the twin's
      MAP keeps the kidney BED under 40 Gy;
    - the report shows the reduction's MBAM steps; provenance records its hash."""
    red = tmp_path / "REDUCED.json"
    red.write_text(json.dumps(reduced_doc()))
    cfg = tmp_path / "my_config.toml"
    # the planner at its smallest (8 posterior samples, the minimum for a quantile; 2 cycles
    # in total, the delivered one included): the stage's wiring is what is tested here, the
    # planner itself in tests/twin/planning/test_planning.py
    extra = ('[plan]\nenabled = true\nlimits = ["Kidney:bed_gy<=40"]\nmax_cycles = 2\n'
             'activity_gbq = [3.7, 9.25]\nsamples = 8\n\n[reduce]\nfile = "REDUCED.json"')
    cfg.write_text(user_config(DEMO_SEED, "\n" + extra + "\n"))
    out = tmp_path / "results"
    assert main(["run", str(demo_dir / "study" / "dicom"), "--config", str(cfg),
                 "--out", str(out)]) == 0
    for name in ("regions.csv", "observations.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(demo_dir / name), pd.read_csv(out / name))
    from calibration import read_twin

    a, ra = read_twin(demo_dir / "twin.json")
    post, rb = read_twin(out / "twin.json")
    np.testing.assert_array_equal(a.theta_map, post.theta_map)
    np.testing.assert_array_equal(a.cov_log, post.cov_log)
    pd.testing.assert_frame_equal(ra.to_frame(), rb.to_frame())
    assert_complete_outputs(out)
    text = (out / "report.html").read_text()
    assert "<h3>MBAM steps</h3>" in text and "lambdaRel_Kidney -&gt; 0" in text
    assert "this study&#x27;s fit" in text or "this study's fit" in text
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["reduction"]["parameters"] == "7 -> 5"
    assert len(prov["input_sha256_16"]["reduction"]) == 16

    # the plan
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import simulate
    from twin.dosimetry.radiobiology import bed, tissue

    plan = Regimen.from_csv(out / "plan.csv")
    # the [plan] settings are honoured: at most 2 cycles (the delivered one counts), 3.7-9.25 GBq
    assert 1 <= len(plan.administrations) <= 2
    assert all(3700 - 1e-6 <= a.activity_mbq <= 9250 + 1e-6 for a in plan.administrations)
    summary = pd.read_csv(out / "plan_summary.csv").set_index("region")
    assert summary.loc["Kidney", "margin_gy"] >= 0
    assert "cumulative BED per cycle" in text
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
                 "level", "days", "limits", "volumes_from_masks", "pvc", "fwhm_mm"):
        assert getattr(cfg, name) == getattr(demo, name), name
    assert cfg.region_map["kidneys"] == "Kidney" and cfg.region_map["lesion 1"] == "Tumor1"
    assert cfg.calibration_rel == {"PET": 0.05, "SPECT": 0.10}
    assert cfg.reduce is True and cfg.reduction is None  # the shipped reduction
    assert title


@pytest.mark.parametrize("text,message", [
    ("[model]\nnmae = 'psma-pbrpk'\n", "unknown key 'nmae'"),
    ("[modle]\nname = 'psma-pbrpk'\n", "unknown section [modle]"),
    ("[prediction]\nsamples = 'many'\n", "expected a int"),
    ("[limits]\nKidney = -1\n", "positive"),
    ("[fit]\nscans = 'some'\n", "fit scans must be one of"),
    ("[model\n", "not valid TOML"),
    ("[reduce]\nfile = 'nope.json'\n", "does not exist"),
    ("[imaging]\npvc = 'gtm'\n", "needs pet_fwhm_mm"),
    ("[imaging]\npvc = 'rbv'\n", "must be"),
    ("[reduce]\nenabled = 'yes'\n", "expected a bool"),
    ("[plan]\nenabled = true\nmax_cycles = 0\n", "max_cycles must be a positive integer"),
    ("[plan]\nenabled = true\nactivity_gbq = [3.7]\n", "activity_gbq must be [low, high]"),
    ("[plan]\nenabled = true\nactivity_gbq = [9.0, 4.0]\n", "contradictory activity bounds"),
    ("[plan]\nactivity_gbq = ['a', 'b']\n", "expected a float"),
    ("[plan]\nquantile = 'high'\n", "expected a float"),
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
