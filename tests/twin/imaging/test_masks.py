"""Masks: RTSTRUCT and SEG round trips against the true labels, NIfTI label maps, the name table,
grid and frame-of-reference checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest

from twin.errors import InputError
from twin.imaging import (
    load_region_map,
    map_region_name,
    masks_from_arrays,
    read_label_map,
    read_rtstruct,
    read_seg,
    write_nifti,
)


def test_rtstruct_rasterises_to_the_true_labels(phantom, phantom_dir, phantom_study_dicom):
    got = read_rtstruct(phantom_dir / "dicom" / "RTSTRUCT" / "rtstruct.dcm",
                        phantom_study_dicom.ct)
    for region in phantom.masks.regions:
        np.testing.assert_array_equal(got.mask(region), phantom.masks.mask(region), err_msg=region)


def test_seg_reads_to_the_true_labels(phantom, phantom_dir, phantom_study_dicom):
    got = read_seg(phantom_dir / "dicom" / "SEG" / "seg.dcm", phantom_study_dicom.ct)
    assert set(got.regions) == set(phantom.masks.regions)
    for region in ("Liver", "Kidney", "Tumor2", "Lacrimal"):
        np.testing.assert_array_equal(got.mask(region), phantom.masks.mask(region))


def test_nifti_label_map_with_names(phantom, phantom_dir, phantom_study_dicom):
    masks = read_label_map(phantom_dir / "truth" / "labels.nii.gz",
                           names=dict(phantom.masks.names),
                           reference=phantom_study_dicom.ct)
    np.testing.assert_array_equal(masks.labels.array, phantom.masks.labels.array)
    vols = masks.volumes_ml()
    ref = pd.read_csv(phantom_dir / "truth" / "regions.csv").set_index("region")["volume_ml"]
    for r, v in vols.items():
        # NIfTI stores spacing as float32: volumes agree to ~1e-7
        assert v == pytest.approx(ref[r], rel=1e-6)


def test_label_names_from_csv_and_region_map(tmp_path, phantom):
    lab = phantom.masks.labels
    k = phantom.masks.label_of
    arr = np.zeros(lab.shape, np.int16)
    arr[phantom.masks.mask("Kidney") & (np.arange(lab.shape[2]) < lab.shape[2] // 2)] = 1
    arr[phantom.masks.mask("Kidney") & (np.arange(lab.shape[2]) >= lab.shape[2] // 2)] = 2
    arr[phantom.masks.mask("Liver")] = 3
    write_nifti(lab.with_array(arr), tmp_path / "lab.nii.gz")
    (tmp_path / "names.csv").write_text("label,name\n1,Kidney_R\n2,Kidney_L\n3,my liver\n")
    (tmp_path / "map.csv").write_text("source_name,region\nmy liver,Liver\n")
    m = read_label_map(tmp_path / "lab.nii.gz", names=tmp_path / "names.csv",
                       region_map=load_region_map(tmp_path / "map.csv"))
    assert set(m.regions) == {"Kidney", "Liver"}  # both kidneys merged
    np.testing.assert_array_equal(m.mask("Kidney"), phantom.masks.mask("Kidney"))
    assert k  # the phantom has labels


def test_region_name_table():
    assert map_region_name("Parotid_L") == "SG"
    assert map_region_name("BODY") == "Rest"
    assert map_region_name("Couch") is None
    assert map_region_name("liver") == "Liver"
    with pytest.raises(InputError, match="add a row 'PTV_70,<model region>'"):
        map_region_name("PTV_70", unmapped="error")


def test_mask_on_another_grid(tmp_path, phantom, phantom_study_dicom):
    lab = phantom.masks.labels
    coarse = lab.replace(spacing_mm=(5.0, 5.0, 5.0))
    write_nifti(coarse, tmp_path / "coarse.nii.gz")
    with pytest.raises(InputError, match="another grid.*resample them"):
        read_label_map(tmp_path / "coarse.nii.gz", reference=phantom_study_dicom.ct)


def test_rtstruct_in_another_frame_of_reference(tmp_path, phantom_dir, phantom_study_dicom):
    src = phantom_dir / "dicom" / "RTSTRUCT" / "rtstruct.dcm"
    ds = pydicom.dcmread(src)
    for r in ds.StructureSetROISequence:
        r.ReferencedFrameOfReferenceUID = "1.2.3.999"
    ds.save_as(tmp_path / "other.dcm")
    with pytest.raises(InputError, match="another frame of reference.*register"):
        read_rtstruct(tmp_path / "other.dcm", phantom_study_dicom.ct)
    assert src.exists()


def test_rtstruct_between_slices(tmp_path, phantom_dir, phantom_study_dicom):
    ct = phantom_study_dicom.ct
    shifted = ct.replace(origin_mm=(ct.origin_mm[0], ct.origin_mm[1], ct.origin_mm[2] + 2.2))
    with pytest.raises(InputError, match="does not lie on a slice"):
        read_rtstruct(phantom_dir / "dicom" / "RTSTRUCT" / "rtstruct.dcm", shifted)


def test_overlaps_smaller_region_wins(phantom):
    ref = phantom.masks.labels
    body = np.asarray(ref.array) > 0
    liver = phantom.masks.mask("Liver")
    m = masks_from_arrays(ref, {"Rest": body, "Liver": liver})
    np.testing.assert_array_equal(m.mask("Liver"), liver)
    np.testing.assert_array_equal(m.mask("Rest"), body & ~liver)
