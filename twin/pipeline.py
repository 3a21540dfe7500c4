"""The pipeline from a DICOM study to a report, shared by ``twin demo`` and ``twin run``.

Stages (each timed; progress lines on stdout):
1. read the study (CT, PET, SPECT, RTSTRUCT/SEG; :func:`twin.imaging.load_study`) and observe the
   region activity of every scan (:func:`twin.observe.region_statistics`);
2. calibrate: fit the model's personal parameters to the PET and the first SPECT (configurable),
   with the organ and lesion volumes from the masks fixed (:func:`calibration.fit`); write
   twin.json; the fitted time-activity curves with credible bands and the therapy's region TIA
   from posterior samples (one vmapped solve per radiopharmaceutical);
3. reduce: the sloppiness spectrum at the twin (eigenvalues of J^T J of the fitted data in log
   parameters: one forward-mode Jacobian at the MAP) and the MBAM hierarchy (limits, meanings,
   parameters left, errors) of a reduction made beforehand by ``twin reduce`` (the one shipped
   with the package for the model, or the config's): the full reduction of psma-pbrpk takes
   longer than the demo's budget;
4. voxel dose of the therapy: the twin's region TIA spread over each region by the latest
   SPECT's uptake pattern, convolved with the nuclide's kernel (CT density correction);
   dose.nii.gz, dose_rtdose.dcm, DVHs; (optional) plan of activity and cycles;
5. tables (regions.csv, observations.csv), report.html and provenance.json.

Every output goes through :mod:`twin.atomic` (or the writers' own temporary-file-and-rename), so
an interrupted run leaves complete files only. Configuration: :class:`PipelineConfig` (built in
code by the demo, read from TOML by ``twin run``, see docs/run.md).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from twin.errors import InputError

# Absorbed-dose limits (Gy) shown in the organ table by default.
# Kidney 23 Gy: Emami B et al., Int J Radiat Oncol Biol Phys 1991;21:109 (EBRT TD5/5), used as
# the kidney cap in dosimetry-guided PRRT and RESIST-PC (shared/data/trials/
# population_radiobiology.md). Red marrow 2 Gy: Benua RS et al., Am J Roentgenol 1962;87:171
# (131I practice), ibid.
DEFAULT_LIMITS_GY = {"Kidney": 23.0, "RedMarrow": 2.0}
LIMIT_SOURCES = {"Kidney": "Emami 1991 (EBRT TD5/5); RESIST-PC kidney cap",
                 "RedMarrow": "Benua 1962 (131I practice)"}
# Published clinical ranges of absorbed dose per administered activity (Gy/GBq), for the table.
# 177Lu-PSMA-617: kidneys 0.39 (Violet J et al., J Nucl Med 2019;60:517) to 0.82 +/- 0.25
# (Mol Imaging Radionucl Ther 2017, PMC5472088); salivary glands 0.44-0.72 (Hohberg M et al.,
# Mol Imaging Biol 2016;18:437: 0.72) to 1.90 +/- 1.19 (parotid, PMC5472088).
# 177Lu-DOTATATE: kidneys 0.38 +/- 0.19 (EJNMMI Phys 2018, doi:10.1186/s40658-018-0232-9) to
# 0.57 +/- 0.09 (Clin Nucl Med 2013); spleen 0.85 (Lutathera label) to 1.17 +/- 0.14 (Clin Nucl
# Med 2013). See shared/data/pbpk/clinical_reference.md and docs/research/.
CLINICAL_RANGES_GY_PER_GBQ = {
    "lu177-psma-617": {"Kidney": (0.39, 0.82), "SG": (0.44, 1.90)},
    "lu177-dotatate": {"Kidney": (0.38, 0.57), "Spleen": (0.85, 1.17)},
}
# Regions whose volume the masks give and the model takes as a parameter V_<region>.
VOLUME_REGIONS = ("Kidney", "SG", "Liver", "Spleen", "Tumor1", "Tumor2", "TumorRest")
FIT_SCANS = ("pet+first-spect", "all")

REFERENCES = [
    "Begum NJ et al. The effect of ligand amount, affinity and internalization on PSMA-targeted "
    "imaging and therapy: a simulation study using a PBPK model. Sci Rep 2019;9:20041.",
    "Kletting P et al. Modeling and predicting tumor response in radioligand therapy. J Nucl Med "
    "2019;60:65-70.",
    "Bolch WE et al. MIRD Pamphlet No. 17: the dosimetry of nonuniform activity distributions. "
    "J Nucl Med 1999;40:11S-36S (voxel S values).",
    "Schneider W et al. Correlation between CT numbers and tissue parameters needed for Monte "
    "Carlo simulations of clinical dose distributions. Phys Med Biol 2000;45:459-478.",
    "Emami B et al. Tolerance of normal tissue to therapeutic irradiation. Int J Radiat Oncol "
    "Biol Phys 1991;21:109-122 (kidney limit).",
    "Benua RS et al. The relation of radioiodine dosimetry to results and complications in the "
    "treatment of metastatic thyroid cancer. Am J Roentgenol 1962;87:171-182 (marrow limit).",
    "Transtrum MK, Qiu P. Model reduction by manifold boundaries. Phys Rev Lett "
    "2014;113:098701 (MBAM).",
    "Transtrum MK, Machta BB, Sethna JP. Geometry of nonlinear least squares with applications "
    "to sloppy models and optimization. Phys Rev E 2011;83:036701 (sloppiness spectrum).",
]


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline needs besides the study (see docs/run.md for every key).

    Attributes:
        model, variant: library model.
        therapy: radiopharmaceutical to dose (default: the model's therapy one when given).
        ligand_nmol: {radiopharmaceutical: nmol per administration} (DICOM has no ligand
            amount; default: the typical amounts of :mod:`pbpk_models.regimen`).
        regimen: explicit administrations [{time_h, radiopharmaceutical, activity_mbq,
            ligand_nmol}] replacing the DICOM injection records (time from the first).
        region_map: {contour or label name: model region ('' ignores it)}.
        masks, mask_names: a NIfTI label map (and its names CSV) instead of the RTSTRUCT.
        spect_calibration_cps_per_mbq: camera calibration factor of count SPECTs.
        calibration_rel: {'PET': 0.05, 'SPECT': 0.10} relative calibration uncertainty.
        pvc, fwhm_mm: partial-volume correction of the region activities (``'gtm'``: the
            geometric transfer matrix, :mod:`twin.imaging.pvc`) with the scanners' resolution
            {'PET': mm, 'SPECT': mm}; ``None``: no correction.
        fit_scans: 'pet+first-spect' or 'all'.
        remainder: the observed region that is the body outside the segmented regions (the
            demo's and the built-in masks' 'Rest'); it is fitted as the sum of every model
            region without an observed region of its own (blood pools, muscle, adipose, skin,
            GI, ...), as the image holds their activity. None or '': fitted as the model region
            of that name alone.
        personal: parameters to fit (default: the model's personal parameters).
        volumes_from_masks: regions whose model volume V_<region> is set from the masks.
        fixed: {parameter: value} other patient parameters (canonical units).
        starts, max_nfev, fit_seed: optimiser settings.
        samples, sample_seed, level, days: posterior prediction.
        limits: {region: absorbed dose limit (Gy)}.
        tac_regions: regions drawn in the report's curves.
        plan, plan_limits: run the planning stage (activity and cycles optimised on the twin
            under these limits, ``twin plan`` syntax) and write plan.csv, plan_summary.csv.
        reduce, reduction: show the MBAM hierarchy of a reduction (REDUCED.json made by
            ``twin reduce``; default: the one shipped with the package for the model) in the
            report; the sloppiness spectrum at the twin is computed in any case.
    """

    model: str = "psma-pbrpk"
    variant: str | None = None
    therapy: str | None = None
    ligand_nmol: dict = field(default_factory=dict)
    regimen: tuple | None = None
    region_map: dict | None = None
    masks: str | None = None
    mask_names: str | None = None
    spect_calibration_cps_per_mbq: float | None = None
    calibration_rel: dict | None = None
    pvc: str | None = None
    fwhm_mm: dict | None = None
    fit_scans: str = "pet+first-spect"
    remainder: str | None = "Rest"
    personal: tuple | None = None
    volumes_from_masks: tuple = VOLUME_REGIONS
    fixed: dict = field(default_factory=dict)
    starts: int = 1
    max_nfev: int = 60
    fit_seed: int = 0
    samples: int = 100
    sample_seed: int = 0
    level: float = 0.90
    days: float = 60.0
    limits: dict = field(default_factory=lambda: dict(DEFAULT_LIMITS_GY))
    tac_regions: tuple = ("Kidney", "SG", "Liver", "Tumor1", "Tumor2", "TumorRest")
    # planning stage (twin.planning): off unless asked ([plan] in the config; the full demo)
    plan: bool = False
    plan_limits: tuple = ("Kidney:bed_gy<=40", "RedMarrow:dose_gy<=2")
    # the planner's bounds (twin.planning.PlanSettings; `twin plan` options of the same names)
    plan_activity_gbq: tuple = (3.7, 11.1)
    plan_max_cycles: int = 6
    plan_interval_weeks: float = 6.0
    plan_quantile: float = 0.95
    plan_samples: int = 48
    # MBAM stage: the sloppiness spectrum at the twin and a reduction's hierarchy ([reduce])
    reduce: bool = True
    reduction: str | None = None

    def __post_init__(self):
        if self.fit_scans not in FIT_SCANS:
            raise InputError(f"fit scans must be one of {', '.join(FIT_SCANS)}, not "
                             f"{self.fit_scans!r}")
        for name in ("starts", "max_nfev", "samples"):
            if int(getattr(self, name)) < (2 if name == "samples" else 1):
                raise InputError(f"{name} must be at least {2 if name == 'samples' else 1}")
        if not 0 < self.level < 1:
            raise InputError(f"level must be between 0 and 1, got {self.level}")
        if not self.days > 0:
            raise InputError(f"days must be positive, got {self.days}")
        for k, v in self.limits.items():
            if not (isinstance(v, (int, float)) and v > 0):
                raise InputError(f"limit of {k} must be a positive number of Gy, got {v!r}")
        if self.plan:
            self.plan_settings().validate()

    def plan_settings(self):
        """The planner's settings (:class:`twin.planning.optimise.PlanSettings`)."""
        from twin.planning.optimise import PlanSettings

        lo_hi = tuple(self.plan_activity_gbq)
        if len(lo_hi) != 2:
            raise InputError(f"plan activity_gbq must be [low, high] in GBq, got {lo_hi!r}")
        return PlanSettings(activity_gbq=lo_hi, max_cycles=self.plan_max_cycles,
                            interval_weeks=float(self.plan_interval_weeks),
                            quantile=float(self.plan_quantile), n_samples=self.plan_samples)

    def as_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}


