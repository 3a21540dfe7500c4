"""Reading DICOM: pydicom's shipped files, geometry of the phantom round trip, and bad input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from twin.errors import InputError
from twin.imaging import (
    read_rtdose,
    read_rtstruct,
    read_series,
    scan_folder,
)
from twin.imaging.volume import Volume

from .conftest import write_small_ct, write_small_pet


def _local(name):
    # Only files shipped inside the pydicom wheel (never the online-only ones).
    path = get_testdata_file(name, download=False)
    assert path is not None
    return path


def test_pydicom_ct_small_reads_with_its_tags():
    path = _local("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = read_series(path).volume
    assert vol.shape == (1, ds.Rows, ds.Columns)
    assert vol.origin_mm == tuple(float(v) for v in ds.ImagePositionPatient)
    assert vol.spacing_mm[:2] == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))
    expected = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[0], expected)
    assert vol.units == "HU"


def test_pydicom_rtdose_reads():
    path = _local("rtdose.dcm")
    ds = pydicom.dcmread(path)
    vol = read_rtdose(path)
    assert vol.shape == (int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    np.testing.assert_allclose(vol.array.max(), ds.pixel_array.max() * float(ds.DoseGridScaling),
                               rtol=1e-6)
    off = [float(v) for v in ds.GridFrameOffsetVector]
    assert vol.spacing_mm[2] == pytest.approx(abs(off[1] - off[0]))


def test_pydicom_rtstruct_rasterises_on_a_grid_of_its_own_contours():
    path = _local("rtstruct.dcm")
    ds = pydicom.dcmread(path, force=True)
    pts = np.concatenate([np.asarray(c.ContourData, float).reshape(-1, 3)
                          for rc in ds.ROIContourSequence for c in rc.ContourSequence])
    zs = np.unique(np.round(pts[:, 2], 3))
    dz = float(np.min(np.diff(zs))) if len(zs) > 1 else 1.0
    lo, hi = pts.min(axis=0) - 5, pts.max(axis=0) + 5
    n = [int(np.ceil((hi[i] - lo[i]) / 2.0)) + 1 for i in range(2)]
    nz = int(round((zs[-1] - zs[0]) / dz)) + 1
    grid = Volume(np.zeros((nz, n[1], n[0]), np.uint8), (2.0, 2.0, dz), (lo[0], lo[1], zs[0]),
                  frame_of_reference_uid=str(ds.StructureSetROISequence[0]
                                             .ReferencedFrameOfReferenceUID))
    masks = read_rtstruct(path, grid, unmapped="keep")
    assert len(masks.regions) >= 1
    assert all(v > 0 for v in masks.volumes_ml().values())
    assert scan_folder(path).series[0].kind == "rtstruct"


def test_phantom_geometry_identical_after_dicom_round_trip(phantom, phantom_study_dicom):
    st = phantom_study_dicom
    for got, want in [(st.ct, phantom.ct)] + [
            (a.volume, b.volume) for a, b in zip(st.scans, phantom.scans)]:
        assert got.shape == want.shape
        np.testing.assert_allclose(got.origin_mm, want.origin_mm, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got.spacing_mm, want.spacing_mm, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got.direction, want.direction, atol=1e-9, rtol=0)
        assert got.frame_of_reference_uid == want.frame_of_reference_uid
    np.testing.assert_array_equal(st.ct.array, phantom.ct.array)
    # PET stored as int16 with a slope per slice: error <= half a step of the slice's maximum.
    got, want = np.asarray(st.pet[0].volume.array), np.asarray(phantom.scans[0].volume.array)
    step = np.abs(want).max(axis=(1, 2)) / 32767.0
    assert np.all(np.abs(got - want) <= 0.51 * step[:, None, None] + 1e-6 * np.abs(want).max())


def test_scan_folder_groups_by_modality_and_time(phantom_dir):
    idx = scan_folder(phantom_dir / "dicom")
    assert [s.modality for s in idx.images()] == ["CT", "PT", "NM", "NM", "NM", "NM"]
    assert len(idx.by_kind("rtstruct")) == 1 and len(idx.by_kind("seg")) == 1
    assert idx.images("CT")[0].n_frames == 1 and len(idx.images("CT")[0].files) == 160


# -- bad input --------------------------------------------------------------------------------
def test_truncated_file_names_the_file(tmp_path):
    _, paths = write_small_ct(tmp_path / "ct")
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match=r"CT_0003\.dcm.*truncated"):
        read_series(tmp_path / "ct")


def test_missing_slice_is_inconsistent_spacing(tmp_path):
    _, paths = write_small_ct(tmp_path / "ct")
    paths[3].unlink()
    with pytest.raises(InputError, match="inconsistent slice spacing.*missing"):
        read_series(tmp_path / "ct")


def test_mixed_series_in_one_folder(tmp_path):
    write_small_ct(tmp_path / "mix")
    write_small_pet(tmp_path / "mix")
    with pytest.raises(InputError, match="mixes 2 image series.*series_uid"):
        read_series(tmp_path / "mix")
    assert read_series(tmp_path / "mix", modality="PT").volume.modality == "PT"


def test_duplicate_positions_within_a_series(tmp_path):
    _, paths = write_small_ct(tmp_path / "ct")
    ds = pydicom.dcmread(paths[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "ct" / "extra.dcm")
    with pytest.raises(InputError, match="same position"):
        read_series(tmp_path / "ct")


def test_non_axial_orientation(tmp_path):
    def sagittal(ds):
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    write_small_ct(tmp_path / "ct", tweak=sagittal)
    with pytest.raises(InputError, match="not axial; reformat"):
        read_series(tmp_path / "ct")


def test_not_dicom_and_empty_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.bin").write_bytes(b"hello world" * 20)
    with pytest.raises(InputError, match="notes.bin"):
        read_series(tmp_path / "a")
    with pytest.raises(InputError, match="not found"):
        read_series(tmp_path / "nope")
