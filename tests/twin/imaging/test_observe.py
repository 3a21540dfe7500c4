"""The phantom round trip DICOM -> read -> observe against the truth, within the expected
partial-volume and noise error; observations CSV output; identifiers never in outputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from calibration.observations import Observations
from twin.imaging.phantom import phantom_study
from twin.observe import observe, region_statistics

from .conftest import IDENTIFIERS


def _sorted(df):
    df = df.assign(t=np.round(df.time_h, 6))
    return df.sort_values(["t", "region"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def stats_dicom(phantom_study_dicom):
    return _sorted(region_statistics(phantom_study_dicom))


@pytest.fixture(scope="module")
def stats_expected(phantom):
    # The same pipeline on the noise-free blurred images: the partial-volume-only answer.
    return _sorted(region_statistics(phantom_study(phantom, expected=True)))


def test_round_trip_within_partial_volume_and_noise(phantom, stats_dicom, stats_expected):
    assert len(stats_dicom) == len(stats_expected) == len(phantom.scans) * len(
        phantom.masks.regions)
    truth = {(round((s.start - phantom.settings["t0"]).total_seconds() / 3600, 6), r): a
             for s in phantom.scans for r, a in s.truth.items()}
    z = (stats_dicom.activity_mbq - stats_expected.activity_mbq) / stats_dicom.sigma_poisson_mbq
    # the counting noise model is right: |z| < 5 everywhere, mean ~ 0, sd ~ 1
    assert np.max(np.abs(z)) < 5.0
    assert abs(float(np.mean(z))) < 0.5 and 0.6 < float(np.std(z)) < 1.5
    # large organs: partial-volume error small, measured within a few % of the truth
    for _, row in stats_dicom.iterrows():
        true = truth[(round(row.time_h, 6), row.region)]
        if row.region in ("Liver", "Heart") and true > 1.0:
            assert row.activity_mbq == pytest.approx(true, rel=0.10), row.region


def test_phantom_blur_and_resampling_conserve_activity(phantom):
    # the noise-free images hold the true total (blur and resampling conserve activity)
    for s in phantom.scans:
        total = float(np.sum(s.expected.array, dtype=np.float64)) * s.expected.voxel_volume_ml
        assert total == pytest.approx(sum(s.truth.values()), rel=0.02)


def test_round_trip_times_volumes_and_names(phantom, stats_dicom):
    times = sorted(set(np.round(stats_dicom.time_h, 6)))
    assert times == [1.0, 172.0, 192.0, 264.0, 336.0]
    vols = phantom.masks.volumes_ml()
    for _, row in stats_dicom.iterrows():
        assert row.volume_ml == pytest.approx(vols[row.region], rel=1e-9)
    assert set(stats_dicom.modality) == {"PET", "SPECT"}
    assert set(stats_dicom.radiopharmaceutical) == {"ga68-psma-11", "lu177-psma-617"}


def test_dicom_and_memory_give_the_same_observations(phantom, stats_dicom):
    mem = _sorted(region_statistics(phantom_study(phantom)))
    np.testing.assert_allclose(stats_dicom.activity_mbq, mem.activity_mbq, rtol=2e-4, atol=1e-6)


def test_observations_csv_has_no_identifiers(tmp_path, phantom_study_dicom, caplog):
    caplog.set_level(logging.DEBUG)
    obs = observe(phantom_study_dicom)
    path = obs.to_csv(tmp_path / "obs.csv")
    text = path.read_text()
    assert text.splitlines()[0] == "region,time_h,activity_mbq,sigma_mbq,modality," \
                                   "radiopharmaceutical"
    back = Observations.from_csv(path)
    np.testing.assert_allclose(back.activity_mbq, obs.activity_mbq)
    for ident in IDENTIFIERS:
        assert ident not in text and ident not in caplog.text
        assert ident not in repr(phantom_study_dicom.patient)
