"""Lesion segmentation (threshold, percent of max, fuzzy C-means), resampling and rigid
registration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from twin.errors import InputError
from twin.imaging import (
    fuzzy_c_means,
    masks_from_arrays,
    register_rigid,
    resample_to,
    segment_lesions,
)
from twin.imaging.volume import Volume

SPACING = 2.0  # mm


def _spheres_image(blur_fwhm_mm=0.0):
    """SUV image: background 0.5, three spheres (radii 10, 6, 4 mm) of SUV 12, 8, 6, and an
    'organ' (a block of SUV 20) that must be excluded."""
    n = 60
    z, y, x = np.mgrid[:n, :n, :n] * SPACING
    img = np.full((n, n, n), 0.5, np.float32)
    spheres = [((30, 30, 30), 10.0, 12.0), ((30, 80, 80), 6.0, 8.0), ((90, 30, 90), 4.0, 6.0)]
    truth = []
    for c, r, v in spheres:
        m = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r ** 2
        img[m] = v
        truth.append(m)
    organ = np.zeros_like(img, bool)
    organ[5:15, 40:50, 5:20] = True
    img[organ] = 20.0
    if blur_fwhm_mm:
        img = gaussian_filter(img, blur_fwhm_mm / 2.3548 / SPACING).astype(np.float32)
    vol = Volume(img, (SPACING,) * 3, (0.0, 0.0, 0.0), units="SUVbw")
    masks = masks_from_arrays(vol, {"Kidney": organ})
    return vol, masks, truth


def test_fixed_threshold_finds_each_sphere_and_excludes_the_organ():
    vol, masks, truth = _spheres_image()
    res = segment_lesions(vol, "threshold", masks=masks, min_volume_ml=0.01)
    assert len(res.table) == 3
    vox = SPACING ** 3 / 1000.0
    want = sorted(m.sum() * vox for m in truth)
    np.testing.assert_allclose(sorted(res.table.volume_ml), want, rtol=1e-9)
    assert res.tmtv_ml == pytest.approx(sum(want))
    # total lesion uptake = sum of SUVmean x volume = sum of SUV x voxel volume
    assert res.total_uptake == pytest.approx(sum(m.sum() * vox * v for m, v in
                                                 zip(truth, (12.0, 8.0, 6.0))))
    without = segment_lesions(vol, "threshold", min_volume_ml=0.01)
    assert len(without.table) == 4  # the organ is found when not excluded


def test_percent_of_max_on_blurred_spheres():
    vol, masks, truth = _spheres_image(blur_fwhm_mm=6.0)
    res = segment_lesions(vol, "percent_max", threshold=2.5, fraction=0.41, masks=masks,
                          exclude_margin_mm=4.0, min_volume_ml=0.01)
    assert len(res.table) == 3
    big = res.table.sort_values("volume_ml").iloc[-1]
    # 41% of max on a 20 mm sphere blurred with 6 mm: volume within 30% of the true sphere
    assert big.volume_ml == pytest.approx(truth[0].sum() * SPACING ** 3 / 1000, rel=0.3)


def test_fuzzy_c_means_recovers_cluster_centres_and_segments():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(1, 0.1, 500), rng.normal(5, 0.1, 300), rng.normal(10, 0.1, 100)]
    centres, u = fuzzy_c_means(x, 3)
    np.testing.assert_allclose(centres, [1, 5, 10], atol=0.1)
    np.testing.assert_allclose(u.sum(axis=1), 1.0)
    vol, masks, truth = _spheres_image(blur_fwhm_mm=6.0)
    res = segment_lesions(vol, "fcm", threshold=2.5, masks=masks, exclude_margin_mm=4.0,
                          min_volume_ml=0.01)
    assert 1 <= len(res.table) <= 3 and res.tmtv_ml > 0


def test_lesion_threshold_needed_for_non_suv():
    vol, _, _ = _spheres_image()
    with pytest.raises(InputError, match="give a threshold"):
        segment_lesions(vol.replace(units="MBq/mL"))
    with pytest.raises(InputError, match="method must be"):
        segment_lesions(vol, "magic")


def test_resample_identity_and_activity_conservation(phantom):
    pet = phantom.scans[0].expected
    assert resample_to(pet, pet) is not None
    np.testing.assert_array_equal(resample_to(pet, pet).array, pet.array)
    coarse = Volume(np.zeros((80, 48, 48), np.float32), (8.8, 8.8, 8.8), pet.origin_mm)
    r = resample_to(pet, coarse)
    assert r.same_grid(coarse)
    tot = float(np.sum(pet.array, dtype=np.float64)) * pet.voxel_volume_ml
    assert float(np.sum(r.array, dtype=np.float64)) * r.voxel_volume_ml == pytest.approx(tot,
                                                                                         rel=0.02)
    lab = resample_to(phantom.masks.labels, coarse, interpolation="nearest")
    assert set(np.unique(lab.array)) <= set(np.unique(phantom.masks.labels.array))


def test_rigid_registration_recovers_a_known_shift():
    from twin.imaging.phantom import anatomy

    _, ct = anatomy(spacing_mm=8.8)
    shift = np.array([6.0, -4.0, 9.0])
    # the same patient imaged 'shifted': the moving image's content sits at x + shift
    moving = ct.replace(origin_mm=tuple(np.asarray(ct.origin_mm) + shift))
    res = register_rigid(moving, ct, shrink=(2, 1), iterations=60)
    np.testing.assert_allclose(res.translation_mm, shift, atol=1.5)
    assert np.max(np.abs(res.rotation_rad)) < 0.02
