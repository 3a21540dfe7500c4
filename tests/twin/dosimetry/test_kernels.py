"""Kernels: the database as read, resampling checked against held-out sizes and MIRD 17."""

from importlib import resources

import numpy as np
import pandas as pd
import pytest

from twin.dosimetry import kernels as K
from twin.errors import InputError


def test_database_kernel_symmetric_and_energy():
    k = K.load_database_kernel("Lu-177", 3.0)
    assert k.shape == (11, 11, 11)
    assert k[5, 5, 5] == pytest.approx(0.693)  # first data row of 177Lu3mmsoft.txt
    assert np.array_equal(k, k[::-1]) and np.array_equal(k, k.transpose(2, 0, 1))
    # The README's energy check: 177Lu 0.142 MeV, 90Y 0.935 MeV per decay (density 1.04).
    assert K.database_energy_mev("Lu-177", 6.0) == pytest.approx(0.142, rel=0.01)
    assert K.database_energy_mev("Y-90", 3.0) == pytest.approx(0.935, rel=0.005)


@pytest.mark.parametrize("nuclide", ["Lu-177", "I-131", "Y-90"])
@pytest.mark.parametrize("held_out", K.DATABASE_VOXEL_SIZES_MM)
def test_resampled_matches_held_out_database_size(nuclide, held_out):
    # Fit on the other ten sizes, predict the held-out one: central voxel within 3 %,
    # first neighbours within 10 % (the criteria); measured: < 0.6 %.
    k = K.voxel_s_values(nuclide, held_out, exclude_mm=(held_out,))
    db = K.load_database_kernel(nuclide, held_out)
    c = 5
    assert k.shape == db.shape
    assert abs(k[c, c, c] / db[c, c, c] - 1) < 0.01
    for nb in [(c + 1, c, c), (c, c - 1, c), (c, c, c + 1)]:
        assert abs(k[nb] / db[nb] - 1) < 0.01
    assert abs(k[c + 1, c + 1, c] / db[c + 1, c + 1, c] - 1) < 0.02


@pytest.mark.parametrize("held_out", [2.21, 4.0, 9.28])
def test_resampled_bone_held_out(held_out):
    k = K.voxel_s_values("Lu-177", held_out, medium="bone", exclude_mm=(held_out,))
    db = K.load_database_kernel("Lu-177", held_out, medium="bone")
    assert abs(k[5, 5, 5] / db[5, 5, 5] - 1) < 0.03
    assert abs(k[6, 5, 5] / db[6, 5, 5] - 1) < 0.10


def _mird17():
    ref = resources.files("twin.dosimetry") / "data" / "mird17_vsv_selected.csv"
    with ref.open("r") as f:
        return pd.read_csv(f, comment="#")


@pytest.mark.parametrize("row", [r for r in _mird17().itertuples()
                                 if r.nuclide in K.DATABASE_NUCLIDES and r.i == 0],
                         ids=lambda r: f"{r.nuclide}-{r.voxel_mm}")
def test_mird17_central_voxel(row):
    # MIRD Pamphlet 17 (Bolch 1999) and DPM Monte Carlo values, resampled from a fit that
    # leaves the same voxel size out. Central voxel within 4 % (measured 0.4-3.7 %: MIRD 17
    # used older electron transport). The (5,5,5) corner values (below 1e-5 of the centre,
    # bremsstrahlung/photon tails where codes differ by up to a factor 10) are reported in
    # docs/dose.md, not asserted.
    sp = tuple(float(x) for x in str(row.voxel_mm).split("x"))
    sp = sp * 3 if len(sp) == 1 else sp
    k = K.voxel_s_values(row.nuclide, sp, exclude_mm=tuple(set(sp)))
    c = np.array(k.shape) // 2
    value = k[c[0] + row.i, c[1] + row.j, c[2] + row.k]
    assert value == pytest.approx(row.S_mGy_per_MBq_s, rel=0.04)


def test_anisotropic_kernel_energy_and_symmetry():
    sp = (4.8, 4.42, 4.42)
    k = K.voxel_s_values("Lu-177", sp)
    assert k.shape == (11, 13, 13)
    assert np.allclose(k, k[::-1, ::-1, ::-1]) and np.allclose(k, k.transpose(0, 2, 1))
    e = K.kernel_energy_mev(k, sp, 1.04)
    assert e == pytest.approx(0.142, rel=0.01)
    # Bigger voxel along z: the z neighbour is farther from the source's mass than the y one
    # in voxel-centre distance but the two differ only by geometry; check ordering sanity.
    assert k[5, 6, 6] > k[5, 7, 6] > 0
    # Between its cubic neighbours 4.0 and 5.0 mm.
    k4, k5 = K.load_database_kernel("Lu-177", 4.0), K.load_database_kernel("Lu-177", 5.0)
    assert k5[5, 5, 5] < k[5, 6, 6] < k4[5, 5, 5]


def test_energy_renormalised_at_database_extent():
    for a in (2.21, 6.8):
        k = K.voxel_s_values("I-131", a, exclude_mm=(a,))
        # renormalisation interpolates the correction from the neighbours: within 1 %
        assert K.kernel_energy_mev(k, (a,) * 3, 1.04) == pytest.approx(
            K.database_energy_mev("I-131", a), rel=0.01)


def test_local_deposition_chains():
    members = dict(K.chain_members("Ac-225"))
    assert set(members) >= {"Ac-225", "Fr-221", "At-217", "Bi-213", "Po-213", "Pb-209"}
    assert members["Po-213"] + members["Tl-209"] == pytest.approx(members["Bi-213"], rel=1e-9)
    e = K.local_energy_mev("Ac-225")
    # four alphas of about 5.8, 6.3, 7.1 and 8.4 MeV plus betas: 27-30 MeV per 225Ac decay
    assert 27.0 < e < 30.0
    assert K.local_energy_mev("Tb-161") == pytest.approx(0.2025, rel=0.01)
    k = K.dose_kernel("Tb-161", 4.0)
    assert k.shape == (1, 1, 1)


def test_unknown_or_bad_inputs():
    with pytest.raises(InputError):
        K.voxel_s_values("Tb-161", 4.0)
    with pytest.raises(InputError):
        K.dose_kernel("Xx-999", 4.0)
    with pytest.raises(InputError):
        K.voxel_s_values("Lu-177", (4.0, -1.0, 4.0))
    with pytest.raises(InputError):
        K.voxel_s_values("Lu-177", 4.0, medium="lung")