class Progress:
    """Stage lines with timings: ``[i/n] text`` then ``done in x s``; timings kept.

    Both wall-clock and process CPU time (all threads) are kept: on a loaded machine the CPU
    time is the honest measure of the work (``<stage>_s`` wall, ``<stage>_cpu_s`` CPU).
    """

    def __init__(self, n: int, quiet: bool = False):
        self.n, self.i, self.quiet = n, 0, quiet
        self.timings: dict[str, float] = {}
        self.t0, self.c0 = time.time(), time.process_time()
        self._key = None
        self._t = None

    def stage(self, key: str, text: str) -> None:
        from twin.interrupt import check

        check()  # a Ctrl-C swallowed during the previous stage stops the run here
        self.end()
        self.i += 1
        self._key, self._t, self._c = key, time.time(), time.process_time()
        if not self.quiet:
            print(f"[{self.i}/{self.n}] {text} ...", flush=True)

    def end(self) -> None:
        if self._key is not None:
            dt = round(time.time() - self._t, 2)
            dc = round(time.process_time() - self._c, 2)
            self.timings[f"{self._key}_s"] = dt
            self.timings[f"{self._key}_cpu_s"] = dc
            if not self.quiet:
                print(f"      done in {dt:.1f} s (CPU {dc:.1f} s)", flush=True)
            self._key = None

    def total(self) -> float:
        return round(time.time() - self.t0, 2)

    def total_cpu(self) -> float:
        return round(time.process_time() - self.c0, 2)


