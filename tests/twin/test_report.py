"""report.html: self-contained, escaped, no patient identity, sections that say "not run" when
their stage is absent, and (in headless Chromium) no broken image and no console error."""

import base64
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import json

from tests.twin.demo_fixture import demo_dir, reduced_doc  # noqa: F401
from twin.errors import InputError
from twin.report import NOT_RUN, ReportData, build_report, key_figures, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _images(text):
    return re.findall(r'<img[^>]*src="([^"]*)"', text)


def _check_self_contained(text):
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    for src in _images(text):
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


def test_empty_report_says_not_run_for_every_stage():
    text = build_report(ReportData())
    assert text.count(NOT_RUN) >= 7
    assert "model reduction (MBAM): not run" in text and "planning: not run" in text
    _check_self_contained(text)


def test_text_is_escaped_and_identity_refused(tmp_path):
    evil = '<script>alert("x")</script>'
    regions = pd.DataFrame({"region": [evil, "Kidney"], "mean_gy": [1.0, 30.0],
                            "fraction_of_limit": [np.nan, 1.3]})
    text = build_report(ReportData(title=evil, summary={"note": evil}, regions=regions,
                                   assumptions=[evil]))
    assert evil not in text and "&lt;script&gt;" in text
    assert 'class="over"' in text  # a region over its limit is marked
    for key in ("PatientName", "Patient ID", "patient_id"):
        with pytest.raises(InputError, match="identifies the patient"):
            build_report(ReportData(summary={key: "Doe^John"}))
    path = write_report(tmp_path / "r.html", ReportData())
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_sections_appear_when_their_results_do():
    rng = np.random.default_rng(0)
    ct = rng.normal(0, 50, (12, 10, 8)).astype(np.float32)
    dose = np.zeros_like(ct)
    dose[4:8, 3:7, 2:6] = 5.0
    dvh = pd.DataFrame({"region": "Kidney", "dose_gy": np.linspace(0, 6, 7),
                        "volume_fraction": np.linspace(1, 0, 7)})
    plan = pd.DataFrame({"cycle": [1, 2], "time_h": [0.0, 1008.0],
                         "radiopharmaceutical": "lu177-psma-617", "activity_mbq": [7400.0] * 2,
                         "ligand_nmol": [57.09] * 2})
    bed = pd.DataFrame({"region": "Kidney", "cycle": [1, 2], "cumulative_bed_gy": [5.0, 10.0]})
    steps = pd.DataFrame({"step": [0, 1, 2], "limit": ["full model", "k_on -> 0", "PS -> inf"],
                          "n_parameters": [7, 6, 5], "max_rel_error": [0.0, 0.01, 0.4],
                          "status": ["start", "accepted", "rejected"]})
    data = ReportData(ct_hu=ct, dose_gy=dose, spacing_zyx=(3.0, 2.0, 2.0), dvh=dvh,
                      plan=plan, bed=bed, limits={"Kidney": 23.0},
                      sloppiness=np.array([1e3, 1.0, 1e-3]), mbam_steps=steps,
                      mbam_spectra=[("full (7)", np.logspace(3, -3, 7))],
                      mbam_info={"tolerance": 0.02}, mbam_note="made for another protocol")
    text = build_report(data)
    assert "voxel dose: not run" not in text and "planning: not run" not in text
    assert "MBAM): not run" not in text and "span 6.0 decades" in text
    assert "made for another protocol" in text and "PS -&gt; inf" in text
    assert text.count('class="over"') == 1  # the rejected MBAM step
    assert len(_images(text)) == 5  # MIP, DVH, BED, spectrum, MBAM
    _check_self_contained(text)
    # the README's pictures: the same drawings, as PNG files
    figs = key_figures(data)
    assert set(figs) == {"dose_mip.png", "dvh.png", "plan_bed.png", "sloppiness.png",
                         "mbam_steps.png"}
    assert all(png.startswith(PNG_SIGNATURE) for png in figs.values())
    assert base64.b64encode(figs["dvh.png"]).decode() in text


