"""``twin trial`` and ``twin cohort``: the fixed interface and bad input."""

import pandas as pd
import pytest

from twin.cli import main

LEVELS = "3.7,5.55,7.4,9.25,11.1"


def test_trial_on_dlt_probabilities(tmp_path, capsys):
    out = tmp_path / "oc"
    rc = main(["trial", "--design", "3+3", "--radiopharmaceutical", "lu177-psma-617",
               "--levels-gbq", LEVELS, "--dlt-probabilities", "0.05,0.1,0.2,0.35,0.5",
               "--n-trials", "500", "--seed", "1", "--out", str(out)])
    assert rc == 0
    t = pd.read_csv(out / "operating_characteristics.csv")
    assert list(t.columns[:5]) == ["level", "activity_gbq", "p_select_mtd", "mean_patients",
                                   "p_dlt_observed"]
    assert t.level.tolist() == [1, 2, 3, 4, 5]
    assert t.activity_gbq.tolist() == [3.7, 5.55, 7.4, 9.25, 11.1]
    assert 0.9 < t.p_select_mtd.sum() <= 1.0
    assert (out / "operating_characteristics.png").stat().st_size > 1000
    # same seed, same table
    rc = main(["trial", "--design", "3+3", "--levels-gbq", LEVELS, "--dlt-probabilities",
               "0.05,0.1,0.2,0.35,0.5", "--n-trials", "500", "--seed", "1", "--out",
               str(tmp_path / "again")])
    assert pd.read_csv(tmp_path / "again" / "operating_characteristics.csv").equals(t)


@pytest.mark.parametrize("args, msg", [
    (["--design", "4+4", "--levels-gbq", LEVELS, "--dlt-probabilities", "0.1,0.2,0.3,0.4,0.5"],
     "unknown design"),
    (["--design", "boin", "--levels-gbq", "3.7,7.4,5.55", "--dlt-probabilities", "0.1,0.2,0.3"],
     "increase"),
    (["--design", "crm", "--levels-gbq", "3.7,7.4", "--dlt-probabilities", "0.1,1.5"],
     "[0, 1]"),
    (["--design", "crm", "--levels-gbq", "3.7,7.4", "--dlt-probabilities", "0.1"],
     "one DLT probability per level"),
    (["--design", "3+3", "--levels-gbq", "3.7,x", "--dlt-probabilities", "0.1,0.2"],
     "comma-separated numbers"),
    (["--design", "3+3", "--levels-gbq", "3.7,7.4", "--population", "martian"],
     "unknown population"),
])
def test_trial_bad_input(tmp_path, capsys, args, msg):
    out = tmp_path / "o"
    rc = main(["trial", *args, "--n-trials", "10", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cohort_bad_input(tmp_path, capsys):
    rc = main(["cohort", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and "does not exist" in err and not (tmp_path / "o").exists()
    rc = main(["cohort", str(tmp_path), "--out", str(tmp_path / "o"), "--scheduler", "nowhere"])
    assert rc != 0 and "tcp://" in capsys.readouterr().err


@pytest.mark.slow
def test_trial_on_the_net_population(tmp_path, capsys):
    """``twin trial --population net --radiopharmaceutical lu177-dotatate``: a small pool; the
    population's kidney dose per GBq lies in the published 177Lu-DOTATATE range (means 0.38 to
    0.57 Gy/GBq in four cohorts, clinical_reference.md) and the schedule is NETTER-1's."""
    import json

    out = tmp_path / "net"
    rc = main(["trial", "--design", "3+3", "--radiopharmaceutical", "lu177-dotatate",
               "--levels-gbq", "5.55,7.4", "--population", "net", "--pool-size", "12",
               "--n-trials", "40", "--seed", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    t = pd.read_csv(out / "operating_characteristics.csv")
    assert t.activity_gbq.tolist() == [5.55, 7.4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["population"] == "net" and summary["cycles"] == 4
    assert summary["interval_weeks"] == 8.0
    assert summary["radiopharmaceutical"] == "lu177-dotatate"
    pool = pd.read_csv(out / "pool.csv")
    at = pool[pool.activity_gbq == 7.4]
    gy_per_gbq = at.kidney_dose_gy / (7.4 * 4)
    assert 0.3 < gy_per_gbq.mean() < 0.7
    assert 0.1 < gy_per_gbq.std() / gy_per_gbq.mean() < 0.6
    # the NET response model gives probabilities, not 0/1 (logistic, Alipour 2023)
    assert ((at.response > 0) & (at.response < 1)).all()
    cov = pd.read_csv(out / "population.csv")
    assert set(cov.sex) <= {"M", "F"} and len(cov) == 12


def test_trial_population_radiopharmaceutical_mismatch(tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["trial", "--design", "3+3", "--radiopharmaceutical", "lu177-psma-617",
               "--levels-gbq", "3.7,7.4", "--population", "net", "--n-trials", "10",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and "lu177-dotatate" in err and "Traceback" not in err
    assert not out.exists()
