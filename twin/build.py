"""A personalised twin: simulate from TWIN.json with credible intervals.

:func:`simulate_twin` predicts each region's time-integrated activity (TIA, MBq h) of a regimen
at the twin's MAP parameters, and its equal-tailed credible interval (default 90%) by sampling
the Laplace posterior (lognormal in the personal parameters, :class:`calibration.Posterior`)
and solving all samples at once (one jit-compiled, vmapped solve). Non-personal parameters are
at the model's population values or the patient's fixed values.

With ``doses=True`` it also gives each region's absorbed dose and BED with their intervals, from
the same posterior draws, by the batched organ dosimetry engine
(:func:`twin.dosimetry.organ.organ_doses`: self-dose of the non-penetrating emissions, TIA x S
with S from the region mass; Lea-Catcheside BED where the tissue's alpha/beta and repair
half-time are known, i.e. the kidney by default; NaN elsewhere). Summed over the regimen's cycles.

Solver: the Rosenbrock population settings (``pbpk_models.simulate.POPULATION_SETTINGS``,
Rodas5P, rtol 1e-6), checked against diffrax Kvaerno5 at rtol 1e-10 in
``tests/calibration/test_twin_predict.py`` (region TIA within 1e-4 relative).

As in the fit, each radiopharmaceutical of the regimen is simulated from its own
administrations (no competition between an imaging and a therapy ligand, see
:mod:`calibration.fit`); the table is for one radiopharmaceutical (default: the model's therapy
radiopharmaceutical when the regimen has it, else the last one given).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.errors import InputError, ModelError


@dataclass(frozen=True)
class TwinPrediction:
    """Region TIA of a twin with credible intervals.

    Attributes:
        regions: region names.
        radiopharmaceutical: which labelled ligand the TIA is of.
        administered_mbq: its total administered activity (MBq).
        tia_mbq_h: TIA at the MAP parameters (MBq h), per region.
        tia_low, tia_high: lower and upper ends of the ``level`` credible interval (MBq h).
        samples_tia_mbq_h: (n_ok_samples, n_regions) sampled TIA.
        level: credible level (0.90); n_failed: samples whose solve failed (dropped).
        dose_gy, dose_low, dose_high: absorbed dose of the regimen (Gy) at the MAP and its
            interval (``doses=True`` only, else None; NaN for regions without a mass).
        bed_gy, bed_low, bed_high: BED (Gy), NaN where the tissue has no radiobiology.
        samples_dose_gy, samples_bed_gy: (n_ok_samples, n_regions) sampled dose and BED.
    """

    regions: tuple
    radiopharmaceutical: str
    administered_mbq: float
    tia_mbq_h: np.ndarray
    tia_low: np.ndarray
    tia_high: np.ndarray
    samples_tia_mbq_h: np.ndarray
    level: float
    n_failed: int
    dose_gy: np.ndarray | None = None
    dose_low: np.ndarray | None = None
    dose_high: np.ndarray | None = None
    bed_gy: np.ndarray | None = None
    bed_low: np.ndarray | None = None
    bed_high: np.ndarray | None = None
    samples_dose_gy: np.ndarray | None = None
    samples_bed_gy: np.ndarray | None = None

    def tia(self) -> dict:
        return dict(zip(self.regions, map(float, self.tia_mbq_h)))

    @property
    def tia_median(self) -> np.ndarray:
        """Posterior median of the TIA per region (MBq h), over the posterior draws: the point
        estimate with the smallest expected absolute error (``tia_mbq_h`` is the TIA at the
        MAP parameters; benchmarks/validate_calibration.py reports both)."""
        return np.median(np.asarray(self.samples_tia_mbq_h), axis=0)

    def to_frame(self, doses: bool = False):
        """region, tia_mbq_h, tiac_h, tia_low, tia_high (one row per region); with
        ``doses=True`` also dose_gy, dose_low, dose_high, bed_gy, bed_low, bed_high."""
        import pandas as pd

        cols = {"region": list(self.regions), "tia_mbq_h": self.tia_mbq_h,
                "tiac_h": self.tia_mbq_h / self.administered_mbq,
                "tia_low": self.tia_low, "tia_high": self.tia_high}
        if doses:
            if self.dose_gy is None:
                raise InputError("this prediction has no doses; call simulate_twin(..., "
                                 "doses=True)")
            for k in ("dose_gy", "dose_low", "dose_high", "bed_gy", "bed_low", "bed_high"):
                cols[k] = getattr(self, k)
        return pd.DataFrame(cols)


def resolve_twin(twin, regimen=None):
    """(Posterior, Regimen) from a Posterior or a TWIN.json path; ``regimen`` (if given)
    replaces the twin's own. InputError when neither has a regimen."""
    from calibration import Posterior, read_twin

    fitted_regimen = None
    if not isinstance(twin, Posterior):
        twin, fitted_regimen = read_twin(twin)
    regimen = regimen or fitted_regimen
    if regimen is None:
        raise InputError("the twin file has no regimen; give one (--regimen REGIMEN.csv)")
    return twin, regimen


def _therapy_rp(spec, regimen, radiopharmaceutical):
    from twin.dosimetry.organ import _therapy_rp as therapy_rp

    return therapy_rp(spec, regimen, radiopharmaceutical)


def _quantiles(x, level):
    """Equal-tailed interval ends over axis 0, NaN columns stay NaN (no warnings)."""
    q = [(1 - level) / 2, (1 + level) / 2]
    finite = np.all(np.isfinite(x), axis=0)
    lo = np.full(x.shape[1], np.nan)
    hi = np.full(x.shape[1], np.nan)
    if finite.any():
        lo[finite], hi[finite] = np.quantile(x[:, finite], q, axis=0)
    return lo, hi


