"""A personalised twin: simulate from TWIN.json with credible intervals.

:func:`simulate_twin` predicts each region's time-integrated activity (TIA, MBq h) of a regimen
at the twin's MAP parameters, and its equal-tailed credible interval (default 90%) by sampling
the Laplace posterior (lognormal in the personal parameters, :class:`calibration.Posterior`)
and solving all samples at once (one jit-compiled, vmapped solve). Non-personal parameters are
at the model's population values or the patient's fixed values.

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

    def tia(self) -> dict:
        return dict(zip(self.regions, map(float, self.tia_mbq_h)))

    def to_frame(self):
        """region, tia_mbq_h, tiac_h, tia_low, tia_high (one row per region)."""
        import pandas as pd

        return pd.DataFrame({"region": list(self.regions), "tia_mbq_h": self.tia_mbq_h,
                             "tiac_h": self.tia_mbq_h / self.administered_mbq,
                             "tia_low": self.tia_low, "tia_high": self.tia_high})


def _therapy_rp(spec, regimen, radiopharmaceutical):
    rps = regimen.radiopharmaceuticals
    if radiopharmaceutical is not None:
        rp = radiopharmaceutical.lower()
        if rp not in rps:
            raise InputError(f"{rp} is not administered in the regimen ({', '.join(rps)})")
        return rp
    if spec.default_radiopharmaceutical in rps:
        return spec.default_radiopharmaceutical
    return rps[-1]


def simulate_twin(twin, regimen=None, *, days: float = 60.0, n_samples: int = 200,
                  level: float = 0.90, seed: int = 0, radiopharmaceutical: str | None = None,
                  settings=None) -> TwinPrediction:
    """Region TIA of a twin (MAP) and its credible interval from posterior samples.

    Args:
        twin: a :class:`calibration.Posterior`, or the path of a TWIN.json.
        regimen: administrations to predict (default: the twin's own regimen).
        days: simulated span after the last administration (d); TIA is integrated to its end.
        n_samples: posterior draws (more: smoother interval ends; cost grows linearly).
        level: credible level of the interval (0.90: the 5th and 95th percentiles).
        seed: random seed of the draws.
        radiopharmaceutical: which administered radiopharmaceutical to report.
    Returns:
        TwinPrediction. Raises InputError (bad arguments) or ModelError (the MAP solve failed).
    """
    import jax.numpy as jnp

    from calibration import Posterior, model_spec, read_twin
    from pbpk_models.model import require_x64
    from pbpk_models.regimen import Regimen
    from pbpk_models.simulate import SolverSettings, jitted_core, prepare

    require_x64("simulate_twin")
    fitted_regimen = None
    if not isinstance(twin, Posterior):
        twin, fitted_regimen = read_twin(twin)
    regimen = regimen or fitted_regimen
    if regimen is None:
        raise InputError("the twin file has no regimen; give one (--regimen REGIMEN.csv)")
    if not 0 < level < 1:
        raise InputError(f"level must be between 0 and 1, got {level}")
    if n_samples < 2:
        raise InputError("n_samples must be at least 2")
    spec = model_spec(twin.model_name, twin.variant)
    rp = _therapy_rp(spec, regimen, radiopharmaceutical)
    sub = Regimen(tuple(a for a in regimen.administrations
                        if a.radiopharmaceutical.lower() == rp))
    model, at, hot, cold, _, t_end = prepare(spec, sub, None, days)
    ts = np.array([at[0]])  # TIA only: one output time keeps the solve cheap
    base = model.params_from(twin.fixed)
    idx = np.array([model.parameter_names.index(n) for n in twin.names])
    thetas = np.vstack([twin.theta_map[None, :], twin.sample_log(n_samples, seed)])
    P = np.tile(base, (len(thetas), 1))
    P[:, idx] = np.exp(thetas)
    core = jitted_core(model, len(at), settings or SolverSettings(), batched=True)
    out = core(jnp.asarray(P), jnp.asarray(at), jnp.asarray(hot), jnp.asarray(cold),
               jnp.asarray(ts), jnp.asarray(t_end))
    rp_i = [r.name for r in model.radiopharmaceuticals].index(rp)
    tia = np.asarray(out["tia_nmol_h"])[:, rp_i, :] * model.mbq_per_nmol[rp_i]
    ok = np.asarray(out["ok"]) & np.all(np.isfinite(tia), axis=1)
    if not ok[0]:
        raise ModelError("the solve at the twin's MAP parameters failed; check the twin file")
    samples = tia[1:][ok[1:]]
    if len(samples) < 2:
        raise ModelError("almost every posterior sample failed to solve; the posterior is too "
                         "wide for a credible interval")
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return TwinPrediction(tuple(model.regions), rp, float(sub.administered_mbq(model)[rp_i]),
                          tia[0], lo, hi, samples, level, int((~ok[1:]).sum()))
