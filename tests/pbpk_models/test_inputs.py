"""Bad input: clear errors naming the problem, and nothing written."""

import pytest

from pbpk_models import units as u
from pbpk_models.errors import InputError
from pbpk_models.library import build_spec
from pbpk_models.radionuclides import (energy_per_decay_mev, half_life_h, normalise_nuclide,
                                       parse_radiopharmaceutical)
from pbpk_models.regimen import Regimen
from twin.cli import main


def test_nuclide_data_from_packages():
    # ICRP 107: 177Lu half-life 6.647 d; electrons 0.14792 MeV, photons 0.03510 MeV per decay
    assert half_life_h("Lu-177") == pytest.approx(6.647 * 24)
    assert energy_per_decay_mev("Lu-177") == pytest.approx(0.14792, rel=1e-3)
    assert energy_per_decay_mev("Lu-177", "penetrating") == pytest.approx(0.03510, rel=1e-3)
    assert normalise_nuclide("177Lu") == normalise_nuclide("lu177") == "Lu-177"
    rp = parse_radiopharmaceutical("ga68-psma-11")
    assert (rp.nuclide, rp.ligand) == ("Ga-68", "psma-11")
    with pytest.raises(InputError):
        parse_radiopharmaceutical("psma")


def test_units_parse():
    assert u.parse_quantity("0.368/min", "1/h") == pytest.approx(22.08)
    assert u.parse_quantity("14 nmol/L", "nmol/mL") == pytest.approx(0.014)
    with pytest.raises(InputError, match="not a unit of"):
        u.parse_quantity("3 mL", "1/h")
    with pytest.raises(InputError, match="unknown unit"):
        u.parse_quantity("3 furlongs", "1/h")


def test_unknown_parameter_suggests_names():
    spec = build_spec("psma-pbrpk")
    with pytest.raises(InputError, match="Rden_Kidney"):
        spec.with_values({"Rden_Kidny": 1.0})
    with pytest.raises(InputError, match="unknown model"):
        build_spec("psma")


def test_ligand_below_labelled_amount():
    from pbpk_models.model import compile_model

    model = compile_model(build_spec("psma-pbrpk"), ("lu177-psma-617",))
    reg = Regimen.single("lu177-psma-617", 7400.0, ligand_nmol=1.0)
    with pytest.raises(InputError, match="less than the labelled amount"):
        reg.dose_arrays(model)


def test_negative_activity_rejected():
    with pytest.raises(InputError, match="negative"):
        Regimen.single("lu177-psma-617", -5.0, ligand_nmol=10.0)


@pytest.mark.parametrize("argv,message", [
    (["--hot-nmol", "10", "--cold-nmol", "100", "--set", "Rden_Kidny=3"], "no parameter"),
    (["--hot-nmol", "-1", "--cold-nmol", "100"], "non-negative"),
    (["--hot-nmol", "10", "--cold-nmol", "100", "--set", "fF_Muscle=0.95"], "negative"),
    (["--hot-nmol", "10", "--cold-nmol", "100", "--set", "k_off=3mL"], "not a unit"),
])
def test_cli_errors_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out.csv"
    rc = main(["simulate", "--model", "psma-pbrpk", *argv, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,message", [
    ("time_h,radiopharmaceutical,activity_mbq\n0,lu177-psma-617,7400\n", "missing column"),
    ("time_h,radiopharmaceutical,activity_mbq,ligand_nmol\n", "no administrations"),
    ("time_h,radiopharmaceutical,activity_mbq,ligand_nmol\nx,lu177-psma-617,7400,57\n",
     "must be numbers"),
    ("time_h,radiopharmaceutical,activity_mbq,ligand_nmol\n0,lu177-psma-617,7400,2\n",
     "less than the labelled"),
    ("time_h,radiopharmaceutical,activity_mbq,ligand_nmol\n0,xx-yy,7400,57\n", "nuclide"),
])
def test_malformed_regimen_csv(tmp_path, capsys, content, message):
    reg = tmp_path / "regimen.csv"
    reg.write_text(content)
    out = tmp_path / "out.csv"
    rc = main(["simulate", "--model", "psma-pbrpk", "--regimen", str(reg), "--out", str(out)])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert reg.read_text() == content  # input untouched


def test_cli_simulate_writes_table(tmp_path):
    import pandas as pd

    out = tmp_path / "tia.csv"
    reg = tmp_path / "regimen.csv"
    reg.write_text("time_h,radiopharmaceutical,activity_mbq,ligand_nmol\n"
                   "0,lu177-psma-617,7400,57.09\n1008,lu177-psma-617,7400,57.09\n")
    assert main(["simulate", "--model", "psma-pbrpk", "--regimen", str(reg), "--days", "20",
                 "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns[:4]) == ["region", "tia_mbq_h", "tiac_h", "dose_gy_per_gbq"]
    assert len(df) == 20 and (df["tia_mbq_h"] > 0).all()
    kidney = df.set_index("region").loc["Kidney"]
    # regimen dose = TIA x self-dose S value; the per-GBq column is per administered GBq
    assert kidney["dose_gy"] == pytest.approx(kidney["dose_gy_per_gbq"] * 14.8, rel=1e-6)
    # BED of two cycles exceeds the dose, and is close to the mono-exponential closed form
    # (Dale 1985) with the kidney's late effective half-life: within 5%
    from twin.dosimetry.radiobiology import bed_monoexponential

    assert kidney["bed_gy"] > kidney["dose_gy"]
    per_cycle = kidney["dose_gy"] / 2
    closed = 2 * bed_monoexponential(per_cycle, 0.693 / 42.0, 2.6, 2.8)
    assert kidney["bed_gy"] == pytest.approx(closed, rel=0.05)
