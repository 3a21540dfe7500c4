"""Region statistics, DVH, and region TIA spread over voxels."""

import numpy as np
import pandas as pd
import pytest

from twin.dosimetry import cumulative_dvh, plot_dvh, region_statistics, spread_region_tia
from twin.errors import InputError


def _volume():
    dose = np.zeros((1, 10, 10))
    dose[0] = np.arange(100).reshape(10, 10)  # doses 0..99 Gy
    labels = np.zeros((1, 10, 10), np.int32)
    labels[0] = 1
    labels[0, 0, :5] = 2
    return dose, labels


def test_dose_statistics_known_distribution():
    dose, labels = np.arange(1, 101, dtype=float).reshape(1, 10, 10), np.ones((1, 10, 10), int)
    t = region_statistics(dose, labels, {1: "Kidney"}, voxel_volume_ml=0.1, v_thresholds_gy=(50,))
    r = t.iloc[0]
    assert r["region"] == "Kidney" and r["n_voxels"] == 100
    assert r["mean_gy"] == pytest.approx(50.5) and r["max_gy"] == 100 and r["min_gy"] == 1
    assert r["d2_gy"] == 99 and r["d50_gy"] == 51 and r["d98_gy"] == 3
    assert r["v50gy"] == pytest.approx(0.51) and r["volume_ml"] == pytest.approx(10.0)


def test_self_dose_cross_check_column():
    dose, labels = _volume()
    tia = np.ones(dose.shape)
    t = region_statistics(dose, labels, {1: "A", 2: "B"}, voxel_volume_ml=1.0, tia_mbq_h=tia,
                          energy_mev_per_decay=0.142)
    a = t.set_index("region").loc["A"]
    assert a["tia_mbq_h"] == 95 and a["mass_g"] == pytest.approx(95 * 1.04)
    # 1 MBq h per g-ish: 3.6e9 decays x 0.142 MeV / 1.04 g
    assert a["self_dose_local_gy"] == pytest.approx(3.6e9 * 0.142 * 1.602176634e-13 / 1.04e-3)


def test_cumulative_dvh_monotone(tmp_path):
    dose, labels = _volume()
    dvh = cumulative_dvh(dose, labels, {1: "A", 2: "B"}, n_bins=50)
    for _, g in dvh.groupby("region"):
        assert g["volume_fraction"].iloc[0] == 1.0
        assert np.all(np.diff(g["volume_fraction"].to_numpy()) <= 0)
    plot_dvh(dvh, tmp_path / "dvh.png")
    assert (tmp_path / "dvh.png").stat().st_size > 1000


def test_spread_region_tia_conserves_each_region():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(8, 9, 10))
    uptake = rng.random(labels.shape) - 0.1  # some negative noise
    uptake[labels == 3] = 0.0  # no counts in region 3: uniform spread
    tia = pd.Series({"Kidney": 1234.5, "Liver": 77.0, "Tumor1": 10.0})
    vox = spread_region_tia(tia, labels, {1: "Kidney", 2: "Liver", 3: "Tumor1"}, uptake)
    for lab, name in {1: "Kidney", 2: "Liver", 3: "Tumor1"}.items():
        assert vox[labels == lab].sum() == pytest.approx(tia[name], rel=1e-12)
    assert np.all(vox >= 0) and np.all(vox[labels == 0] == 0)
    assert np.allclose(vox[labels == 3], 10.0 / np.sum(labels == 3))
    with pytest.raises(InputError):
        spread_region_tia({"Spleen": 1.0}, labels, {1: "Kidney"}, uptake)
    with pytest.raises(InputError):
        spread_region_tia({"Kidney": -1.0}, labels, {1: "Kidney"}, uptake)