def regimen_from_study(study, config: PipelineConfig):
    """The administrations: the config's explicit regimen, or the study's injection records
    (times from the first, activity from DICOM, ligand from the config or typical)."""
    from pbpk_models.regimen import Administration, Regimen, typical_ligand_nmol

    if config.regimen:
        return Regimen.from_frame(pd.DataFrame(list(config.regimen)), source="config regimen")
    injections = study.injections
    if not injections:
        raise InputError(f"{study.source}: no injection record in the DICOM; give the regimen in "
                         f"the config ([[regimen]] tables)")
    t0 = injections[0].time
    admins = []
    for inj in injections:
        rp = inj.radiopharmaceutical.lower()
        nmol = config.ligand_nmol.get(rp, inj.ligand_nmol)
        if nmol is None:
            nmol = typical_ligand_nmol(rp, inj.activity_mbq)
        if nmol is None:
            raise InputError(f"no ligand amount for {rp}; give it in the config "
                             f"([radiopharmaceuticals.ligand_nmol] \"{rp}\" = NMOL)")
        admins.append(Administration((inj.time - t0).total_seconds() / 3600.0, rp,
                                     inj.activity_mbq, float(nmol)))
    return Regimen(tuple(admins))


def remainder_group(remainder: str | None, observed_regions, model_regions) -> dict:
    """{remainder: model regions it holds}: the model regions without an observed region of
    their own (and the model region of the remainder's name); {} when there is no remainder
    or it is not observed."""
    observed = {str(r) for r in observed_regions}
    if not remainder or remainder not in observed:
        return {}
    members = tuple(r for r in model_regions if r == remainder or r not in observed)
    return {remainder: members} if members else {}


def _fit_rows(obs_df: pd.DataFrame, regions, fit_scans: str) -> np.ndarray:
    """Boolean mask of the observation rows used in the fit."""
    ok = obs_df["region"].isin(list(regions)).to_numpy()
    if fit_scans == "all":
        return ok
    spect = obs_df["modality"] == "SPECT"
    first = obs_df.loc[spect, "time_h"].min() if spect.any() else np.inf
    use = (obs_df["modality"] == "PET") | (spect & np.isclose(obs_df["time_h"], first))
    return ok & use.to_numpy()


def _sample_params(model, post, n_samples: int, seed: int) -> np.ndarray:
    """(1 + n_samples, n_params): the MAP, then posterior draws (Laplace, log space)."""
    base = model.params_from(post.fixed)
    idx = np.array([model.parameter_names.index(n) for n in post.names])
    thetas = np.vstack([post.theta_map[None, :], post.sample_log(n_samples, seed)])
    P = np.tile(base, (len(thetas), 1))
    P[:, idx] = np.exp(thetas)
    return P


def _own_administrations(regimen, rp: str):
    """The administrations of one radiopharmaceutical (each is predicted from its own, as in the
    fit)."""
    from pbpk_models.regimen import Regimen

    return Regimen(tuple(a for a in regimen.administrations
                         if a.radiopharmaceutical.lower() == rp))


def _prediction_model(spec, regimen, rp: str, days: float):
    """(sub-regimen, compiled model) of one radiopharmaceutical's prediction: its own
    administrations (as in the fit), simulated ``days`` past the last."""
    from pbpk_models.simulate import prepare

    sub = _own_administrations(regimen, rp)
    return sub, prepare(spec, sub, None, days)[0]


def _prediction_solve(model, sub, P, times_h, days: float) -> dict:
    """The vmapped solve of :func:`predict` (population settings): one row of ``P`` a patient."""
    from pbpk_models.simulate import POPULATION_SETTINGS, simulate_batch

    return simulate_batch(model, sub, P, np.asarray(times_h, float), days=days,
                          settings=POPULATION_SETTINGS, mode=model.mode)


