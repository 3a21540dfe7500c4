"""Predictions of a twin (twin.build.simulate_twin): solver accuracy, dose and BED intervals.

A twin here is a Posterior built directly (no fit): the population prior median with a
small log-space covariance, so the tests need no optimisation.
"""

import numpy as np
import pytest

from calibration import Posterior, default_prior, model_spec
from pbpk_models import radionuclides as rn
from pbpk_models import units as u
from pbpk_models.errors import InputError
from pbpk_models.model import compile_model
from pbpk_models.regimen import Administration, Regimen
from twin.build import simulate_twin

LU = "lu177-psma-617"
THERAPY = Regimen((Administration(0.0, LU, 7400.0, 57.09),))
DAYS = 30.0


@pytest.fixture(scope="module")
def twin():
    spec = model_spec("psma-pbrpk")
    prior = default_prior("psma-pbrpk", spec)
    units = tuple(spec.parameter(n).unit for n in prior.names)
    # a posterior 0.1 SD (log) wide around a patient unlike the median
    theta = prior.mean_log + 0.5 * prior.sd_log
    return Posterior("psma-pbrpk", "corrected", prior.names, units, theta,
                     np.eye(len(theta)) * 0.01, prior)


@pytest.mark.slow
def test_population_settings_match_kvaerno5_tight(twin):
    """The default (Rodas5P, rtol 1e-6) against diffrax Kvaerno5 at rtol 1e-10."""
    from pbpk_models.simulate import SolverSettings, simulate

    # 12 samples: the shape of test_dose_and_bed_intervals' plain solve (compiled once)
    pred = simulate_twin(twin, THERAPY, days=DAYS, n_samples=12)
    spec = model_spec("psma-pbrpk")
    ref = simulate(spec, THERAPY, dict(zip(twin.names, np.exp(twin.theta_map))),
                   days=DAYS, settings=SolverSettings(rtol=1e-10, atol=1e-13))
    tia_ref = np.array([ref.tia(LU)[r] for r in pred.regions])
    big = tia_ref > 1e-3 * tia_ref.max()
    np.testing.assert_allclose(pred.tia_mbq_h[big], tia_ref[big], rtol=1e-4)


@pytest.mark.slow
def test_dose_and_bed_intervals(twin):
    pred = simulate_twin(twin, THERAPY, days=DAYS, n_samples=12, doses=True)
    plain = simulate_twin(twin, THERAPY, days=DAYS, n_samples=12)
    # TIA from the organ engine (differenced integral states) = TIA of the plain solve
    np.testing.assert_allclose(pred.tia_mbq_h, plain.tia_mbq_h, rtol=1e-4)
    np.testing.assert_allclose(pred.samples_tia_mbq_h, plain.samples_tia_mbq_h, rtol=1e-4)
    # dose = TIA x S at the MAP, with S from the region mass (no personal volume here)
    model = compile_model(model_spec("psma-pbrpk"), (LU,), "full")
    p = model.params_from({})
    for n, t in zip(twin.names, twin.theta_map):
        p[model.parameter_names.index(n)] = np.exp(t)
    masses = model.region_masses_g(p)
    e = rn.energy_per_decay_mev(model.radiopharmaceuticals[0].nuclide)
    for j, r in enumerate(pred.regions):
        if r in masses:
            s = u.gy_per_mbq_h(e, masses[r])
            assert pred.dose_gy[j] == pytest.approx(pred.tia_mbq_h[j] * s, rel=1e-9)
            # fixed mass: the dose interval is the TIA interval times S
            assert pred.dose_low[j] == pytest.approx(pred.tia_low[j] * s, rel=1e-9)
            assert pred.dose_high[j] == pytest.approx(pred.tia_high[j] * s, rel=1e-9)
        else:
            assert np.isnan(pred.dose_gy[j])
    k = pred.regions.index("Kidney")
    # kidney BED (alpha/beta and repair known): above the dose, interval ordered
    assert pred.bed_gy[k] > pred.dose_gy[k]
    assert pred.bed_low[k] <= pred.bed_gy[k] <= pred.bed_high[k]
    assert np.isnan(pred.bed_gy[pred.regions.index("Liver")])  # no radiobiology: NaN
    frame = pred.to_frame(doses=True)
    assert {"dose_gy", "dose_low", "dose_high", "bed_gy", "bed_low", "bed_high"} <= \
        set(frame.columns)
    with pytest.raises(InputError, match="doses=True"):
        plain.to_frame(doses=True)


def test_bad_arguments(twin):
    from pbpk_models.simulate import SolverSettings

    with pytest.raises(InputError, match="level"):
        simulate_twin(twin, THERAPY, level=1.5)
    with pytest.raises(InputError, match="n_samples"):
        simulate_twin(twin, THERAPY, n_samples=1)
    with pytest.raises(InputError, match="not administered"):
        simulate_twin(twin, THERAPY, radiopharmaceutical="ga68-psma-11")
    with pytest.raises(InputError, match="Rosenbrock"):
        simulate_twin(twin, THERAPY, doses=True, settings=SolverSettings())
