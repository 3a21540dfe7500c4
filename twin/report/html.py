"""report.html: one self-contained file (figures embedded as base64 PNG, no external resources).

:func:`build_report` takes a :class:`ReportData` whose fields are all optional: each section is
drawn from the results it needs, and a section whose results are absent says "not run". Stages
added later (MBAM, planning) fill their fields; nothing else changes.

Privacy: the report shows weight, height and sex only. It never shows DICOM identity tags (name,
ID, birth date, accession number, institution): :func:`build_report` refuses a summary that
carries one of those keys. All text is escaped (``html.escape``).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from twin.errors import InputError

# Keys that identify a patient (DICOM attribute keywords and common spellings): never shown.
IDENTIFYING = frozenset(k.lower() for k in (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PatientAddress", "PatientTelephoneNumbers", "StudyID", "name", "patient_name", "patient_id",
    "birth_date", "mrn"))

NOT_RUN = "not run"


@dataclass
class ReportData:
    """Results available to the report; every field may be None (the section says "not run").

    Attributes:
        title: the report's heading.
        summary: {label: value} of the patient (weight, height, sex only) and the study.
        scans: table of the scans (modality, time_h, radiopharmaceutical, ...).
        observations: OBS table plus a boolean ``used_in_fit`` column.
        curves: ``radiopharmaceutical, region, time_h, map_mbq, low_mbq, high_mbq``.
        curve_regions: regions to draw the curves of (default: those with observations).
        fit: {label: value} of the calibration (chi-square, starts, time, ...).
        parameters: table of the personal parameters (name, unit, MAP, interval, verdict).
        sloppiness: eigenvalues of the Fisher information at the MAP (data only).
        sloppiness_vectors: table of the stiffest/sloppiest eigenvectors (optional).
        mbam_steps: table of MBAM steps (``step, limit, meaning, n_parameters,
            parameters_left, max_rel_error, ...``; row 0 the full model; an optional ``status``
            column marks a ``rejected`` last step).
        mbam_spectra: [(label, eigenvalues)] of the reduction's models (drawn beside the
            twin's spectrum).
        mbam_info: {label: value} about the reduction (file, protocol, tolerance, status).
        mbam_note: a sentence shown in the MBAM part (why there is no reduction, or how its
            protocol differs from the study's).
        ct_hu, dose_gy, spacing_zyx: arrays ``[z, y, x]`` on one grid, voxel size (mm).
        dvh: ``region, dose_gy, volume_fraction``.
        regions: the organ and lesion table.
        limits: {region: absorbed-dose limit (Gy)} with ``limit_sources``.
        plan: PLAN table (``cycle, time_h, radiopharmaceutical, activity_mbq, ligand_nmol``).
        bed: ``region, cycle, cumulative_bed_gy``.
        assumptions, references: lists of sentences.
        provenance: versions, seeds, timings (dict, shown as a table).
    """

    title: str = "Theranostic digital twin report"
    summary: dict | None = None
    scans: pd.DataFrame | None = None
    observations: pd.DataFrame | None = None
    curves: pd.DataFrame | None = None
    curve_regions: list | None = None
    fit: dict | None = None
    parameters: pd.DataFrame | None = None
    sloppiness: np.ndarray | None = None
    sloppiness_vectors: pd.DataFrame | None = None
    mbam_steps: pd.DataFrame | None = None
    mbam_spectra: list | None = None
    mbam_info: dict | None = None
    mbam_note: str | None = None
    ct_hu: np.ndarray | None = None
    dose_gy: np.ndarray | None = None
    spacing_zyx: tuple | None = None
    dvh: pd.DataFrame | None = None
    dvh_regions: list | None = None
    regions: pd.DataFrame | None = None
    limits: dict | None = None
    limit_sources: dict | None = None
    plan: pd.DataFrame | None = None
    bed: pd.DataFrame | None = None
    assumptions: list = field(default_factory=list)
    references: list = field(default_factory=list)
    provenance: dict | None = None


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;border-bottom:2px solid #446}h2{font-size:1.25em;margin-top:1.8em;color:#334}
table{border-collapse:collapse;font-size:0.85em;margin:0.6em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eef}
td.t,th.t{text-align:left}.notrun{color:#888;font-style:italic}
img{max-width:100%;height:auto;display:block;margin:0.5em 0}
.over{color:#b00;font-weight:bold}nav a{margin-right:1em}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            return ""
        return f"{float(v):.4g}"
    return str(v)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, highlight=None) -> str:
    """An HTML table of a DataFrame; ``highlight``: boolean Series of rows to mark."""
    cols = list(df.columns)
    text_cols = {c for c in cols if not pd.api.types.is_numeric_dtype(df[c])}
    head = "".join(f'<th class="{"t" if c in text_cols else ""}">{_e(c)}</th>' for c in cols)
    rows = []
    for i, (_, r) in enumerate(df.iterrows()):
        cls = ' class="over"' if highlight is not None and bool(highlight.iloc[i]) else ""
        cells = "".join(f'<td class="{"t" if c in text_cols else ""}">{_e(_fmt(r[c]))}</td>'
                        for c in cols)
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _kv(d: dict) -> str:
    rows = "".join(f'<tr><th class="t">{_e(k)}</th><td class="t">{_e(_fmt(v))}</td></tr>'
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _not_run(what: str) -> str:
    return f'<p class="notrun">{_e(what)}: {NOT_RUN}.</p>'


def _check_private(d: dict | None, where: str) -> None:
    for k in (d or {}):
        if str(k).replace(" ", "").lower() in IDENTIFYING:
            raise InputError(f"report {where}: {k!r} identifies the patient and is never shown; "
                             f"remove it")


def _section_summary(r: ReportData) -> str:
    out = []
    out.append(_kv(r.summary) if r.summary else _not_run("patient and study summary"))
    if r.scans is not None and len(r.scans):
        out.append(_table(r.scans))
    return "".join(out)


def _section_tacs(r: ReportData) -> str:
    from twin.report.figures import tac_figure

    if r.curves is None or not len(r.curves):
        out = _not_run("calibration")
        if r.observations is not None and len(r.observations):
            out += _table(r.observations.drop(columns=["used_in_fit"], errors="ignore"))
        return out
    parts = []
    if r.fit:
        parts.append(_kv(r.fit))
    for rp in dict.fromkeys(r.curves["radiopharmaceutical"]):
        regions = r.curve_regions or list(dict.fromkeys(
            r.observations["region"] if r.observations is not None else r.curves["region"]))
        regions = [g for g in regions if g in set(r.curves["region"])]
        if regions:
            parts.append(_img(tac_figure(r.curves, r.observations, rp, regions),
                              f"time-activity curves of {rp}"))
    if r.parameters is not None and len(r.parameters):
        parts.append("<h3>Personal parameters</h3>" + _table(r.parameters))
    return "".join(parts)


def _spectra(r: ReportData) -> list:
    """[(label, eigenvalues)]: the twin's spectrum, then the reduction's models'."""
    out = [(f"this twin ({len(r.sloppiness)})", r.sloppiness)] \
        if r.sloppiness is not None and len(r.sloppiness) else []
    return out + list(r.mbam_spectra or [])


def _section_sloppiness(r: ReportData) -> str:
    from twin.report.figures import mbam_figure, spectrum_figure

    parts = []
    spectra = _spectra(r)
    if spectra and r.sloppiness is not None and len(r.sloppiness):
        ev = np.sort(np.asarray(r.sloppiness, float))[::-1]
        pos = ev[ev > 0]
        span = f"{math.log10(pos[0] / pos[-1]):.1f}" if len(pos) > 1 else "n/a"
        parts.append(f"<p>Eigenvalues of the fitted data's Fisher information J<sup>T</sup>J "
                     f"(log parameters, at the MAP) span {_e(span)} decades: the stiff "
                     f"directions are fixed by the scans, the sloppy ones by the prior."
                     + (" Beside it, the spectra of the models of the MBAM reduction (its "
                        "protocol, weighted by relative noise)." if r.mbam_spectra else "")
                     + "</p>")
    if spectra:
        parts.append(_img(spectrum_figure(spectra), "sloppiness spectrum"))
        if r.sloppiness_vectors is not None and len(r.sloppiness_vectors):
            parts.append(_table(r.sloppiness_vectors))
    else:
        parts.append(_not_run("sloppiness spectrum"))
    if r.mbam_steps is not None and len(r.mbam_steps):
        parts.append("<h3>MBAM steps</h3>")
        if r.mbam_info:
            parts.append(_kv(r.mbam_info))
        if r.mbam_note:
            parts.append(f"<p>{_e(r.mbam_note)}</p>")
        rejected = r.mbam_steps["status"].eq("rejected") if "status" in r.mbam_steps else None
        parts.append(_table(r.mbam_steps, rejected))
        parts.append(_img(mbam_figure(r.mbam_steps), "MBAM steps"))
    elif r.mbam_note:
        parts.append(f'<p class="notrun">Model reduction (MBAM): {_e(r.mbam_note)}.</p>')
    else:
        parts.append(_not_run("model reduction (MBAM)"))
    return "".join(parts)


def _section_dose(r: ReportData) -> str:
    from twin.report.figures import dvh_figure, mip_figure

    parts = []
    if r.dose_gy is not None and r.ct_hu is not None and r.spacing_zyx is not None:
        parts.append(_img(mip_figure(r.ct_hu, r.dose_gy, r.spacing_zyx),
                          "dose maximum-intensity projections over the CT"))
    else:
        parts.append(_not_run("voxel dose"))
    if r.dvh is not None and len(r.dvh):
        parts.append("<h3>Dose-volume histograms</h3>")
        parts.append(_img(dvh_figure(r.dvh, r.dvh_regions), "cumulative dose-volume histograms"))
    return "".join(parts)


def _section_table(r: ReportData) -> str:
    if r.regions is None or not len(r.regions):
        return _not_run("organ and lesion table")
    over = None
    if "fraction_of_limit" in r.regions:
        over = r.regions["fraction_of_limit"].fillna(0) > 1.0
    parts = [_table(r.regions, over)]
    if r.limits:
        src = r.limit_sources or {}
        lim = pd.DataFrame({"region": list(r.limits), "limit_gy": list(r.limits.values()),
                            "source": [src.get(k, "user") for k in r.limits]})
        parts.append("<h3>Limits</h3>" + _table(lim))
    return "".join(parts)


def _section_plan(r: ReportData) -> str:
    from twin.report.figures import bed_figure

    parts = []
    parts.append(_table(r.plan) if r.plan is not None and len(r.plan) else _not_run("planning"))
    if r.bed is not None and len(r.bed):
        parts.append(_img(bed_figure(r.bed, r.limits), "cumulative BED per cycle"))
    return "".join(parts)


def _section_list(items, what) -> str:
    if not items:
        return _not_run(what)
    return "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in items) + "</ul>"


def _section_provenance(r: ReportData) -> str:
    if not r.provenance:
        return _not_run("provenance")
    flat = {}
    for k, v in r.provenance.items():
        if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()):
            for k2, v2 in v.items():
                flat[f"{k}.{k2}"] = v2
        elif not isinstance(v, (dict, list)):
            flat[k] = v
    return _kv(flat)


