"""Partial-volume correction of region activities: the geometric transfer matrix (GTM).

A PET or SPECT image is the true activity blurred by the system's point-spread function (PSF).
Activity spills out of small regions (a 2 cm sphere in a 12 mm FWHM SPECT keeps about half of it)
and into them from their neighbours. For regions of uniform concentration the blur is a linear map
between the true mean concentrations ``T`` and the observed ones ``t``:

    t_i = sum_j G_ij T_j,   G_ij = (1 / N_i) sum_{v in region i} (PSF * 1_j)(v)

(Rousset OG, Ma Y, Evans AC, "Correction for partial volume effects in PET: principle and
validation", J Nucl Med 1998;39:904-911). ``G`` is computed here by blurring each region's
indicator with a Gaussian PSF of the scan's FWHM, and the correction solves ``G T = t``. The
uncertainty is propagated: ``Cov(T) = G^-1 diag(var t) G^-T``.

Assumptions a user must know (as for any GTM correction):
- the PSF is a shift-invariant 3D Gaussian of the given FWHM (mm); SPECT resolution depends on
  the distance to the collimator, so the FWHM is an average over the body;
- the concentration is uniform within each region; every region that holds activity near the
  regions of interest must be in the label map. Unlabelled tissue around the regions is added as
  one background region (restricted to the body when a CT on the mask grid is given);
- the DICOM header does not carry the reconstructed resolution: it must be given (measured on a
  sphere phantom of the same reconstruction, e.g. the NEMA IEC body phantom).
"""

from __future__ import annotations

import math

import numpy as np

from twin.errors import InputError

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
# Gaussian kernels truncated at 4 sigma per axis keep 99.99% of the PSF's mass (scipy default).
TRUNCATE = 4.0


def _sigma_voxels(fwhm_mm: float, spacing_mm) -> np.ndarray:
    """Gaussian sigma in voxels per array axis (z, y, x) from the FWHM (mm) and (x, y, z) spacing."""
    fwhm = float(fwhm_mm)
    if not math.isfinite(fwhm) or fwhm <= 0:
        raise InputError(f"the PSF FWHM must be a positive number of mm, got {fwhm_mm!r}")
    return fwhm * FWHM_TO_SIGMA / np.asarray(spacing_mm, float)[::-1]


def spill_zone(union: np.ndarray, fwhm_mm: float, spacing_mm) -> np.ndarray:
    """Voxels within reach of the PSF (4 sigma) of any voxel of ``union`` (boolean, [z, y, x])."""
    from scipy.ndimage import binary_dilation

    sig = _sigma_voxels(fwhm_mm, spacing_mm)
    reach = np.ceil(TRUNCATE * sig).astype(int)
    # a box structuring element of the reach per axis, applied as three 1D dilations
    out = union.copy()
    for ax, r in enumerate(reach):
        if r <= 0:
            continue
        shape = [1, 1, 1]
        shape[ax] = 2 * int(r) + 1
        out = binary_dilation(out, structure=np.ones(shape, bool))
    return out


