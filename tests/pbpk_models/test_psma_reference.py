"""The published variant against the reference TIAC table of the published SBML export.

Reference: shared/data/pbpk/psma_pbrpk.md, "Reference result to reproduce": the SBML as
published, 10 nmol hot + 100 nmol cold into Vein, 60 days, CVODE rtol 1e-8 / atol 1e-12
(libroadrunner), TIAC = TIA / injected activity per region.
"""

import numpy as np
import pytest

from pbpk_models.regimen import Administration, Regimen
from pbpk_models.simulate import simulate

REFERENCE_TIAC_H = {
    "Rest": 2.097088, "TumorRest": 1.978774, "Liver": 1.356411, "Tumor2": 1.067283,
    "GI": 0.981547, "Muscle": 0.898606, "Adipose": 0.766771, "Kidney": 0.731543,
    "Lungs": 0.667387, "Bone": 0.262324, "Vein": 0.220135, "RedMarrow": 0.174910,
    "Art": 0.097721, "Tumor1": 0.091436, "SG": 0.069946, "Prostate": 0.065539,
    "Skin": 0.055837, "Heart": 0.043711, "Spleen": 0.027630, "Brain": 0.011169,
}


@pytest.fixture(scope="module")
def published_result(psma_published):
    from pbpk_models.model import compile_model

    model = compile_model(psma_published, ("lu177-psma-617",))
    activity = 10.0 * model.mbq_per_nmol[0]  # 10 nmol hot, published lambdaPhys
    regimen = Regimen((Administration(0.0, "lu177-psma-617", activity, 110.0),))
    return simulate(model, regimen, days=60.0)


def test_published_reproduces_reference_tiac_within_1_percent(published_result):
    tiac = published_result.tiac_h()
    assert set(tiac) == set(REFERENCE_TIAC_H)
    errors = {r: tiac[r] / v - 1 for r, v in REFERENCE_TIAC_H.items()}
    worst = max(errors, key=lambda r: abs(errors[r]))
    assert abs(errors[worst]) < 0.01, (worst, errors[worst])
    # and the sum over all regions (11.665765 h)
    assert sum(tiac.values()) == pytest.approx(11.665765, rel=1e-3)


def test_published_activity_per_nmol(published_result):
    # 1 nmol of carrier-free 177Lu = 717.6 MBq with the published lambdaPhys (psma_pbrpk.md)
    assert published_result.model.mbq_per_nmol[0] == pytest.approx(717.6, rel=1e-4)


def test_corrected_differs_where_the_document_says(psma_corrected, published_result):
    # defect 3: balanced portal outflow washes the liver's vascular pool out faster
    # (Liver TIAC 1.36 h published, 0.43 h with balanced portal flow, psma_pbrpk.md)
    spec = psma_corrected.with_values({
        # compare at the published parameter values, only the physics differs
        "Rden_Kidney": 0.014, "Rden_SG": 0.038, "lambdaRel_Kidney": 60 * 2.9e-4,
        "lambdaRel_SG": 60 * 4.2e-4})
    from pbpk_models.model import compile_model

    model = compile_model(spec, ("lu177-psma-617",))
    regimen = Regimen((Administration(0.0, "lu177-psma-617", 10 * model.mbq_per_nmol[0], 110.0),))
    corrected = simulate(model, regimen, days=60.0).tiac_h()
    assert corrected["Liver"] == pytest.approx(0.43, abs=0.03)
    published = published_result.tiac_h()
    # the physical half-life is shorter than the published one: slightly less TIA everywhere
    assert corrected["Tumor1"] < published["Tumor1"]
    assert np.isfinite(list(corrected.values())).all()
