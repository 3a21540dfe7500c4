"""RT Dose round trip (pydicom and SimpleITK) and the `twin dose` command line."""

import argparse

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from twin.dosimetry import read_rtdose, write_rtdose
from twin.errors import InputError, TwinError


def _image(arr, spacing=(1.5, 2.0, 3.5), origin=(-10.0, 20.5, -30.0), direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, -1, 0, 0, 0, -1),
                                       (1, 0, 0, 0, 1, 0, 0, 0, -1)])
def test_rtdose_round_trip(tmp_path, direction):
    rng = np.random.default_rng(1)
    arr = (rng.random((5, 6, 7)) * 30).astype(np.float32)
    img = _image(arr, direction=direction)
    ref_ct = get_testdata_file("CT_small.dcm")  # a local pydicom test file
    path = tmp_path / "dose.dcm"
    ds = write_rtdose(img, path, reference=ref_ct)
    ct = pydicom.dcmread(ref_ct)
    assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert ds.StudyInstanceUID == ct.StudyInstanceUID
    scale = float(ds.DoseGridScaling)
    # pydicom
    dose, sp, origin, dirn = read_rtdose(path)
    s_img = sitk.ReadImage(str(path))
    # The same physical grid: compare via physical points of the corner voxels.
    n = np.array(arr.shape[::-1]) - 1
    for idx in [(0, 0, 0), tuple(int(v) for v in n), (0, int(n[1]), 0)]:
        p_in = np.array(img.TransformIndexToPhysicalPoint(idx))
        cont = s_img.TransformPhysicalPointToContinuousIndex(tuple(p_in))
        j = tuple(int(round(c)) for c in cont)
        assert np.allclose(cont, j, atol=1e-6)
        raw = sitk.GetArrayFromImage(s_img)[j[2], j[1], j[0]]
        assert raw * scale == pytest.approx(float(arr[idx[2], idx[1], idx[0]]), abs=scale)
        # pydicom geometry: origin + direction @ (index * spacing)
        d = np.asarray(dirn).reshape(3, 3)
        p_pd = np.asarray(origin) + d @ (np.array(j) * np.array(sp))
        assert np.allclose(p_pd, p_in, atol=1e-6)
        expected = float(arr[idx[2], idx[1], idx[0]])
        assert dose[j[2], j[1], j[0]] == pytest.approx(expected, abs=scale)
    assert np.allclose(s_img.GetSpacing(), sp) and np.allclose(s_img.GetOrigin(), origin)
    assert np.allclose(s_img.GetDirection(), dirn)


def test_rtdose_without_reference_is_anonymous(tmp_path):
    ds = write_rtdose(_image(np.ones((2, 3, 4), np.float32)), tmp_path / "d.dcm")
    assert str(ds.PatientName) == "ANONYMOUS" and ds.FrameOfReferenceUID
    with pytest.raises(InputError):
        write_rtdose(_image(np.ones((2, 2, 2)), direction=(1, 0.3, 0, 0, 1, 0, 0, 0, 1)),
                     tmp_path / "e.dcm")


# ---------------------------------------------------------------------------- command line

def _run(argv):
    """Run ``twin dose`` as twin.cli.main does (one-line error, exit code 2)."""
    try:
        from twin.cli import main

        return main(argv)
    except ModuleNotFoundError:  # other subcommands not written yet: the dose command alone
        from twin.cli import dose

        parser = argparse.ArgumentParser(prog="twin")
        dose.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(argv)
        try:
            return args.func(args)
        except TwinError as exc:
            print(f"twin dose: error: {str(exc).splitlines()[0]}")
            return 2


@pytest.fixture()
def study(tmp_path):
    tia = np.zeros((20, 18, 16), np.float32)
    tia[6:14, 5:13, 4:12] = 3.0
    img = _image(tia, spacing=(4.42, 4.42, 4.8), origin=(0.0, 0.0, 0.0))
    sitk.WriteImage(img, str(tmp_path / "tia.nii.gz"))
    ct = sitk.Cast(_image(np.zeros(tia.shape, np.float32), (4.42, 4.42, 4.8), (0.0, 0.0, 0.0)),
                   sitk.sitkInt16)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    lab = np.zeros(tia.shape, np.uint8)
    lab[6:14, 5:13, 4:12] = 1
    lab[0:3] = 2
    sitk.WriteImage(_image(lab, (4.42, 4.42, 4.8), (0.0, 0.0, 0.0)), str(tmp_path / "lab.nii.gz"))
    (tmp_path / "names.csv").write_text("label,name\n1,Kidney\n2,Liver\n")
    return tmp_path


