"""Dose maps: energy conservation, point source, density correction, local deposition."""

import numpy as np
import pytest

from pbpk_models.units import gy_per_mbq_h
from twin.dosimetry import compute_dose, accumulate_cycles, hu_to_density
from twin.dosimetry.kernels import (
    MGY_PER_MBQ_S_TO_GY_PER_MBQ_H,
    database_energy_mev,
    kernel_energy_mev,
    local_energy_mev,
    voxel_s_values,
)
from twin.errors import InputError


@pytest.mark.parametrize("spacing", [(4.0, 4.0, 4.0), (4.8, 4.42, 4.42)])
def test_uniform_tia_gives_energy_per_decay_dose(spacing):
    # Uniform 1 MBq h per voxel in a block much larger than the kernel: in the interior each
    # voxel absorbs the kernel's energy per decay, D = TIA x E / (rho V).
    tia = np.ones((30, 30, 30), np.float32)
    dose = compute_dose(tia, "Lu-177", spacing)
    k = voxel_s_values("Lu-177", spacing)
    e = kernel_energy_mev(k, spacing, 1.04)
    mass_g = 1.04 * np.prod(spacing) * 1e-3
    expected = gy_per_mbq_h(e, mass_g)
    assert dose[15, 15, 15] == pytest.approx(expected, rel=1e-5)
    # and that energy is the database's (0.142 MeV for 177Lu), to 1 %
    assert e == pytest.approx(database_energy_mev("Lu-177", 4.0), rel=0.01)


def test_point_source_reproduces_kernel():
    tia = np.zeros((21, 21, 21), np.float32)
    tia[10, 10, 10] = 2.5
    dose = compute_dose(tia, "I-131", 3.0)
    k = voxel_s_values("I-131", 3.0) * MGY_PER_MBQ_S_TO_GY_PER_MBQ_H
    assert np.allclose(dose[5:16, 5:16, 5:16], 2.5 * k, rtol=1e-5, atol=1e-6 * 2.5 * k.max())
    assert dose[:5].max() <= 1e-6 * dose.max()  # FFT round-off only


def test_density_correction_and_bone_kernel():
    tia = np.ones((24, 24, 24), np.float32)
    hu = np.zeros(tia.shape)
    rho = hu_to_density(hu)
    soft = compute_dose(tia, "Lu-177", 4.0)
    corr = compute_dose(tia, "Lu-177", 4.0, density_g_cm3=rho)
    assert corr[12, 12, 12] == pytest.approx(soft[12, 12, 12] * 1.04 / rho[12, 12, 12], rel=1e-6)
    dense = np.full(tia.shape, 1.85, np.float32)
    bone = compute_dose(tia, "Lu-177", 4.0, density_g_cm3=dense, bone_density_threshold_g_cm3=1.5)
    eb = database_energy_mev("Lu-177", 4.0, "bone")
    assert bone[12, 12, 12] == pytest.approx(gy_per_mbq_h(eb, 1.85 * 64e-3), rel=1e-4)


def test_hu_to_density_table():
    assert hu_to_density([-1000, 14, 1600, 3000])[[0, 1, 2, 3]] == pytest.approx(
        [1.21e-3, 1.03, 1.9642, 2.8], rel=1e-5)
    assert hu_to_density([-2000, 5000]) == pytest.approx([1.21e-3, 2.8], rel=1e-5)


def test_local_deposition_nuclide():
    tia = np.zeros((6, 6, 6), np.float32)
    tia[2, 3, 4] = 1.0
    dose = compute_dose(tia, "Ac-225", (4.0, 4.0, 4.0))
    assert dose[2, 3, 4] == pytest.approx(gy_per_mbq_h(local_energy_mev("Ac-225"), 1.04 * 64e-3),
                                          rel=1e-5)
    assert np.count_nonzero(dose) == 1


def test_bad_tia_and_accumulation():
    for bad in (np.full((4, 4, 4), np.nan), -np.ones((4, 4, 4))):
        with pytest.raises(InputError):
            compute_dose(bad, "Lu-177", 4.0)
    with pytest.raises(InputError):
        compute_dose(np.ones((4, 4, 4)), "Xx-1", 4.0)
    a = np.ones((3, 3, 3))
    assert accumulate_cycles([a, 2 * a])[0, 0, 0] == 3.0
    with pytest.raises(InputError):
        accumulate_cycles([a, np.ones((2, 2, 2))])