def transfer_matrix(labels: np.ndarray, n_labels: int, fwhm_mm: float, spacing_mm
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The geometric transfer matrix of a label map under a Gaussian PSF.

    Args:
        labels: integer label array ``[z, y, x]``; 0 is outside every region (no activity).
        n_labels: labels 1..n_labels-1 are regions (label 0 is ignored).
        fwhm_mm: PSF full width at half maximum (mm), isotropic.
        spacing_mm: voxel size ``(x, y, z)`` (mm).

    Returns:
        ``(G, n_voxels)``: ``G[i, j]`` = mean over region i of the blurred indicator of region j
        (rows and columns for labels 0..n_labels-1; row and column 0 are zero), and the voxel
        count per label.
    """
    from scipy.ndimage import gaussian_filter

    labels = np.asarray(labels)
    sig = _sigma_voxels(fwhm_mm, spacing_mm)
    reach = np.ceil(TRUNCATE * sig).astype(int)
    n_vox = np.bincount(labels.ravel(), minlength=n_labels)[:n_labels]
    G = np.zeros((n_labels, n_labels))
    for j in range(1, n_labels):
        if n_vox[j] == 0:
            continue
        idx = np.nonzero(labels == j)
        lo = [max(int(i.min()) - r, 0) for i, r in zip(idx, reach)]
        hi = [min(int(i.max()) + r + 1, n) for i, r, n in zip(idx, reach, labels.shape)]
        sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        # the sub-box reaches 4 sigma past region j, so zero padding outside it is exact (up to
        # the truncation of the kernel, the same as on the full grid)
        blurred = gaussian_filter((sub == j).astype(np.float64), sigma=sig, mode="constant",
                                  truncate=TRUNCATE)
        G[:, j] = np.bincount(sub.ravel(), weights=blurred.ravel(), minlength=n_labels)[:n_labels]
    G[1:, :] /= np.maximum(n_vox[1:, None], 1)
    G[0, :] = 0.0
    return G, n_vox


def gtm_correct(observed_mean, observed_sigma, G) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``G T = t`` for the true mean concentrations and propagate their uncertainty.

    Args:
        observed_mean: observed mean concentration per region (length n, any unit).
        observed_sigma: standard deviation of each observed mean (same unit).
        G: the n x n transfer matrix of those regions (:func:`transfer_matrix` without label 0).

    Returns:
        ``(T, sigma_T)``.
    """
    t = np.asarray(observed_mean, float)
    s = np.asarray(observed_sigma, float)
    G = np.asarray(G, float)
    if G.shape != (t.size, t.size):
        raise InputError(f"transfer matrix of shape {G.shape} for {t.size} regions")
    cond = np.linalg.cond(G)
    if not np.isfinite(cond) or cond > 1e8:
        raise InputError(f"the partial-volume transfer matrix is singular (condition number "
                         f"{cond:.3g}): regions much smaller than the PSF cannot be separated; "
                         f"merge them or turn the correction off")
    Ginv = np.linalg.inv(G)
    T = Ginv @ t
    cov = Ginv @ np.diag(s ** 2) @ Ginv.T
    return T, np.sqrt(np.clip(np.diag(cov), 0.0, None))


def sphere_recovery(radius_mm: float, fwhm_mm: float) -> float:
    """Analytic recovery coefficient of a uniform sphere in a cold background under a 3D Gaussian
    PSF: the mean of the blurred sphere over the sphere divided by its true concentration.

    The blurred profile of a uniform sphere of radius R at distance r from its centre is
    ``0.5 [erf((R-r)/(s sqrt2)) + erf((R+r)/(s sqrt2))]
    - s / (r sqrt(2 pi)) [exp(-(R-r)^2 / 2s^2) - exp(-(R+r)^2 / 2s^2)]`` (the convolution of the
    indicator with the Gaussian in spherical coordinates); its volume mean over the sphere is
    integrated numerically. Used to check :func:`transfer_matrix` and to show users what the
    correction does.
    """
    from scipy.integrate import quad
    from scipy.special import erf

    R, s = float(radius_mm), float(fwhm_mm) * FWHM_TO_SIGMA

    def profile(r):
        if r < 1e-9 * R:
            return erf(R / (s * math.sqrt(2))) - math.sqrt(2 / math.pi) * (R / s) * math.exp(
                -R * R / (2 * s * s))
        a, b = (R - r) / (s * math.sqrt(2)), (R + r) / (s * math.sqrt(2))
        return 0.5 * (erf(a) + erf(b)) - s / (r * math.sqrt(2 * math.pi)) * (
            math.exp(-a * a) - math.exp(-b * b))

    val, _ = quad(lambda r: profile(r) * r * r, 0.0, R, epsabs=1e-13, epsrel=1e-11, limit=200)
    return 3.0 * val / R ** 3