def test_cli_writes_all_outputs(study):
    d = study
    rc = _run(["dose", "--tia", str(d / "tia.nii.gz"), "--nuclide", "Lu-177",
               "--ct", str(d / "ct.nii.gz"), "--masks", str(d / "lab.nii.gz"),
               "--labels-table", str(d / "names.csv"), "--out", str(d / "dose.nii.gz"),
               "--rtdose", str(d / "dose.dcm"), "--table", str(d / "regions.csv"),
               "--dvh", str(d / "dvh.csv"), "--v-gy", "1"])
    assert rc == 0
    dose = sitk.ReadImage(str(d / "dose.nii.gz"))
    assert dose.GetSpacing() == pytest.approx((4.42, 4.42, 4.8))
    table = pd.read_csv(d / "regions.csv").set_index("region")
    assert {"mean_gy", "max_gy", "d2_gy", "d50_gy", "d98_gy", "v1gy"} <= set(table.columns)
    k = table.loc["Kidney"]
    assert 0.85 * k["self_dose_local_gy"] < k["mean_gy"] < 1.01 * k["self_dose_local_gy"]
    assert set(pd.read_csv(d / "dvh.csv")["region"]) == {"Kidney", "Liver"}
    rt, *_ = read_rtdose(d / "dose.dcm")
    assert np.allclose(rt, sitk.GetArrayFromImage(dose), atol=float(rt.max()) * 1e-8 + 1e-12)


@pytest.mark.parametrize("case", ["nan", "negative", "nuclide", "grid", "oblique", "missing",
                                  "masks-grid", "oblique-ct"])
def test_cli_bad_input_one_line_nothing_written(study, case, capsys):
    d = study
    tia = str(d / "tia.nii.gz")
    extra, nuclide = [], "Lu-177"
    base = sitk.GetArrayFromImage(sitk.ReadImage(tia))
    # NaN and sheared axes do not survive NIfTI through SimpleITK (NaN is read as 0, the
    # direction is coerced to orthogonal), so those inputs are MetaImage files (.mha).
    if case == "nan":
        a = base.copy()
        a[0, 0, 0] = np.nan
        sitk.WriteImage(_image(a, (4.42, 4.42, 4.8), (0.0, 0.0, 0.0)), str(d / "bad.mha"))
        tia = str(d / "bad.mha")
    elif case == "negative":
        sitk.WriteImage(_image(base - 1.0, (4.42, 4.42, 4.8), (0.0, 0.0, 0.0)), str(d / "bad.mha"))
        tia = str(d / "bad.mha")
    elif case == "nuclide":
        nuclide = "Xx-999"
    elif case == "grid":
        ct = _image(np.zeros((10, 9, 8), np.int16), (8.84, 8.84, 9.6), (0.0, 0.0, 0.0))
        sitk.WriteImage(ct, str(d / "ct2.nii.gz"))
        extra = ["--ct", str(d / "ct2.nii.gz")]
    elif case == "oblique":
        c, s = np.cos(0.3), np.sin(0.3)
        sitk.WriteImage(_image(base, (4.42, 4.42, 4.8), (0.0, 0.0, 0.0),
                               (1, 0, 0, s, c, 0, 0, 0, 1)), str(d / "bad.mha"))
        tia = str(d / "bad.mha")
    elif case == "missing":
        tia = str(d / "nope.nii.gz")
    elif case == "masks-grid":  # label volume on another grid, no --resample
        lab = _image(np.ones((10, 9, 8), np.uint8), (8.84, 8.84, 9.6), (0.0, 0.0, 0.0))
        sitk.WriteImage(lab, str(d / "lab2.nii.gz"))
        extra = ["--masks", str(d / "lab2.nii.gz"), "--table", str(d / "out.csv")]
    elif case == "oblique-ct":  # sheared CT axes
        c, s = np.cos(0.3), np.sin(0.3)
        sitk.WriteImage(_image(np.zeros(base.shape, np.float32), (4.42, 4.42, 4.8),
                               (0.0, 0.0, 0.0), (1, 0, 0, s, c, 0, 0, 0, 1)), str(d / "ct3.mha"))
        extra = ["--ct", str(d / "ct3.mha")]
    out = d / "out.nii.gz"
    rc = _run(["dose", "--tia", tia, "--nuclide", nuclide, "--out", str(out),
               "--rtdose", str(d / "out.dcm"), *extra])
    captured = capsys.readouterr()
    msg = (captured.err + captured.out).strip()
    assert rc == 2
    assert msg.count("\n") == 0 and "error" in msg
    assert not out.exists() and not (d / "out.dcm").exists() and not (d / "out.csv").exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".out")]
    if case in ("grid", "masks-grid"):  # with --resample the same input works
        assert _run(["dose", "--tia", tia, "--nuclide", nuclide, "--out", str(out), "--resample",
                     *extra]) == 0
        assert out.exists()
