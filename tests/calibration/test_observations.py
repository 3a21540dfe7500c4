"""Observations: the table's columns, CSV and DataFrame round trips, validation messages,
the noise model, and the import rule (numpy, pandas, pbpk_models only)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibration import observations as obs_mod
from calibration.observations import COLUMNS, Observations, region_sigma_mbq
from pbpk_models.errors import InputError


def _df(**changes):
    df = pd.DataFrame({
        "region": ["Kidney", "Liver", "Kidney"],
        "time_h": [1.0, 1.0, 24.0],
        "activity_mbq": [2.5, 1.3, 150.0],
        "sigma_mbq": [0.2, 0.1, 15.0],
        "modality": ["PT", "PET", "SPECT"],
        "radiopharmaceutical": ["ga68-psma-11", "Ga68-PSMA-11", "lu177-psma-617"],
    })
    for k, v in changes.items():
        df[k] = v
    return df


def test_columns_are_exactly_the_interface():
    assert COLUMNS == ("region", "time_h", "activity_mbq", "sigma_mbq", "modality",
                       "radiopharmaceutical")


def test_csv_round_trip(tmp_path):
    o = Observations.from_dataframe(_df())
    assert list(o.modality) == ["PET", "PET", "SPECT"]
    assert list(o.radiopharmaceutical) == ["ga68-psma-11", "ga68-psma-11", "lu177-psma-617"]
    p = o.to_csv(tmp_path / "obs.csv")
    assert p.read_text().splitlines()[0] == ",".join(COLUMNS)
    back = Observations.from_csv(p)
    for c in COLUMNS:
        np.testing.assert_array_equal(getattr(back, c), getattr(o, c))
    assert len(back) == 3 and back.regions == ("Kidney", "Liver")
    assert len(o.select(region="Kidney", modality="SPECT")) == 1


def test_arrays_are_read_only():
    o = Observations.from_dataframe(_df())
    with pytest.raises(ValueError):
        o.activity_mbq[0] = 1.0


@pytest.mark.parametrize("df, message", [
    (_df().drop(columns=["sigma_mbq"]), "missing column.*sigma_mbq"),
    (_df(activity_mbq=[1.0, np.nan, 2.0]), "activity_mbq is NaN.*row 2"),
    (_df(activity_mbq=[1.0, -1.0, 2.0]), "negative activity_mbq in row 2"),
    (_df(time_h=[-1.0, 1.0, 2.0]), "negative time_h in row 1"),
    (_df(sigma_mbq=[0.1, 0.0, 1.0]), "sigma_mbq must be > 0"),
    (_df(region=["Kidney", "", "Liver"]), "region is empty in row 2"),
    (_df(radiopharmaceutical=["x", "y", "z"]), "radiopharmaceutical"),
    (_df().iloc[:0], "empty"),
])
def test_validation_messages(df, message):
    with pytest.raises(InputError, match=message):
        Observations.from_dataframe(df, source="obs.csv")


def test_bad_csv_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty file"):
        Observations.from_csv(tmp_path / "empty.csv")
    (tmp_path / "head.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(InputError, match="empty"):
        Observations.from_csv(tmp_path / "head.csv")
    with pytest.raises(InputError, match="not found"):
        Observations.from_csv(tmp_path / "missing.csv")


def test_to_csv_never_overwrites_its_input(tmp_path):
    p = tmp_path / "obs.csv"
    Observations.from_dataframe(_df()).to_csv(p)
    before = p.read_text()
    o = Observations.from_csv(p)
    with pytest.raises(InputError, match="refusing to overwrite"):
        o.to_csv(p, inputs=[p])
    assert p.read_text() == before


def test_noise_model_hand_calculation():
    # 100 MBq, 20 cps/MBq, 1200 s -> 2.4e6 counts: Poisson 100/sqrt(2.4e6); calibration 10%
    got = float(region_sigma_mbq(100.0, 20.0, 1200.0, 0.10))
    assert got == pytest.approx(math.sqrt((100 / math.sqrt(2.4e6)) ** 2 + 10.0 ** 2))
    assert float(region_sigma_mbq(100.0, 20.0, 1200.0, 0.0)) == pytest.approx(
        100 / math.sqrt(2.4e6))


def test_imports_only_numpy_pandas_pbpk_models():
    tree = ast.parse(Path(obs_mod.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= {"numpy", "pandas", "pbpk_models", "__future__", "os", "tempfile",
                     "dataclasses", "pathlib"}