def _start_warmup(spec, regimen, grids, fixed: dict, n_rows: int):
    """A started thread that runs :func:`predict`'s vmapped solves (the same
    :func:`_prediction_model` and :func:`_prediction_solve`, same shapes) once on the population
    parameters, so that their compilation overlaps the fit (XLA compiles on one core; the
    predictions after the fit then find them compiled). Failures are ignored here: the real
    call reports them."""
    import threading

    jobs = []
    for rp, ts, days in grids:  # the models are built here (sympy), only the solves run there
        try:
            sub, model = _prediction_model(spec, regimen, rp, days)
            jobs.append((model, sub, np.tile(model.params_from(fixed), (n_rows, 1)), ts, days))
        except Exception:  # noqa: BLE001 (reported by the real call)
            pass

    def run():
        for job in jobs:
            try:
                _prediction_solve(*job)
            except Exception:  # noqa: BLE001 (reported by the real call)
                pass

    th = threading.Thread(target=run, name="twin-warmup", daemon=False)
    th.start()
    return th


def predict(post, regimen, spec, rp: str, times_h, *, days: float, n_samples: int, seed: int,
            level: float):
    """Curves and TIA of one radiopharmaceutical at the MAP and its credible band.

    As in the fit, the radiopharmaceutical is simulated from its own administrations (no
    competition with the others). One vmapped solve of the MAP and ``n_samples`` draws.
    Returns (curves table, TIA table ``region, tia_mbq_h, tia_low, tia_high, tiac_h``,
    n_failed, compiled model, MAP parameter vector).
    """
    from twin.errors import ModelError

    sub, model = _prediction_model(spec, regimen, rp, days)
    P = _sample_params(model, post, n_samples, seed)
    out = _prediction_solve(model, sub, P, times_h, days)
    i = [r.name for r in out["model"].radiopharmaceuticals].index(rp)
    act = np.asarray(out["activity_mbq"])[:, i]  # (batch, region, time)
    tia = np.asarray(out["tia_mbq_h"])[:, i]  # (batch, region)
    ok = np.asarray(out["ok"]) & np.all(np.isfinite(tia), axis=1)
    if not ok[0]:
        raise ModelError("the solve at the twin's MAP parameters failed")
    q = [(1 - level) / 2, (1 + level) / 2]
    lo, hi = np.quantile(act[1:][ok[1:]], q, axis=0)
    tlo, thi = np.quantile(tia[1:][ok[1:]], q, axis=0)
    regions = list(out["model"].regions)
    ts = np.asarray(out["times_h"])
    curves = pd.DataFrame({
        "radiopharmaceutical": rp, "region": np.repeat(regions, len(ts)),
        "time_h": np.tile(ts, len(regions)), "map_mbq": act[0].ravel(),
        "low_mbq": lo.ravel(), "high_mbq": hi.ravel()})
    administered = float(out["administered_mbq"][i])
    table = pd.DataFrame({"region": regions, "tia_mbq_h": tia[0], "tia_low": tlo,
                          "tia_high": thi, "tiac_h": tia[0] / administered})
    return curves, table, int((~ok[1:]).sum()), out["model"], P[0]


def sloppiness(problem, theta) -> tuple[np.ndarray, pd.DataFrame]:
    """The sloppiness spectrum of the fitted data at ``theta``: eigenvalues (descending) of
    g = J^T J, J the forward-mode Jacobian of the data residuals (sigma units) in log parameters
    (:func:`calibration.mbam.spectrum`; the fit's compiled Jacobian, so one call at the MAP), and
    the stiffest and sloppiest eigenvectors (right singular vectors of J)."""
    from calibration import Objective
    from calibration.mbam import spectrum

    _, J, _, _ = Objective(problem).evaluate(theta)
    Jd = np.asarray(J)[: problem.n_obs]
    n = Jd.shape[1]
    w = np.zeros(n)
    ev = spectrum(Jd)[:n]
    w[: len(ev)] = ev  # fewer data than parameters: the rest of g's eigenvalues are 0
    _, _, vt = np.linalg.svd(Jd, full_matrices=True)
    vec = pd.DataFrame({"parameter": list(problem.names), "stiffest": vt[0],
                        "sloppiest": vt[-1]})
    return w, vec


def _package_dirs() -> tuple:
    import calibration
    import pbpk_models

    return (Path(calibration.__file__).parent / "mbam", Path(pbpk_models.__file__).parent
            / "library")


def find_shipped_reduction(model: str, variant: str, dirs=None,
                           protocol: str | None = None) -> Path | None:
    """The REDUCED.json shipped with the package for ``model`` / ``variant``, or None.

    Looks at every ``*.json`` under ``calibration/mbam/`` and ``pbpk_models/library/`` (any
    depth; the shipped ones are in ``pbpk_models/library/reduced/``, see
    :mod:`calibration.mbam.library`) for a reduced-model file (``"format":
    "twin-reduced-model"``, written by ``twin reduce``) whose ``base_model`` and
    ``base_variant`` match. Of several, the one made for ``protocol`` (text as
    :func:`_protocol_text`, e.g. "PET 1 h, SPECT 24 h") wins, else the first by path.
    """
    from calibration.mbam.io import FORMAT

    found = []
    for folder in dirs or _package_dirs():
        for p in sorted(Path(folder).rglob("*.json")):
            try:
                if p.stat().st_size > 20_000_000:
                    continue
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if (isinstance(d, dict) and d.get("format") == FORMAT
                    and d.get("base_model") == model and d.get("base_variant") == variant):
                obs = (d.get("protocol") or {}).get("observations") or []
                if protocol is not None and _protocol_text(obs) == protocol:
                    return p
                found.append(p)
    return found[0] if found else None