def simulate_twin(twin, regimen=None, *, days: float = 60.0, n_samples: int = 200,
                  level: float = 0.90, seed: int = 0, radiopharmaceutical: str | None = None,
                  settings=None, doses: bool = False,
                  points_per_cycle: int = 64) -> TwinPrediction:
    """Region TIA of a twin (MAP) and its credible interval from posterior samples.

    Args:
        twin: a :class:`calibration.Posterior`, or the path of a TWIN.json.
        regimen: administrations to predict (default: the twin's own regimen).
        days: simulated span after the last administration (d); TIA is integrated to its end.
        n_samples: posterior draws (more: smoother interval ends; cost grows linearly).
        level: credible level of the interval (0.90: the 5th and 95th percentiles).
        seed: random seed of the draws.
        radiopharmaceutical: which administered radiopharmaceutical to report.
        settings: solver settings (default ``POPULATION_SETTINGS``: Rodas5P, rtol 1e-6).
        doses: also absorbed dose and BED per region with intervals
            (:func:`twin.dosimetry.organ.organ_doses`; one solve gives TIA, dose and BED;
            about as costly as the TIA-only solve times the dose-rate grid's extra steps).
        points_per_cycle: dose-rate grid per cycle for the BED (``doses=True``).
    Returns:
        TwinPrediction. Raises InputError (bad arguments) or ModelError (the MAP solve failed).
    """
    import jax.numpy as jnp

    from calibration import model_spec
    from pbpk_models.model import require_x64
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import POPULATION_SETTINGS, jitted_core, prepare

    require_x64("simulate_twin")
    twin, regimen = resolve_twin(twin, regimen)
    if not 0 < level < 1:
        raise InputError(f"level must be between 0 and 1, got {level}")
    if n_samples < 2:
        raise InputError("n_samples must be at least 2")
    settings = settings or POPULATION_SETTINGS
    spec = model_spec(twin.model_name, twin.variant)
    rp = _therapy_rp(spec, regimen, radiopharmaceutical)
    sub = Regimen(tuple(a for a in regimen.administrations
                        if a.radiopharmaceutical.lower() == rp))
    thetas = np.vstack([twin.theta_map[None, :], twin.sample_log(n_samples, seed)])
    if doses:
        return _with_doses(twin, spec, sub, rp, thetas, days, level, settings, points_per_cycle)
    model, at, hot, cold, _, t_end = prepare(spec, sub, None, days)
    ts = np.array([at[0]])  # TIA only: one output time keeps the solve cheap
    P = _params(model, twin, thetas)
    core = jitted_core(model, len(at), settings, batched=True)
    out = core(jnp.asarray(P), jnp.asarray(at), jnp.asarray(hot), jnp.asarray(cold),
               jnp.asarray(ts), jnp.asarray(t_end))
    rp_i = [r.name for r in model.radiopharmaceuticals].index(rp)
    tia = np.asarray(out["tia_nmol_h"])[:, rp_i, :] * model.mbq_per_nmol[rp_i]
    ok = np.asarray(out["ok"]) & np.all(np.isfinite(tia), axis=1)
    samples = _check_ok(ok, tia)
    lo, hi = _quantiles(samples, level)
    return TwinPrediction(tuple(model.regions), rp, float(sub.administered_mbq(model)[rp_i]),
                          tia[0], lo, hi, samples, level, int((~ok[1:]).sum()))


def _params(model, twin, thetas):
    base = model.params_from(twin.fixed)
    idx = np.array([model.parameter_names.index(n) for n in twin.names])
    P = np.tile(base, (len(thetas), 1))
    P[:, idx] = np.exp(thetas)
    return P


def _check_ok(ok, values):
    if not ok[0]:
        raise ModelError("the solve at the twin's MAP parameters failed; check the twin file")
    samples = values[1:][ok[1:]]
    if len(samples) < 2:
        raise ModelError("almost every posterior sample failed to solve; the posterior is too "
                         "wide for a credible interval")
    return samples


def _with_doses(twin, spec, sub, rp, thetas, days, level, settings, points_per_cycle):
    """TIA, dose and BED (summed over cycles) from one batched organ-dosimetry solve."""
    from pbpk_models.model import compile_model
    from twin.dosimetry.organ import organ_doses

    if settings.method != "rosenbrock":
        raise InputError("doses=True uses the Rosenbrock solver (twin.dosimetry.organ); pass "
                         "settings with method='rosenbrock' or leave the default")
    model = compile_model(spec, (rp,), "full")
    res = organ_doses(model, sub, _params(model, twin, thetas), radiopharmaceutical=rp,
                      points_per_cycle=points_per_cycle, days=days, settings=settings)
    tia, dose, bed = res.total("tia_mbq_h"), res.total("dose_gy"), res.total("bed_gy")
    ok = np.asarray(res.ok)
    s_tia = _check_ok(ok, tia)
    s_dose, s_bed = dose[1:][ok[1:]], bed[1:][ok[1:]]
    lo, hi = _quantiles(s_tia, level)
    dlo, dhi = _quantiles(s_dose, level)
    blo, bhi = _quantiles(s_bed, level)
    return TwinPrediction(tuple(res.regions), rp, float(np.sum(res.activity_mbq)), tia[0], lo,
                          hi, s_tia, level, int((~ok[1:]).sum()), dose[0], dlo, dhi, bed[0],
                          blo, bhi, s_dose, s_bed)
