"""PET and SPECT quantitation against hand calculations, for several tag combinations.

Hand calculations use the half-life written in the file (RadionuclideHalfLife, s) and
math.exp directly, not the functions under test.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pydicom
import pytest

from twin.errors import InputError
from twin.imaging import dicom_write as dw
from twin.imaging.dicom import read_series
from twin.imaging.quantitation import (
    InjectionRecord,
    decay_correct,
    injection_from_dicom,
    pet_concentration,
    spect_concentration,
    suv_bw,
)

from .conftest import PATIENT, T_INJ, small_volume, write_small_pet

SCAN = T_INJ + timedelta(minutes=60)


def _half_life_s(folder):
    f = sorted(folder.glob("*.dcm"))[0]
    return float(pydicom.dcmread(f).RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife)


def test_start_bqml_is_the_file_value(tmp_path):
    write_small_pet(tmp_path / "pt", value=4000.0)
    vol = pet_concentration(read_series(tmp_path / "pt"))
    np.testing.assert_allclose(vol.array, 4000.0e-6, rtol=1e-6)
    assert vol.units == "MBq/mL" and vol.acquisition_start == SCAN


def test_admin_corrected_values_are_decayed_to_the_scan(tmp_path):
    write_small_pet(tmp_path / "pt", value=4000.0, decay_correction="ADMIN")
    hl = _half_life_s(tmp_path / "pt")
    want = 4000.0e-6 * math.exp(-math.log(2) * 3600.0 / hl)  # 60 min after injection
    np.testing.assert_allclose(pet_concentration(read_series(tmp_path / "pt")).array, want,
                               rtol=1e-6)


def test_uncorrected_slices_are_brought_to_the_series_start(tmp_path):
    times = [SCAN + timedelta(seconds=30 * k) for k in range(6)]
    write_small_pet(tmp_path / "pt", value=4000.0, decay_correction="NONE", slice_times=times)
    hl = _half_life_s(tmp_path / "pt")
    vol = pet_concentration(read_series(tmp_path / "pt"))
    # slices are sorted by position = written order k
    for k in range(6):
        want = 4000.0e-6 * math.exp(math.log(2) * 30.0 * k / hl)
        np.testing.assert_allclose(vol.array[k], want, rtol=1e-6)


def test_suv_units_gml_convert_with_weight_and_decayed_dose(tmp_path):
    write_small_pet(tmp_path / "pt", value=2.5, units="GML", weight_kg=80.0)
    hl = _half_life_s(tmp_path / "pt")
    want = 2.5 * 150e6 / 80000.0 * math.exp(-math.log(2) * 3600.0 / hl) * 1e-6
    np.testing.assert_allclose(pet_concentration(read_series(tmp_path / "pt")).array, want,
                               rtol=1e-5)


def test_counts_need_and_use_a_calibration(tmp_path):
    write_small_pet(tmp_path / "pt", value=100.0, units="CNTS")
    s = read_series(tmp_path / "pt")
    with pytest.raises(InputError, match="CNTS.*calibration"):
        pet_concentration(s)
    np.testing.assert_allclose(pet_concentration(s, counts_to_bq_per_ml=37.0).array,
                               100.0 * 37.0e-6, rtol=1e-6)


def test_suv_against_hand_calculation():
    inj = InjectionRecord(T_INJ, 150.0, "ga68-psma-11")
    hl_s = 67.71 * 60.0  # Ga-68, ICRP 107: 67.71 min
    got = suv_bw(0.02, SCAN, inj, 80.0)
    want = 0.02 * 80000.0 / (150.0 * math.exp(-math.log(2) * 3600.0 / hl_s))
    assert got == pytest.approx(want, rel=2e-4)
    # a second combination: 177Lu, 24 h, 70 kg
    inj2 = InjectionRecord(T_INJ, 7400.0, "lu177-psma-617")
    got2 = suv_bw(0.05, T_INJ + timedelta(hours=24), inj2, 70.0)
    hl2_h = 6.647 * 24.0  # Lu-177, ICRP 107: 6.647 d
    assert got2 == pytest.approx(0.05 * 70000.0 / (7400.0 * math.exp(-math.log(2) * 24 / hl2_h)),
                                 rel=2e-4)


def test_decay_correct_to_any_reference():
    hl = 2.0
    t0 = datetime(2024, 1, 1, 12)
    assert decay_correct(8.0, t0, t0 + timedelta(hours=4), hl) == pytest.approx(2.0)
    assert decay_correct(2.0, t0, t0 - timedelta(hours=2), hl) == pytest.approx(4.0)


def test_injection_record_from_pet_tags_in_bq(tmp_path):
    write_small_pet(tmp_path / "pt")
    inj = injection_from_dicom(read_series(tmp_path / "pt"))
    assert inj.activity_mbq == pytest.approx(150.0)
    assert inj.time == T_INJ and inj.radiopharmaceutical == "ga68-psma-11"
    assert inj.source == "dicom"


def test_start_time_only_before_midnight(tmp_path):
    inj = InjectionRecord(datetime(2024, 5, 6, 23, 30), 150.0, "ga68-psma-11")
    scan = datetime(2024, 5, 7, 0, 30)

    def only_time(ds):
        rp = ds.RadiopharmaceuticalInformationSequence[0]
        del rp.RadiopharmaceuticalStartDateTime
        rp.RadiopharmaceuticalStartTime = "233000"
    write_small_pet(tmp_path / "pt", value=4000.0, decay_correction="ADMIN", scan=scan,
                    injection=inj, tweak=only_time)
    s = read_series(tmp_path / "pt")
    assert injection_from_dicom(s).time == datetime(2024, 5, 6, 23, 30)
    hl = _half_life_s(tmp_path / "pt")
    np.testing.assert_allclose(pet_concentration(s).array,
                               4000e-6 * math.exp(-math.log(2) * 3600 / hl), rtol=1e-6)


@pytest.mark.parametrize("tweak, message", [
    (lambda ds: setattr(ds, "Units", "PROPCNTS"), "unknown PET Units 'PROPCNTS'"),
    (lambda ds: delattr(ds, "Units"), r"Units \(0054,1001\) missing"),
    (lambda ds: delattr(ds, "DecayCorrection"), r"DecayCorrection \(0054,1102\) missing"),
])
def test_missing_or_unknown_pet_tags(tmp_path, tweak, message):
    write_small_pet(tmp_path / "pt", tweak=tweak)
    with pytest.raises(InputError, match=message) as e:
        pet_concentration(read_series(tmp_path / "pt"))
    assert str(tmp_path / "pt") in str(e.value)


def test_missing_injection_record_says_how_to_give_it(tmp_path):
    write_small_pet(tmp_path / "pt", decay_correction="ADMIN",
                    tweak=lambda ds: delattr(ds, "RadiopharmaceuticalInformationSequence"))
    s = read_series(tmp_path / "pt")
    with pytest.raises(InputError, match=r"\(0054,0016\) missing; give the injection explicitly"):
        pet_concentration(s)
    # given explicitly it works
    inj = InjectionRecord(T_INJ, 150.0, "ga68-psma-11")
    assert pet_concentration(s, injection=inj).array.max() > 0


def _write_nm(folder, counts, units=None):
    folder.mkdir()
    inj = InjectionRecord(T_INJ, 7400.0, "lu177-psma-617")
    vol = small_volume(counts, spacing=(4.8, 4.8, 4.8))
    path = dw.write_nm_tomo(vol, folder / "nm.dcm", patient=PATIENT,
                            study={"uid": dw.new_uid("s"), "datetime": T_INJ},
                            series_uid=dw.new_uid("nm"), series_number=3, description="spect",
                            when=T_INJ + timedelta(hours=24), seed="nm", injection=inj,
                            frame_duration_ms=20000, frames_in_rotation=60, units=units)
    return path, vol


def test_spect_counts_with_camera_calibration(tmp_path):
    path, vol = _write_nm(tmp_path / "nm", 1000.0)
    s = read_series(path)
    hl = float(pydicom.dcmread(path).RadiopharmaceuticalInformationSequence[0]
               .RadionuclideHalfLife)
    lam = math.log(2) / hl
    t_acq = 60 * 20.0
    a0_mbq = 1000.0 * lam / (20.0 * (1 - math.exp(-lam * t_acq)))
    want = a0_mbq / (4.8 ** 3 / 1000.0)
    got = spect_concentration(s, calibration_cps_per_mbq=20.0)
    np.testing.assert_allclose(got.array, want, rtol=1e-6)
    assert got.acquisition_start == T_INJ + timedelta(hours=24)
    assert injection_from_dicom(s).activity_mbq == pytest.approx(7400.0)  # NM: MBq
    with pytest.raises(InputError, match="camera calibration factor"):
        spect_concentration(s)


def test_spect_in_bqml(tmp_path):
    path, _ = _write_nm(tmp_path / "nm", 25000.0, units="BQML")
    got = spect_concentration(read_series(path))
    np.testing.assert_allclose(got.array, 25000.0e-6, rtol=1e-6)


def test_planar_nm_is_refused(tmp_path):
    path, _ = _write_nm(tmp_path / "nm", 10.0)
    ds = pydicom.dcmread(path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.save_as(path)
    with pytest.raises(InputError, match="not a reconstructed tomogram"):
        read_series(path)


def test_bad_injection_record():
    with pytest.raises(InputError, match="positive number of MBq"):
        InjectionRecord(T_INJ, -1.0, "ga68-psma-11")
    with pytest.raises(InputError, match="radiopharmaceutical"):
        InjectionRecord(T_INJ, 1.0, "gallium")