def _protocol_text(observations) -> str:
    """'PET 1 h, SPECT 24 h' from protocol observation records (times from the first
    administration)."""
    seen = {}
    for o in observations:
        seen.setdefault((str(o["modality"]), round(float(o["time_h"]), 1)), None)
    return ", ".join(f"{m} {t:g} h" for m, t in sorted(seen, key=lambda k: k[1]))


def mbam_tables(doc: dict) -> tuple[pd.DataFrame, list]:
    """The MBAM hierarchy of a REDUCED.json document as a steps table and spectra.

    Returns (steps: ``step, limit, meaning, method, n_parameters, parameters_left,
    max_rel_error, worst_prediction, status`` with row 0 the full model and a rejected last
    step, if any, marked ``rejected``; spectra: [(label, eigenvalues)] per model where the
    reduction recorded them).
    """
    hier = doc.get("hierarchy") or []
    full = list(hier[0]["parameters"]) if hier else []
    rows = [{"step": 0, "limit": "full model", "meaning": "", "method": "",
             "n_parameters": int(doc.get("n_parameters_full", len(full))),
             "parameters_left": ", ".join(full), "max_rel_error": 0.0,
             "worst_prediction": "", "status": "start"}]
    steps = [(s, "accepted") for s in doc.get("limits") or []] + \
        [(s, "rejected") for s in doc.get("rejected") or []]
    for i, (s, status) in enumerate(steps, start=1):
        left = s.get("parameters_left") or []
        rows.append({"step": i, "limit": str(s.get("limit", "")),
                     "meaning": str(s.get("meaning", "")), "method": str(s.get("method", "")),
                     "n_parameters": int(s.get("n_parameters_left", len(left))),
                     "parameters_left": ", ".join(map(str, left)),
                     "max_rel_error": float(s.get("worst_error", np.nan)),
                     "worst_prediction": str(s.get("worst_prediction", "")), "status": status})
    spectra = [(f"{'full' if k == 0 else f'MBAM {k}'} ({len(h.get('parameters') or [])})",
                np.asarray(h["eigenvalues"], float))
               for k, h in enumerate(hier) if h.get("eigenvalues")]
    if len(spectra) > 3:  # a long chain: the full model and the last two with a spectrum
        spectra = [spectra[0]] + spectra[-2:]
    return pd.DataFrame(rows), spectra


def mbam_stage(config: "PipelineConfig", spec, fitted_protocol: str) -> dict:
    """The MBAM part of the pipeline: the reduction hierarchy of ``config.reduction`` (or the
    one shipped with the package for the model) as tables, and what to say about it.

    The full reduction of psma-pbrpk takes longer than the demo's budget, so the pipeline shows
    a reduction computed beforehand with ``twin reduce`` for a protocol like the study's (its
    protocol is printed beside this study's). Returns {steps, spectra, info, note, path}; steps
    None (with the note) when there is no reduction.
    """
    from calibration.mbam.io import read_reduced

    if not config.reduce:
        return {"steps": None, "spectra": [], "info": None, "path": None,
                "note": "model reduction disabled ([reduce] enabled = false)"}
    path = Path(config.reduction) if config.reduction else \
        find_shipped_reduction(spec.name, spec.variant, protocol=fitted_protocol)
    if path is None:
        return {"steps": None, "spectra": [], "info": None, "path": None,
                "note": f"no shipped reduction for this model/protocol ({spec.name}, "
                        f"{spec.variant}); make one with `twin reduce` and give it as [reduce] "
                        f"file"}
    doc = read_reduced(path)  # InputError if missing or not a REDUCED.json
    if doc.get("base_model") != spec.name:
        raise InputError(f"{path}: a reduction of {doc.get('base_model')}, not of the study's "
                         f"model {spec.name}; give a reduction of {spec.name} ([reduce] file)")
    steps, spectra = mbam_tables(doc)
    final_left = steps.loc[steps["status"] != "rejected", "parameters_left"].iloc[-1]
    if steps["n_parameters"].max() > 12:  # long lists: the final model's once, not per step
        steps = steps.drop(columns="parameters_left")
    protocol = doc.get("protocol") or {}
    made_for = _protocol_text(protocol.get("observations") or [])
    info = {"reduction": path.name, "base model": f"{doc.get('base_model')} "
            f"({doc.get('base_variant')})",
            "made for the protocol": made_for or "not recorded",
            "this study's fit": fitted_protocol,
            "preserved TIA": ", ".join(protocol.get("preserve") or []),
            "tolerance": doc.get("tolerance"), "status": doc.get("status"),
            "parameters": f"{doc.get('n_parameters_full')} -> {doc.get('n_parameters')}",
            "parameters left": final_left}
    produced = doc.get("produced") or {}
    for key in ("command", "date"):
        if produced.get(key):
            info[f"produced ({key})"] = str(produced[key])
    note = None
    if made_for and made_for != fitted_protocol:
        note = (f"The reduction was made for the protocol {made_for}; this study was fitted on "
                f"{fitted_protocol}: the limits are those its protocol supports.")
    return {"steps": steps, "spectra": spectra, "info": info, "note": note, "path": path}