SECTIONS = (
    ("summary", "Patient and study", _section_summary),
    ("tacs", "Time-activity curves and calibration", _section_tacs),
    ("sloppiness", "Sloppiness and model reduction", _section_sloppiness),
    ("dose", "Absorbed dose", _section_dose),
    ("table", "Organs and lesions", _section_table),
    ("plan", "Plan", _section_plan),
    ("assumptions", "Assumptions", lambda r: _section_list(r.assumptions, "assumptions")),
    ("references", "References", lambda r: _section_list(r.references, "references")),
    ("provenance", "Provenance", _section_provenance),
)


def build_report(data: ReportData) -> str:
    """The report as one HTML string (UTF-8, no external resources, no scripts)."""
    _check_private(data.summary, "summary")
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title, _ in SECTIONS)
    body = [f"<h1>{_e(data.title)}</h1><nav>{nav}</nav>"]
    for key, title, fn in SECTIONS:
        body.append(f'<section id="{key}"><h2>{_e(title)}</h2>{fn(data)}</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(data.title)}</title><style>{_CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def key_figures(data: ReportData) -> dict:
    """The report's key figures as PNG bytes, by file name: ``tacs_<radiopharmaceutical>.png``
    (measured and fitted curves with credible bands), ``dose_mip.png``, ``dvh.png``,
    ``plan_bed.png`` (cumulative BED per cycle), ``sloppiness.png``, ``mbam_steps.png``; a
    figure whose results are absent is left out. The same drawings as report.html."""
    from twin.report import figures as f

    out = {}
    if data.curves is not None and len(data.curves):
        for rp in dict.fromkeys(data.curves["radiopharmaceutical"]):
            regions = [g for g in (data.curve_regions or dict.fromkeys(data.curves["region"]))
                       if g in set(data.curves["region"])]
            if regions:
                out[f"tacs_{rp}.png"] = f.tac_figure(data.curves, data.observations, rp, regions)
    if data.dose_gy is not None and data.ct_hu is not None and data.spacing_zyx is not None:
        out["dose_mip.png"] = f.mip_figure(data.ct_hu, data.dose_gy, data.spacing_zyx)
    if data.dvh is not None and len(data.dvh):
        out["dvh.png"] = f.dvh_figure(data.dvh, data.dvh_regions)
    if data.bed is not None and len(data.bed):
        out["plan_bed.png"] = f.bed_figure(data.bed, data.limits)
    spectra = _spectra(data)
    if spectra:
        out["sloppiness.png"] = f.spectrum_figure(spectra)
    if data.mbam_steps is not None and len(data.mbam_steps):
        out["mbam_steps.png"] = f.mbam_figure(data.mbam_steps)
    return out


def write_report(path, data: ReportData, inputs=()):
    """Write report.html atomically (temporary file beside it, then rename)."""
    from twin.atomic import write_text_atomic

    return write_text_atomic(path, build_report(data), inputs=inputs)
