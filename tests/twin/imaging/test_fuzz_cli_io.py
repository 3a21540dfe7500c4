"""Corrupted DICOM bytes (hypothesis), the `twin inspect` command, identifiers, atomic writes."""

from __future__ import annotations

import argparse
import io
import os
from contextlib import redirect_stdout

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin.errors import InputError, TwinError
from twin.imaging import read_series, scan_folder, write_nifti, write_table
from twin.imaging.dicom_write import atomic_folder
from twin.imaging.phantom import simulate_phantom

from .conftest import IDENTIFIERS, write_small_pet


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    """Bytes of a valid PET slice and of a valid multi-frame SPECT tomogram."""
    from datetime import timedelta

    from twin.imaging import dicom_write as dw
    from twin.imaging.quantitation import InjectionRecord

    from .conftest import PATIENT, T_INJ, small_volume

    d = tmp_path_factory.mktemp("fuzz")
    write_small_pet(d / "pt")
    inj = InjectionRecord(T_INJ, 7400.0, "lu177-psma-617")
    nm = dw.write_nm_tomo(small_volume(100.0), d / "nm.dcm", patient=PATIENT,
                          study={"uid": dw.new_uid("s"), "datetime": T_INJ},
                          series_uid=dw.new_uid("nm"), series_number=3, description="spect",
                          when=T_INJ + timedelta(hours=24), seed="nm", injection=inj,
                          frame_duration_ms=20000, frames_in_rotation=60)
    return [sorted((d / "pt").glob("*.dcm"))[0].read_bytes(), nm.read_bytes()]


@settings(max_examples=120, deadline=2000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_dicom_raises_input_error_or_reads(valid_files, tmp_path_factory, data):
    b = bytearray(data.draw(st.sampled_from(valid_files)))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    if kind == "truncate":
        b = b[: data.draw(st.integers(0, len(b) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] = data.draw(st.integers(0, 255))
    elif kind == "insert":
        i = data.draw(st.integers(0, len(b)))
        b[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:  # overwrite a header region (tags, VRs and lengths live in the first ~2 kB)
        i = data.draw(st.integers(128, min(len(b) - 8, 2500)))
        b[i:i + 8] = data.draw(st.binary(min_size=8, max_size=8))
    d = tmp_path_factory.mktemp("case")
    (d / "x.dcm").write_bytes(bytes(b))
    for fn in (lambda: scan_folder(d), lambda: read_series(d)):
        try:
            fn()
        except InputError as exc:
            assert str(exc)  # a message, naming the file or the folder
        # any other exception type fails the test


def _inspect(*argv):
    from twin.cli import inspect_cmd

    p = argparse.ArgumentParser(prog="twin")
    inspect_cmd.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["inspect", *map(str, argv)])
    out = io.StringIO()
    with redirect_stdout(out):
        try:
            rc = args.func(args)
        except TwinError as exc:  # what twin.cli.main does
            return 2, str(exc)
    return rc, out.getvalue()


def test_inspect_lists_series_and_hides_identity(phantom_dir):
    rc, text = _inspect(phantom_dir / "dicom")
    assert rc == 0
    assert text.count("NM ") >= 4 and "PT " in text and "CT " in text and "RTSTRUCT" in text
    assert "ga68-psma-11" in text and "1.0 h after injection" in text
    assert "24.0 h after injection" in text
    assert "calibration factor" in text  # SPECT in counts: says what is needed
    for ident in IDENTIFIERS:
        assert ident not in text
    rc, shown = _inspect(phantom_dir / "dicom", "--show-identifiers")
    assert rc == 0 and "Synthetic^Patient" in shown and "TWIN-PHANTOM-0000" in shown


def test_inspect_reports_what_is_missing(tmp_path):
    write_small_pet(tmp_path / "only_pet")
    rc, text = _inspect(tmp_path / "only_pet")
    assert rc == 0 and "no CT" in text and "no SPECT" in text and "no masks" in text
    rc, msg = _inspect(tmp_path / "nothing")
    assert rc == 2 and "not found" in msg


def test_writes_are_atomic_and_never_overwrite_inputs(tmp_path, phantom):
    vol = phantom.masks.labels
    p = write_nifti(vol, tmp_path / "a.nii.gz")
    before = p.read_bytes()
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        write_nifti(vol, p, inputs=[p])
    assert p.read_bytes() == before
    df = pd.DataFrame({"a": [1, 2]})
    write_table(df, tmp_path / "t.csv")
    write_table(df, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)
    with pytest.raises(InputError, match="unknown table format"):
        write_table(df, tmp_path / "t.xlsx")
    assert not (tmp_path / "t.xlsx").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_phantom_write_refuses_non_empty_folder_and_leaves_nothing_on_error(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        with atomic_folder(tmp_path / "full"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "new") as d:
            (d / "half.dcm").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(tmp_path)) == ["full"]


def test_phantom_is_seeded_and_takes_region_curves():
    from twin.imaging.phantom import example_tacs

    tacs = example_tacs()
    a = simulate_phantom(tacs, spacing_mm=8.8, seed=3, spect_times_h=(24.0,))
    b = simulate_phantom(tacs, spacing_mm=8.8, seed=3, spect_times_h=(24.0,))
    np.testing.assert_array_equal(a.scans[1].volume.array, b.scans[1].volume.array)
    # a region given twice the activity gets twice the true activity
    t2 = tacs.copy()
    t2.loc[t2.region == "Liver", "activity_mbq"] *= 2
    c = simulate_phantom(t2, spacing_mm=8.8, seed=3, spect_times_h=(24.0,))
    assert c.scans[1].truth["Liver"] == pytest.approx(2 * a.scans[1].truth["Liver"])
    # regions without anatomy (e.g. Muscle) go to the remainder
    extra = pd.concat([tacs, tacs[tacs.region == "Liver"].assign(region="Muscle")])
    d = simulate_phantom(extra, spacing_mm=8.8, seed=3, spect_times_h=(24.0,))
    assert d.scans[1].truth["Rest"] == pytest.approx(a.scans[1].truth["Rest"]
                                                      + a.scans[1].truth["Liver"])
    with pytest.raises(InputError, match="covers"):
        simulate_phantom(tacs, spacing_mm=8.8, spect_times_h=(1000.0,))


def test_malformed_identifiers_never_reach_logs_or_warnings(tmp_path, caplog, recwarn):
    import logging

    caplog.set_level(logging.DEBUG)
    bad_name = "Secret^Person" + "\\x" * 40  # invalid PN (too long, backslashes)

    def tweak(ds):
        ds.PatientName = bad_name
        ds.PatientID = "SECRET-ID-123" * 10
    write_small_pet(tmp_path / "pt", tweak=tweak)
    read_series(tmp_path / "pt")
    scan_folder(tmp_path / "pt")
    rc, text = _inspect(tmp_path / "pt")
    seen = caplog.text + text + " ".join(str(w.message) for w in recwarn)
    assert "Secret" not in seen and "SECRET-ID" not in seen