def voxel_dose(study, region_tia: dict, nuclide: str, out: Path):
    """Spread the twin's region TIA by the latest SPECT and convolve; write dose files.

    Returns (dose array [z, y, x] Gy, CT HU on the masks' grid, labels, names, region stats).
    """
    from twin.dosimetry import (compute_dose, hu_to_density, region_statistics,
                                spread_region_tia, write_rtdose)
    from twin.imaging import resample_to
    from twin.imaging.io import write_nifti

    labels = study.masks.labels
    names = dict(study.masks.names)
    if not study.spect:
        raise InputError(f"{study.source}: no SPECT to spread the region TIA over its voxels")
    latest = max(study.spect, key=lambda s: s.start)
    uptake = resample_to(latest.volume, labels, interpolation="linear",
                         transform=latest.transform).array
    uptake = np.clip(np.nan_to_num(uptake), 0.0, None)
    known = {r: v for r, v in region_tia.items() if r in set(names.values())}
    tia = spread_region_tia(known, labels.array, names, uptake)
    if study.ct is not None:
        ct = resample_to(study.ct, labels, interpolation="linear", default_value=-1000.0).array
    else:
        ct = np.zeros(labels.array.shape, np.float32)  # water everywhere (no CT)
    density = hu_to_density(ct)
    spacing_zyx = tuple(float(s) for s in labels.spacing_mm[::-1])
    dose = np.asarray(compute_dose(tia.astype(np.float32), nuclide, spacing_zyx,
                                   density_g_cm3=density))
    dose_vol = labels.replace(array=dose.astype(np.float32), units="Gy")
    write_nifti(dose_vol, out / "dose.nii.gz")
    write_rtdose(dose_vol.to_sitk(), out / "dose_rtdose.dcm")
    stats = region_statistics(dose, labels.array, names, voxel_volume_ml=labels.voxel_volume_ml)
    keep = [c for c in ("region", "mean_gy", "max_gy", "d2_gy", "d50_gy", "d98_gy")
            if c in stats.columns]
    return dose, np.asarray(ct), labels, names, stats[keep]


