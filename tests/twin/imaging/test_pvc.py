"""Partial-volume correction by the geometric transfer matrix: against the analytic recovery of a
sphere, exact recovery of piecewise-uniform images blurred by scipy, and on the phantom."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from twin.errors import InputError
from twin.imaging.phantom import phantom_study
from twin.imaging.pvc import FWHM_TO_SIGMA, gtm_correct, sphere_recovery, transfer_matrix
from twin.observe import region_statistics


def _grid(shape, spacing):
    """Physical coordinates (mm) of voxel centres, arrays [z, y, x], centred on the grid."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing[::-1])]
    return np.meshgrid(*axes, indexing="ij")


def test_sphere_recovery_is_the_textbook_curve():
    # a point-like sphere recovers ~nothing, a huge one everything; R = FWHM gives ~0.6-0.7
    assert sphere_recovery(0.5, 12.0) < 0.01
    assert sphere_recovery(1000.0, 12.0) > 0.99
    # a sphere much larger than the PSF loses the shell within ~sigma of its surface:
    # RC ~ 1 - 3 s / (R sqrt(2 pi)) (first order in s / R)
    R, s = 100.0, 12.0 * FWHM_TO_SIGMA
    assert sphere_recovery(R, 12.0) == pytest.approx(1 - 3 * s / (R * np.sqrt(2 * np.pi)),
                                                     rel=2e-3)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 1.1, 1.4)])
def test_transfer_matrix_diagonal_matches_analytic_sphere(spacing):
    R, fwhm = 9.0, 10.0
    shape = tuple(int(np.ceil(2 * (R + 30) / s)) for s in spacing[::-1])
    z, y, x = _grid(shape, spacing)
    lab = (x * x + y * y + z * z <= R * R).astype(np.int32)
    G, n = transfer_matrix(lab, 2, fwhm, spacing)
    # the voxelised sphere's volume differs from 4/3 pi R^3 by a few %: compare at its radius
    r_eq = (3 * n[1] * np.prod(spacing) / (4 * np.pi)) ** (1 / 3)
    assert G[1, 1] == pytest.approx(sphere_recovery(r_eq, fwhm), rel=0.015)


def test_gtm_recovers_piecewise_uniform_truth_blurred_by_scipy():
    spacing = (2.0, 2.5, 3.0)
    shape = (40, 48, 56)
    z, y, x = _grid(shape, spacing)
    lab = np.zeros(shape, np.int32)
    lab[(x / 50) ** 2 + (y / 45) ** 2 + (z / 40) ** 2 <= 1] = 1           # "body"
    lab[(x - 15) ** 2 + y ** 2 + z ** 2 <= 8 ** 2] = 2                     # small hot lesion
    lab[(x + 12) ** 2 + (y - 5) ** 2 + (z + 4) ** 2 <= 14 ** 2] = 3        # organ next to it
    conc = np.array([0.0, 1.0, 12.0, 5.0])
    fwhm = 11.0
    sig = fwhm * FWHM_TO_SIGMA / np.asarray(spacing)[::-1]
    img = gaussian_filter(conc[lab], sigma=sig, mode="constant", truncate=4.0)
    n = np.bincount(lab.ravel(), minlength=4)
    t = np.bincount(lab.ravel(), weights=img.ravel(), minlength=4) / n
    assert t[2] < 0.8 * conc[2]                    # the blur matters
    G, _ = transfer_matrix(lab, 4, fwhm, spacing)
    T, sT = gtm_correct(t[1:], np.full(3, 1e-3), G[1:, 1:])
    np.testing.assert_allclose(T, conc[1:], rtol=1e-8)
    assert np.all(sT >= 1e-3 * 0.5)
    # every row of G sums to <= 1 (the blur keeps or loses activity, never creates it), and to
    # ~1 deep inside the body
    assert np.all(G[1:, 1:].sum(axis=1) <= 1 + 1e-9)


def test_singular_and_bad_input():
    G = np.array([[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(InputError, match="singular"):
        gtm_correct([1.0, 1.0], [0.1, 0.1], G)
    with pytest.raises(InputError, match="FWHM"):
        transfer_matrix(np.ones((3, 3, 3), np.int32), 2, -1.0, (1, 1, 1))


@pytest.mark.slow
def test_phantom_partial_volume_corrected(phantom):
    study = phantom_study(phantom, expected=True)
    fwhm = {"PET": phantom.settings["pet_fwhm_mm"], "SPECT": phantom.settings["spect_fwhm_mm"]}
    raw = region_statistics(study)
    cor = region_statistics(study, pvc="gtm", fwhm_mm=fwhm)
    truth = {(round((s.start - phantom.settings["t0"]).total_seconds() / 3600, 6), r): a
             for s in phantom.scans for r, a in s.truth.items()}

    def err(df, regions):
        e = [abs(row.activity_mbq / truth[(round(row.time_h, 6), row.region)] - 1)
             for _, row in df.iterrows() if row.region in regions]
        return float(np.median(e)), float(np.max(e))

    small = ("SG", "Tumor1", "Tumor2", "Kidney", "Lacrimal")
    med_raw, _ = err(raw, small)
    med_cor, max_cor = err(cor, small)
    assert med_raw > 0.15                          # uncorrected small regions lose activity
    assert med_cor < 0.5 * med_raw and med_cor < 0.08
    assert {"activity_uncorrected_mbq", "recovery"} <= set(cor.columns)
    np.testing.assert_allclose(cor.activity_uncorrected_mbq, raw.activity_mbq, rtol=1e-6)
    with pytest.raises(InputError, match="FWHM"):
        region_statistics(study, pvc="gtm", fwhm_mm={"PET": 6.0})
