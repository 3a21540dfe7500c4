"""Population-typical twins land inside published clinical ranges of absorbed dose per GBq.

Ranges (Gy/GBq), sources in twin/cli/demo.py and shared/data/pbpk/clinical_reference.md:
177Lu-PSMA-617 kidneys 0.39-0.82, salivary glands 0.44-1.90; 177Lu-DOTATATE kidneys
0.38-0.57 (+/- 1 SD of the reports: 0.19-0.66), spleen 0.85-1.17 (+/- 1 SD: 0.85-1.31).
"""

import pytest

from pbpk_models import radionuclides as rn
from pbpk_models import units as u
from pbpk_models.regimen import Regimen
from pbpk_models.simulate import POPULATION_SETTINGS, simulate
from twin.cli.demo import CLINICAL_RANGES_GY_PER_GBQ


def _self_dose_per_gbq(spec, rp):
    res = simulate(spec, Regimen.single(rp, 7400.0))
    masses = res.model.region_masses_g()
    e = rn.energy_per_decay_mev("Lu-177")
    return {r: t * u.gy_per_mbq_h(e, masses[r]) * 1000 for r, t in res.tiac_h().items()
            if r in masses}


def test_psma_617_twin_in_clinical_ranges(psma_corrected):
    dose = _self_dose_per_gbq(psma_corrected, "lu177-psma-617")
    for region, (lo, hi) in CLINICAL_RANGES_GY_PER_GBQ["lu177-psma-617"].items():
        assert lo <= dose[region] <= hi, (region, dose[region])


def test_dotatate_twin_in_clinical_ranges(sstr):
    dose = _self_dose_per_gbq(sstr, "lu177-dotatate")
    for region, (lo, hi) in CLINICAL_RANGES_GY_PER_GBQ["lu177-dotatate"].items():
        assert lo <= dose[region] <= hi, (region, dose[region])


def test_imaging_twin_shares_physiology(psma_corrected):
    """68Ga-PSMA-11 PET and 177Lu-PSMA-617 in one regimen: one patient, two ligands."""
    regimen = Regimen.from_frame(__import__("pandas").DataFrame({
        "time_h": [0.0, 168.0], "radiopharmaceutical": ["ga68-psma-11", "lu177-psma-617"],
        "activity_mbq": [150.0, 7400.0], "ligand_nmol": [3.0, None]}))
    # the population solver (Rosenbrock; checked against scipy Radau in test_rosenbrock.py):
    # this test is about physiology, and Kvaerno5's compile of the two-ligand model is slow
    res = simulate(psma_corrected, regimen, times_h=[1.0, 192.0], days=30,
                   settings=POPULATION_SETTINGS)
    assert res.radiopharmaceuticals == ("ga68-psma-11", "lu177-psma-617")
    pet_kidney = res.activity("Kidney", "ga68-psma-11")[0]
    assert 0 < pet_kidney < 150.0
    # 68Ga activity is gone after a week (half-life 68 min)
    assert res.activity("Kidney", "ga68-psma-11")[1] < 1e-20
    # PET kidney TIAC in the range of 68Ga-PSMA-11 dosimetry, ~0.18 h (0.246 mGy/MBq kidney,
    # label; docs/research/imaging_ligands.md), within a factor of 2
    assert 0.09 < res.tiac_h("ga68-psma-11")["Kidney"] < 0.36