def _decades(eigenvalues) -> str:
    pos = np.asarray(eigenvalues, float)
    pos = pos[pos > 0]
    return f"{np.log10(pos.max() / pos.min()):.1f}" if len(pos) > 1 else "n/a"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _folder_hash(folder: Path) -> str:
    """SHA-256 (16 hex) over the sorted relative names and contents of a folder's files."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run_pipeline(study_dir, config: PipelineConfig, out, *, progress: Progress | None = None,
                 extra_provenance: dict | None = None, title: str | None = None,
                 summary_extra: dict | None = None, stage_offset: int = 0) -> dict:
    """Run the pipeline on one study folder; write everything into ``out`` (must exist).

    Returns a dict of the main results (tables, posterior, paths) for callers and tests.
    """
    import jax

    from calibration import Observations, build_problem, fit, model_spec, write_twin
    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u
    from twin.atomic import write_csv_atomic, write_text_atomic
    from twin.dosimetry.dvh import cumulative_dvh
    from twin.imaging import load_study
    from twin.observe import region_statistics
    from twin.report import ReportData, write_report

    out = Path(out)
    study_dir = Path(study_dir)
    progress = progress or Progress(6 if config.plan else 5)
    spec = model_spec(config.model, config.variant)

    # -- 1. read and observe
    progress.stage("read_observe", "reading the study and observing region activity")
    study = load_study(study_dir, masks=config.masks, mask_names=config.mask_names,
                       region_map=config.region_map,
                       spect_calibration_cps_per_mbq=config.spect_calibration_cps_per_mbq)
    stats = region_statistics(study, calibration_rel=config.calibration_rel, pvc=config.pvc,
                              fwhm_mm=config.fwhm_mm)
    obs_cols = ["region", "time_h", "activity_mbq", "sigma_mbq", "modality",
                "radiopharmaceutical"]
    obs_df = stats[obs_cols].copy()
    regimen = regimen_from_study(study, config)
    write_csv_atomic(obs_df, out / "observations.csv")

    # -- 2. calibrate
    progress.stage("calibrate", "calibrating the twin on the PET and the first SPECT"
                   if config.fit_scans == "pet+first-spect" else "calibrating the twin")
    groups = remainder_group(config.remainder, obs_df["region"], spec.regions)
    use = _fit_rows(obs_df, tuple(spec.regions) + tuple(groups), config.fit_scans)
    if not use.any():
        raise InputError(f"no observation of a {spec.name} region to fit; map the contour names "
                         f"to model regions ([regions] in the config); the model's regions are "
                         f"{', '.join(spec.regions)}")
    par_names = {p.name for p in spec.parameters}
    vols = stats.groupby("region", sort=False)["volume_ml"].first()
    fixed = {f"V_{r}": float(vols[r]) for r in config.volumes_from_masks
             if r in vols.index and f"V_{r}" in par_names}
    fixed.update({str(k): float(v) for k, v in config.fixed.items()})
    observations = Observations.from_dataframe(obs_df[use].reset_index(drop=True),
                                               source="observations.csv")
    problem = build_problem(observations, regimen, config.model, variant=config.variant,
                            personal=config.personal, fixed=fixed, region_groups=groups)
    therapy = (config.therapy or (spec.default_radiopharmaceutical
                                  if spec.default_radiopharmaceutical in
                                  regimen.radiopharmaceuticals
                                  else regimen.radiopharmaceuticals[-1])).lower()
    if therapy not in regimen.radiopharmaceuticals:
        raise InputError(f"therapy {therapy} is not administered in the study "
                         f"({', '.join(regimen.radiopharmaceuticals)})")
    grids = []  # (radiopharmaceutical, output times, days) of the predicted curves
    for rp in regimen.radiopharmaceuticals:
        t_first = min(a.time_h for a in regimen.administrations
                      if a.radiopharmaceutical.lower() == rp)
        t_obs = obs_df.loc[obs_df["radiopharmaceutical"] == rp, "time_h"]
        t_last = max(float(t_obs.max()) if len(t_obs) else t_first + 24.0, t_first + 1.0)
        span = (t_last - t_first) * 1.15
        # dense early (uptake), then uniform to past the last scan
        ts = np.unique(t_first + np.concatenate([np.geomspace(0.05, span, 60),
                                                 np.linspace(0.0, span, 60, endpoint=False)]))
        grids.append((rp, ts, config.days if rp == therapy else max(span / 24.0, 1e-3)))
    # compile the prediction solves on the other core while the fit runs (same shapes)
    warm = _start_warmup(spec, regimen, grids, fixed, config.samples + 1)
    try:
        post = fit(observations, regimen, config.model, n_starts=config.starts,
                   seed=config.fit_seed, max_nfev=config.max_nfev, problem=problem)
    finally:
        # also on Ctrl-C or an error: a thread left inside XLA at interpreter exit aborts the
        # process ("FATAL: exception not rethrown"), so the warm-up is always waited for
        warm.join()
    write_twin(out / "twin.json", post, regimen)
    curves, tia_table, n_failed, therapy_model, therapy_p = [], None, 0, None, None
    for rp, ts, days in grids:
        c, t, nf, m, p = predict(post, regimen, spec, rp, ts, days=days,
                                 n_samples=config.samples, seed=config.sample_seed,
                                 level=config.level)
        curves.append(c)
        if rp == therapy:
            tia_table, n_failed, therapy_model, therapy_p = t, nf, m, p
    curves = pd.concat(curves, ignore_index=True)

    # -- 2b. sloppiness and model reduction (MBAM)
    progress.stage("reduce", "sloppiness spectrum at the twin and the MBAM reduction")
    eigen, eigvec = sloppiness(problem, post.theta_map)
    fitted_protocol = _protocol_text(obs_df[use].to_dict(orient="records"))
    mbam = mbam_stage(config, spec, fitted_protocol)
    if not progress.quiet:
        print(f"      spectrum spans {_decades(eigen)} decades; "
              + (f"MBAM {mbam['info']['parameters']} parameters ({mbam['path'].name})"
                 if mbam["steps"] is not None else mbam["note"]), flush=True)

    # -- 3. voxel dose
    progress.stage("dose", "voxel TIA and absorbed dose (kernel convolution, CT density)")
    nuclide = {r.name: r.nuclide for r in therapy_model.radiopharmaceuticals}[therapy]
    region_tia = dict(zip(tia_table["region"], tia_table["tia_mbq_h"]))
    dose, ct_hu, labels, names, dose_stats = voxel_dose(study, region_tia, nuclide, out)
    dvh = cumulative_dvh(dose, labels.array, names, n_bins=100)

    # -- 3b. plan (optional)
    plan_table = bed_table = None
    if config.plan:
        from twin.planning import parse_limit, plan_twin
        from twin.planning.report import cumulative_table

        progress.stage("plan", "planning activity and cycles under the organ limits")
        limits = [parse_limit(str(t)) for t in config.plan_limits]
        # on the twin's clock: the cycle the SPECT measured is delivered, the rest is planned
        plan = plan_twin(post, limits, config.plan_settings(), twin_regimen=regimen)
        plan_table = plan.to_frame()
        write_csv_atomic(plan_table, out / "plan.csv")
        write_csv_atomic(plan.summary(config.level), out / "plan_summary.csv")
        plan_table = plan_table.assign(cycle=np.arange(1, len(plan_table) + 1))
        cum = cumulative_table(plan, config.level)
        bed_table = cum[cum["quantity"] == "bed_gy"].rename(
            columns={"map_gy": "cumulative_bed_gy"})[["region", "cycle", "cumulative_bed_gy"]]

    # -- 4. tables, report, provenance
    progress.stage("report", "tables, report and provenance")
    energy = rn.energy_per_decay_mev(nuclide)
    masses = therapy_model.region_masses_g(therapy_p)
    administered_gbq = float(tia_table["tia_mbq_h"].sum() / tia_table["tiac_h"].sum()) / 1000.0
    table = tia_table.copy()
    table["dose_gy_per_gbq"] = [
        row.tiac_h * u.gy_per_mbq_h(energy, masses[row.region]) * 1000.0
        if masses.get(row.region) else np.nan for row in table.itertuples()]
    table["dose_gy"] = table["dose_gy_per_gbq"] * administered_gbq
    ranges = CLINICAL_RANGES_GY_PER_GBQ.get(therapy, {})
    table["clinical_gy_per_gbq"] = [f"{ranges[r][0]}-{ranges[r][1]}" if r in ranges else ""
                                    for r in table["region"]]
    table = table.merge(dose_stats, on="region", how="left")
    table["limit_gy"] = [config.limits.get(r, np.nan) for r in table["region"]]
    ref = table["mean_gy"].where(table["mean_gy"].notna(), table["dose_gy"]) \
        if "mean_gy" in table else table["dose_gy"]
    table["fraction_of_limit"] = ref / table["limit_gy"]
    write_csv_atomic(table, out / "regions.csv")

    obs_report = obs_df.copy()
    obs_report["used_in_fit"] = use
    d = post.diagnostics
    interval = post.interval(config.level)
    ident = {row["name"]: row for row in post.identifiability()}
    params = pd.DataFrame({
        "parameter": list(post.names), "unit": list(post.units),
        "map": list(post.map_values.values()),
        "low": [interval[n][0] for n in post.names], "high": [interval[n][1] for n in post.names],
        "posterior/prior sd": [ident.get(n, {}).get("ratio", np.nan) for n in post.names],
        "verdict": [str(ident.get(n, {}).get("verdict", "")) for n in post.names]})
    scans = pd.DataFrame([{"modality": s.modality,
                           "time_h": (s.start - study.first_administration).total_seconds() / 3600,
                           "radiopharmaceutical": s.radiopharmaceutical,
                           "injected_mbq": s.injection.activity_mbq,
                           "duration_s": s.duration_s} for s in study.scans])
    summary = {"model": f"{spec.name} ({spec.variant})", "therapy": therapy,
               "nuclide": nuclide, "administered activity (GBq)": administered_gbq,
               "weight (kg)": study.patient.weight_kg, "height (m)": study.patient.height_m,
               "sex": study.patient.sex, "regions in the masks": len(names)}
    summary.update(summary_extra or {})
    fit_info = {"observations fitted": int(d["n_obs"]), "personal parameters": len(post.names),
                "chi-square": d["chi2_data"], "starts converged":
                f"{d['n_converged']}/{d['n_starts']}", "fit time (s)": d["time_s"],
                "credible level": config.level, "posterior samples": config.samples,
                "failed samples": n_failed}
    for i, w in enumerate(d.get("warnings", [])):
        fit_info[f"warning {i + 1}"] = w
    fitted = "the PET and the first SPECT" if config.fit_scans != "all" else "all scans"
    assumptions = [
        f"Calibration on {fitted}; later scans are held out (open markers) and show the twin's "
        f"prediction.",
        "Each radiopharmaceutical is fitted and predicted from its own administrations "
        "(no competition for receptors between the imaging and the therapy ligand).",
        "Posterior: Laplace approximation (lognormal in the personal parameters) at the MAP.",
        f"Organ and lesion volumes ({', '.join(k[2:] for k in fixed if k.startswith('V_'))}) "
        f"from the masks; other parameters at the model's population values.",
        "Voxel TIA: the twin's region TIA spread over each region by the latest SPECT's uptake "
        "pattern; outside the regions the remainder TIA is spread the same way.",
        "Absorbed dose: kernel convolution (MIRD voxel S values) with CT density scaling; "
        "partial-volume effects of the SPECT are not corrected.",
        "The organ table compares the mean voxel dose of this cycle with the limits; the "
        "cumulative plan over cycles is the planning stage's.",
    ]
    provenance = {
        "twin_version": __import__("twin").__version__,
        "python": platform.python_version(), "jax": jax.__version__,
        "model": {"name": spec.name, "variant": spec.variant, "references": spec.references},
        "config": config.as_dict(),
        "regimen": regimen.to_frame().to_dict(orient="records"),
        "fixed_parameters": fixed,
        "posterior_map": post.map_values,
        "seeds": {"fit": config.fit_seed, "samples": config.sample_seed},
        "nuclide": nuclide, "nuclide_energy_mev": energy,
        "input_sha256_16": {"study": _folder_hash(study_dir),
                            **({"reduction": _sha(mbam["path"])} if mbam["path"] else {})},
        "reduction": ({"file": str(mbam["path"]), **mbam["info"]} if mbam["path"]
                      else {"file": None, "note": mbam["note"]}),
        **(extra_provenance or {}),
    }
    report = ReportData(
        title=title or "Theranostic digital twin report", summary=summary, scans=scans,
        observations=obs_report, curves=curves,
        curve_regions=[r for r in config.tac_regions if r in set(obs_df["region"])]
        or list(dict.fromkeys(obs_df.loc[use, "region"]))[:6],
        fit=fit_info, parameters=params, sloppiness=eigen, sloppiness_vectors=eigvec,
        mbam_steps=mbam["steps"], mbam_spectra=mbam["spectra"], mbam_info=mbam["info"],
        mbam_note=mbam["note"],
        ct_hu=ct_hu, dose_gy=dose, spacing_zyx=tuple(float(s) for s in labels.spacing_mm[::-1]),
        dvh=dvh, dvh_regions=[r for r in table.dropna(subset=["mean_gy"])
                              .sort_values("mean_gy", ascending=False)["region"]][:10]
        if "mean_gy" in table else None,
        regions=table, limits=dict(config.limits), plan=plan_table, bed=bed_table,
        limit_sources={k: LIMIT_SOURCES.get(k, "config") for k in config.limits},
        assumptions=assumptions, references=REFERENCES + list(spec.references or []))
    provisional = {**provenance, "timings_s": {**progress.timings}}
    report.provenance = {k: v for k, v in provisional.items()
                         if k in ("twin_version", "python", "jax", "seeds", "nuclide",
                                  "timings_s")}
    write_report(out / "report.html", report)
    progress.end()
    provenance["output_sha256_16"] = {p.name: _sha(p) for p in sorted(out.glob("*.csv"))}
    provenance["timings_s"] = {**progress.timings, "total_s": progress.total(),
                               "total_cpu_s": progress.total_cpu()}
    write_text_atomic(out / "provenance.json", json.dumps(provenance, indent=2, default=str))
    return {"regions": table, "observations": obs_df, "posterior": post, "regimen": regimen,
            "curves": curves, "provenance": provenance, "report": report}
