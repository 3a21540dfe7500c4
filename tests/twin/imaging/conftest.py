"""Shared fixtures: the synthetic patient (simulated and written once per session) and small
hand-made DICOM series for the bad-input tests."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from twin.imaging import dicom_write as dw
from twin.imaging.quantitation import InjectionRecord
from twin.imaging.volume import Volume

IDENTIFIERS = ("Synthetic^Patient", "Synthetic Patient", "TWIN-PHANTOM-0000", "19550101",
               "ACC000000", "Synthetic Hospital")


@pytest.fixture(scope="session")
def phantom():
    from twin.imaging.phantom import simulate_phantom

    return simulate_phantom(seed=0)


@pytest.fixture(scope="session")
def phantom_dir(phantom, tmp_path_factory):
    from twin.imaging.phantom import write_phantom

    out = tmp_path_factory.mktemp("phantom") / "patient"
    write_phantom(phantom, out, write_seg=True)
    return out


@pytest.fixture(scope="session")
def phantom_study_dicom(phantom_dir, phantom):
    from twin.imaging.study import load_study

    return load_study(phantom_dir / "dicom", spect_calibration_cps_per_mbq=phantom.settings[
        "spect_calibration_cps_per_mbq"])


PATIENT = {"PatientName": "Synthetic^Patient", "PatientID": "TWIN-PHANTOM-0000",
           "PatientBirthDate": "19550101", "PatientSex": "M", "PatientWeight": "80"}
T_INJ = datetime(2024, 5, 6, 8, 30, 0)


def small_volume(value=None, shape=(6, 8, 8), spacing=(3.0, 3.0, 4.0),
                 origin=(-10.5, -10.5, -20.0), **kw) -> Volume:
    rng = np.random.default_rng(1)
    arr = rng.uniform(1000.0, 5000.0, shape) if value is None else np.full(shape, float(value))
    return Volume(arr, spacing, origin, frame_of_reference_uid="1.2.3.4.5", **kw)


def write_small_pet(folder, *, value=None, units="BQML", decay_correction="START",
                    scan=T_INJ + timedelta(minutes=60), injection=None, slice_times=None,
                    weight_kg=80.0, tweak=None, seed="p"):
    """A 6-slice PT series in ``folder`` (created); returns (volume written, injection)."""
    folder.mkdir(parents=True, exist_ok=True)
    inj = injection or InjectionRecord(T_INJ, 150.0, "ga68-psma-11")
    vol = small_volume(value)
    extra = dw.pet_extra(inj, units=units, decay_correction=decay_correction, weight_kg=weight_kg)

    def both(ds):
        extra(ds)
        if tweak:
            tweak(ds)
    dw.write_slices(vol, folder, modality="PT", patient=PATIENT,
                    study={"uid": dw.new_uid("s"), "datetime": scan}, series_uid=dw.new_uid(seed),
                    series_number=2, description="small PET", when=scan, seed=seed, extra=both,
                    per_slice_times=slice_times)
    return vol, inj


def write_small_ct(folder, seed="c", tweak=None):
    folder.mkdir(parents=True, exist_ok=True)
    vol = small_volume(40)
    paths = dw.write_slices(vol, folder, modality="CT", patient=PATIENT,
                            study={"uid": dw.new_uid("s"), "datetime": T_INJ},
                            series_uid=dw.new_uid(seed), series_number=1, description="small CT",
                            when=T_INJ, seed=seed, extra=tweak)
    return vol, paths