def test_mbam_hierarchy_of_a_reduced_json(tmp_path):
    """The pipeline's MBAM stage reads a REDUCED.json: steps table (full model, accepted
    limits, the rejected one), spectra per model, the shipped file found by model and variant,
    and a clear note when there is none."""
    from twin.pipeline import PipelineConfig, find_shipped_reduction, mbam_stage, mbam_tables

    doc = reduced_doc()
    steps, spectra = mbam_tables(doc)
    assert list(steps["n_parameters"]) == [7, 6, 5, 4]
    assert list(steps["status"]) == ["start", "accepted", "accepted", "rejected"]
    assert steps["max_rel_error"].tolist() == [0.0, 0.004, 0.012, 0.31]
    assert steps.loc[2, "parameters_left"].split(", ") == doc["limits"][1]["parameters_left"]
    assert [label for label, _ in spectra] == ["full (7)", "MBAM 1 (6)"]  # model 2: none
    # the shipped file is found by base model and variant, anywhere below the package folders
    lib = tmp_path / "lib" / "reduced"
    lib.mkdir(parents=True)
    (lib / "a_other.json").write_text(json.dumps(reduced_doc("sstr", "v1")))
    (lib / "b_psma.json").write_text(json.dumps(doc))
    (lib / "c_not_reduced.json").write_text('{"format": "twin.TWIN"}')
    assert find_shipped_reduction("psma-pbrpk", "corrected", [tmp_path]) == lib / "b_psma.json"
    assert find_shipped_reduction("psma-pbrpk", "published", [tmp_path]) is None
    # of two reductions of the model, the one made for the study's protocol
    late = reduced_doc()
    late["protocol"]["observations"][1]["time_h"] = 172.0
    (lib / "d_psma_late.json").write_text(json.dumps(late))
    assert find_shipped_reduction("psma-pbrpk", "corrected", [tmp_path],
                                  "PET 1 h, SPECT 172 h") == lib / "d_psma_late.json"
    assert find_shipped_reduction("psma-pbrpk", "corrected", [tmp_path],
                                  "PET 1 h, SPECT 24 h") == lib / "b_psma.json"

    class Spec:
        name, variant = "psma-pbrpk", "corrected"

    res = mbam_stage(PipelineConfig(reduction=str(lib / "b_psma.json")), Spec,
                     "PET 1 h, SPECT 172 h")
    assert res["info"]["parameters"] == "7 -> 5"
    assert res["info"]["made for the protocol"] == "PET 1 h, SPECT 192 h"
    assert "fitted on PET 1 h, SPECT 172 h" in res["note"]
    with pytest.raises(InputError, match="not of the study's model"):
        mbam_stage(PipelineConfig(reduction=str(lib / "a_other.json")), Spec, "")
    off = mbam_stage(PipelineConfig(reduce=False), Spec, "")
    assert off["steps"] is None and "disabled" in off["note"]
    text = build_report(ReportData(mbam_note="no shipped reduction for this model/protocol"))
    assert "Model reduction (MBAM): no shipped reduction for this model/protocol" in text


@pytest.mark.slow
def test_demo_report_is_complete_and_private(demo_dir):  # noqa: F811
    text = (demo_dir / "report.html").read_text()
    _check_self_contained(text)
    assert len(_images(text)) >= 5  # two TAC panels, spectrum, MIP, DVH
    for heading in ("Patient and study", "Time-activity curves", "Sloppiness", "Absorbed dose",
                    "Organs and lesions", "Plan", "Assumptions", "References"):
        assert heading in text
    assert "sloppiness spectrum: not run" not in text
    from twin.pipeline import find_shipped_reduction

    if find_shipped_reduction("psma-pbrpk", "corrected") is None:
        assert "no shipped reduction for this model/protocol" in text
    else:
        assert "<h3>MBAM steps</h3>" in text
    import pydicom

    ds = pydicom.dcmread(next((demo_dir / "study" / "dicom" / "CT").iterdir()))
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                "StudyInstanceUID"):
        value = str(ds.get(tag, "") or "")
        if len(value) >= 3:
            assert value not in text, f"{tag} appears in the report"


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed here (CI installs "
                    "Debian's chromium via apt-get in .ci/run)")
def test_demo_report_renders_in_headless_chromium(demo_dir, tmp_path):  # noqa: F811
    """Rendered by a real browser: every <img> decodes (naturalWidth > 0), no console message
    (the report has no scripts, so any console line is a load or decode error)."""
    browser = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--virtual-time-budget=15000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    report = demo_dir / "report.html"
    text = report.read_text()
    n_img = len(_images(text))
    # 1. the report itself: no console error
    plain = subprocess.run([browser, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom",
                            report.as_uri()], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "Organs and lesions" in plain.stdout
    console = [ln for ln in plain.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    # 2. a copy with a probe script: count the images the browser could not decode
    probe = ("<script>window.addEventListener('load',function(){var im=document.images,b=0;"
             "for(var i=0;i<im.length;i++){if(!(im[i].complete&&im[i].naturalWidth>0))b++;}"
             "document.body.setAttribute('data-check','images='+im.length+';broken='+b);});"
             "</script></body>")
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", probe))
    res = subprocess.run([browser, *flags, "--dump-dom", probed.as_uri()], capture_output=True,
                         text=True, timeout=300)
    m = re.search(r'data-check="images=(\d+);broken=(\d+)"', res.stdout)
    assert m, res.stdout[-500:] + res.stderr[-2000:]
    assert int(m.group(1)) == n_img and int(m.group(2)) == 0


def test_interrupt_request_survives_a_swallowed_keyboardinterrupt():
    """A Ctrl-C whose KeyboardInterrupt is swallowed (as CPython does inside a garbage-collector
    callback) still stops the pipeline at its next stage."""
    import signal

    from twin import interrupt
    from twin.pipeline import Progress

    old = signal.getsignal(signal.SIGINT)
    try:
        # Python's own handler, as in a terminal (a suite started in the background of a
        # non-interactive shell ignores SIGINT, and install() keeps an ignoring handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupt.install()
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # swallowed, as in a gc callback
        p = Progress(2, quiet=True)
        with pytest.raises(KeyboardInterrupt):
            p.stage("next", "the next stage")
        interrupt.install()  # a new run starts clean
        Progress(2, quiet=True).stage("first", "a stage")
    finally:
        signal.signal(signal.SIGINT, old)
        interrupt.REQUESTED.clear()
