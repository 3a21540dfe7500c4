"""Voxel-wise PBPK TIA: one region of psma-pbrpk, driven by the whole-body solution.

Independent checks: the cut-out region reproduces the region TIA of the whole-body solve (the
same equations solved as one system), its receptor-proportional operator equals the finite
difference of the whole-body operator in the receptor density, uniform voxels sum to the region
TIA, and heterogeneity is preserved in rank order.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from pbpk_models.errors import InputError
from pbpk_models.regimen import Regimen
from twin.dosimetry.voxel_pbpk import (
    receptor_scale_from_uptake,
    region_subsystem,
    solve_region,
    voxel_tia_pbpk,
)

pytestmark = pytest.mark.slow  # two JIT compilations (whole body, vmapped region): ~20 s idle

REGIMEN = Regimen.single("lu177-psma-617", 7400.0)


@pytest.fixture(scope="module")
def tumour():
    # 150 knots: enough for 1e-4 (400, the default, gives 5e-6); keeps the test short
    return region_subsystem("psma-pbrpk", REGIMEN, "Tumor1", days=40.0, knots_per_admin=150)


def test_binding_operator_is_the_receptor_derivative(tumour):
    model = tumour.model
    p = model.default_params()
    i = model.parameter_names.index("Rden_Tumor1")
    p2 = p.copy()
    p2[i] *= 2.0
    idx = tumour.state_index
    K1 = np.asarray(model.dense_operator(jnp.asarray(p)))[np.ix_(idx, idx)]
    K2 = np.asarray(model.dense_operator(jnp.asarray(p2)))[np.ix_(idx, idx)]
    assert np.allclose(tumour.K, K1, rtol=1e-12, atol=0)
    # K is affine in the receptor density: K(2 R) - K(R) is the receptor-proportional part
    assert np.allclose(K2 - K1, tumour.K_binding, rtol=1e-10, atol=1e-12)
    assert np.abs(tumour.K_binding).max() > 0


def test_uniform_voxels_reproduce_region_tia(tumour):
    ref = tumour.region_tia_mbq_h[0]
    n = 500
    v = voxel_tia_pbpk(tumour, np.ones(n))
    assert v.shape == (n,)
    assert np.allclose(v, ref / n, rtol=1e-4)
    assert v.sum() == pytest.approx(ref, rel=1e-4)


def test_heterogeneity_preserved_in_rank_order(tumour):
    rng = np.random.default_rng(3)
    s = rng.lognormal(0.0, 0.8, 64)
    w = rng.random(64)
    w /= w.sum()
    tia_per_volume = voxel_tia_pbpk(tumour, s, w) / w
    order = np.argsort(s)
    assert np.all(np.diff(tia_per_volume[order]) > 0)
    # saturable: doubling the receptors less than doubles the TIA, none gives blood-pool only
    t, _ = solve_region(tumour, [0.0, 1.0, 2.0])
    assert 0 < t[0, 0] < t[1, 0] < t[2, 0] < 2 * t[1, 0]


def test_receptor_scale_from_uptake(tumour):
    u = np.array([0.0, 1.0, 2.0, 3.0, -0.5])
    s, n = receptor_scale_from_uptake(u)
    assert n == 0 and s.mean() == pytest.approx(1.0) and s[-1] == 0.0
    # matched: the voxel model at the matched density reproduces the measured uptake ratio
    u = np.array([0.2, 0.7, 1.0, 1.3, 1.8])
    s, n = receptor_scale_from_uptake(u, tumour, 24.0, "matched")
    assert n == 0 and np.all(np.diff(s) > 0)
    _, a = solve_region(tumour, np.concatenate([s, [1.0]]), [24.0])
    ratio = a[:-1, 0, 0] / a[-1, 0, 0]
    assert np.allclose(ratio, u / u.mean(), rtol=0.02)


def test_bad_input(tumour):
    with pytest.raises(InputError):
        voxel_tia_pbpk(tumour, [1.0, np.nan])
    with pytest.raises(InputError):
        voxel_tia_pbpk(tumour, [1.0, 1.0], [0.3, 0.3])
    with pytest.raises(InputError):
        receptor_scale_from_uptake(np.zeros(4))
    with pytest.raises(InputError):
        region_subsystem(tumour.model, REGIMEN, "Vein")
    with pytest.raises(InputError):
        region_subsystem(tumour.model, REGIMEN, "Nowhere")


def test_grid_interpolation_matches_direct(tumour):
    rng = np.random.default_rng(5)
    s = np.concatenate([[0.0], rng.lognormal(0.0, 1.0, 200)])
    direct = voxel_tia_pbpk(tumour, s[:32], method="direct")
    grid = voxel_tia_pbpk(tumour, s, method="grid")[:32] * (s.size / 32)
    assert np.allclose(grid, direct, rtol=3e-5)  # measured 7.5e-6


def test_voxel_tia_image(tumour):
    from twin.dosimetry.voxel_pbpk import voxel_tia_image

    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2:5] = True
    up = np.where(mask, 1.0, 0.0)
    up[1, 1, 2] = 3.0  # one hot voxel
    img, n = voxel_tia_image(tumour, mask, up)
    assert n == 0 and img.shape == mask.shape and np.all(img[~mask] == 0)
    assert img[1, 1, 2] == img[mask].max() and np.unique(np.round(img[mask], 9)).size == 2
    with pytest.raises(InputError):
        voxel_tia_image(tumour, mask[:3], up)
