"""A SPECT/CT in its own frame of reference: load_study registers its CT to the planning CT and
observe reads the SPECT through that transform."""

from __future__ import annotations

import numpy as np
import pytest

from twin.errors import InputError
from twin.imaging import dicom_write as dw
from twin.imaging.phantom import _patient_attrs, phantom_study, simulate_phantom
from twin.imaging.study import load_study
from twin.observe import region_statistics


@pytest.fixture(scope="module")
def small_phantom():
    return simulate_phantom(spacing_mm=8.8, pet_time_h=None, spect_times_h=(24.0,), seed=5)


def _write(ph, folder, shift_mm, with_own_ct=True):
    patient = _patient_attrs(5)
    study = {"uid": dw.new_uid("reg-study"), "datetime": ph.settings["t0"]}
    (folder / "CT").mkdir(parents=True)
    ct_uid = dw.new_uid("reg-ct")
    dw.write_slices(ph.ct, folder / "CT", modality="CT", patient=patient, study=study,
                    series_uid=ct_uid, series_number=1, description="planning CT",
                    when=ph.ct.acquisition_start, seed="reg-ct")
    dw.write_rtstruct(ph.masks.labels, dict(ph.masks.names), folder / "rs.dcm", patient=patient,
                      study=study, series_uid=dw.new_uid("reg-rs"), when=ph.ct.acquisition_start,
                      seed="reg-rs", referenced_series_uid=ct_uid)
    other_for = dw.new_uid("reg-for-b")
    moved = tuple(np.asarray(ph.ct.origin_mm) + shift_mm)
    if with_own_ct:
        (folder / "SPECTCT").mkdir()
        dw.write_slices(ph.ct.replace(origin_mm=moved, frame_of_reference_uid=other_for),
                        folder / "SPECTCT", modality="CT", patient=patient, study=study,
                        series_uid=dw.new_uid("reg-ct2"), series_number=2,
                        description="low-dose CT",
                        when=ph.scans[0].start, seed="reg-ct2")
    sc = ph.scans[0]
    nm = sc.volume.replace(origin_mm=tuple(np.asarray(sc.volume.origin_mm) + shift_mm),
                           frame_of_reference_uid=other_for)
    (folder / "NM").mkdir()
    dw.write_nm_tomo(nm, folder / "NM" / "nm.dcm", patient=patient, study=study,
                     series_uid=dw.new_uid("reg-nm"), series_number=3, description="SPECT",
                     when=sc.start, seed="reg-nm", injection=sc.injection,
                     frame_duration_ms=ph.settings["spect_view_duration_s"] * 1000,
                     frames_in_rotation=ph.settings["spect_views_per_head"])


def test_spect_ct_registered_to_planning_ct(tmp_path, small_phantom):
    ph = small_phantom
    shift = np.array([8.0, -6.0, 12.0])
    _write(ph, tmp_path / "s", shift)
    st = load_study(tmp_path / "s", spect_calibration_cps_per_mbq=20.0)
    assert st.spect[0].transform is not None
    got = region_statistics(st).set_index("region").activity_mbq
    want = region_statistics(phantom_study(ph)).set_index("region").activity_mbq
    for r in ("Liver", "Kidney", "Rest", "Lungs"):
        assert got[r] == pytest.approx(want[r], rel=0.05), r


def test_spect_in_another_frame_without_its_ct(tmp_path, small_phantom):
    _write(small_phantom, tmp_path / "s", np.array([8.0, 0.0, 0.0]), with_own_ct=False)
    with pytest.raises(InputError, match="another frame of reference.*no CT of its own"):
        load_study(tmp_path / "s", spect_calibration_cps_per_mbq=20.0)
