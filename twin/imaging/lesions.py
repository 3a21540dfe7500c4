"""Lesions from a PET (or SPECT) without contours: threshold, percent of local maximum, fuzzy
C-means; connected components as separate lesions; physiological organs excluded by their masks.

Methods and their sources:
- fixed threshold: SUV >= 3 for 68Ga-PSMA-11 total tumour volume (Seifert R et al., J Nucl Med
  2020;61:1786-1792, doi:10.2967/jnumed.120.242057).
- percent of the local maximum: 41% of each lesion's SUVmax (Boellaard R et al., EANM FDG PET/CT
  guidelines v2.0, Eur J Nucl Med Mol Imaging 2015;42:328-354, doi:10.1007/s00259-014-2961-x).
- fuzzy C-means (Bezdek JC, Pattern Recognition with Fuzzy Objective Function Algorithms, 1981;
  applied to PET lesions by Belhassen S, Zaidi H, Med Phys 2010;37:1309-1324,
  doi:10.1118/1.3301610): voxel values clustered into ``n_clusters`` classes with fuzziness m = 2;
  a voxel is lesion when its membership of the hottest class is >= 0.5. Suited to the blurred edges
  of SPECT.
- connected components with 26-connectivity (face, edge and corner neighbours).

TMTV = sum of lesion volumes (mL); total lesion uptake = sum of lesion activity (MBq) when the
image is in MBq/mL, or sum of SUVmean x volume (TLU, "total lesion PSMA") when it is in SUV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twin.errors import InputError
from twin.imaging.masks import RegionMasks
from twin.imaging.volume import Volume

SUV_THRESHOLD_PSMA = 3.0        # Seifert et al. 2020
PERCENT_OF_MAX = 0.41           # Boellaard et al. 2015
# Organs with physiological PSMA-ligand uptake (Fendler WP et al., EANM/SNMMI guideline 2017).
PHYSIOLOGICAL_REGIONS = ("Kidney", "SG", "Liver", "Spleen", "Bladder", "Lacrimal", "GI", "Heart",
                         "Brain")


@dataclass(frozen=True)
class LesionResult:
    """Lesion labels (1..n on the image grid), one row per lesion, and the totals.

    ``table`` columns: ``lesion, n_voxels, volume_ml, max, mean, uptake`` (image units; uptake =
    mean x volume, MBq for MBq/mL images, TLU for SUV), ``centre_x_mm, centre_y_mm, centre_z_mm``.
    """

    labels: Volume
    table: pd.DataFrame
    tmtv_ml: float
    total_uptake: float

    def as_masks(self, name: str = "TumorRest") -> RegionMasks:
        """All lesions as one region (for observe)."""
        lab = (np.asarray(self.labels.array) > 0).astype(np.int16)
        return RegionMasks(self.labels.with_array(lab, units="label"), ((1, name),))


def _components(mask: np.ndarray):
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3, 3), bool))


def fuzzy_c_means(values: np.ndarray, n_clusters: int = 3, m: float = 2.0, iterations: int = 100,
                  tol: float = 1e-6):
    """1D fuzzy C-means (Bezdek 1981). Returns (sorted centres, memberships (n, C))."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size < n_clusters:
        raise InputError(f"fuzzy C-means needs at least {n_clusters} voxels, got {x.size}")
    c = np.quantile(x, np.linspace(0.1, 0.9, n_clusters))
    p = 2.0 / (m - 1.0)
    for _ in range(iterations):
        d = np.abs(x[:, None] - c[None, :]) + 1e-12
        inv = d ** (-p)
        u = inv / inv.sum(axis=1, keepdims=True)
        um = u ** m
        c_new = (um * x[:, None]).sum(axis=0) / um.sum(axis=0)
        if np.max(np.abs(c_new - c)) < tol * (np.abs(c).max() + 1e-12):
            c = c_new
            break
        c = c_new
    order = np.argsort(c)
    d = np.abs(x[:, None] - c[None, order]) + 1e-12
    inv = d ** (-p)
    return c[order], inv / inv.sum(axis=1, keepdims=True)


def segment_lesions(image: Volume, method: str = "threshold", *, threshold: float | None = None,
                    fraction: float = PERCENT_OF_MAX, n_clusters: int = 3,
                    masks: RegionMasks | None = None, exclude=PHYSIOLOGICAL_REGIONS,
                    exclude_margin_mm: float = 0.0, min_volume_ml: float = 0.1) -> LesionResult:
    """Segment lesions in ``image`` (SUV or MBq/mL).

    Args:
        method: ``'threshold'`` (value >= threshold), ``'percent_max'`` (candidates above
            ``threshold``, then each component's voxels >= fraction x its maximum) or ``'fcm'``
            (fuzzy C-means within the candidates' neighbourhood).
        threshold: the fixed or candidate threshold in image units (default SUV 3 for SUV images;
            required for other units).
        masks, exclude: voxels of these regions (dilated by ``exclude_margin_mm``) are never
            lesion; masks must be on the image grid.
        min_volume_ml: smaller components are dropped (noise).
    """
    from scipy import ndimage

    arr = np.asarray(image.array, dtype=np.float32)
    if threshold is None:
        if image.units.upper() != "SUVBW":
            raise InputError(f"{image.source}: give a threshold in {image.units or 'image'} units "
                             f"(the SUV 3 default applies to SUV images)")
        threshold = SUV_THRESHOLD_PSMA
    allowed = np.ones(arr.shape, bool)
    if masks is not None and exclude:
        masks.check_grid(image)
        lab = np.asarray(masks.labels.array)
        ex = np.isin(lab, [k for k, v in masks.names if v in set(exclude)])
        if exclude_margin_mm > 0:
            r = [max(int(round(exclude_margin_mm / s)), 0) for s in image.spacing_mm[::-1]]
            ex = ndimage.binary_dilation(ex, structure=np.ones([2 * x + 1 for x in r], bool))
        allowed &= ~ex
    cand = (arr >= threshold) & allowed
    if method == "threshold":
        seg = cand
    elif method == "percent_max":
        lab, n = _components(cand)
        if n:
            mx = ndimage.maximum(arr, lab, index=np.arange(1, n + 1))
            # Grow each lesion within its neighbourhood down to fraction x its own maximum.
            lo = float(fraction) * np.r_[np.inf, mx]
            grown = ndimage.grey_dilation(lab, size=(3, 3, 3))
            seg = (lab > 0) | ((grown > 0) & (arr >= lo[grown]) & allowed)
            seg &= arr >= lo[np.maximum(lab, grown)]
        else:
            seg = cand
    elif method == "fcm":
        lab, n = _components(cand)
        seg = np.zeros(arr.shape, bool)
        if n:
            roi = ndimage.binary_dilation(cand, iterations=2) & allowed
            vals = arr[roi]
            _, u = fuzzy_c_means(vals, n_clusters=n_clusters)
            hot = u[:, -1] >= 0.5
            seg[roi] = hot
    else:
        raise InputError(f"method must be threshold, percent_max or fcm, got {method!r}")
    lab, n = _components(seg)
    vox_ml = image.voxel_volume_ml
    if n:
        counts = np.bincount(lab.ravel(), minlength=n + 1)
        keep = counts * vox_ml >= min_volume_ml
        keep[0] = False
        remap = np.zeros(n + 1, np.int32)
        remap[keep] = np.arange(1, int(keep.sum()) + 1)
        lab = remap[lab]
        n = int(keep.sum())
    rows = []
    if n:
        idx = np.arange(1, n + 1)
        cnt = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        sums = np.bincount(lab.ravel(), weights=arr.ravel(), minlength=n + 1)[1:]
        mx = ndimage.maximum(arr, lab, idx)
        com = np.asarray(ndimage.center_of_mass(np.ones_like(arr), lab, idx)).reshape(-1, 3)
        xyz = image.index_to_physical(com[:, ::-1])
        for i in range(n):
            vol_ml = cnt[i] * vox_ml
            mean = sums[i] / cnt[i]
            rows.append(dict(lesion=i + 1, n_voxels=int(cnt[i]), volume_ml=vol_ml,
                             max=float(mx[i]), mean=float(mean), uptake=float(mean * vol_ml),
                             centre_x_mm=xyz[i, 0], centre_y_mm=xyz[i, 1], centre_z_mm=xyz[i, 2]))
    table = pd.DataFrame(rows, columns=["lesion", "n_voxels", "volume_ml", "max", "mean", "uptake",
                                        "centre_x_mm", "centre_y_mm", "centre_z_mm"])
    out = image.with_array(lab.astype(np.int16), units="label", description="lesions")
    return LesionResult(labels=out, table=table, tmtv_ml=float(table["volume_ml"].sum()),
                        total_uptake=float(table["uptake"].sum()))


def suv_image(pet: Volume, injection, weight_kg: float) -> Volume:
    """A PET in MBq/mL (at its acquisition start) as body-weight SUV."""
    from twin.imaging.quantitation import suv_bw

    if pet.units != "MBq/mL" or pet.acquisition_start is None:
        raise InputError(f"{pet.source}: SUV needs a PET in MBq/mL with its acquisition time")
    suv = suv_bw(np.asarray(pet.array, np.float32), pet.acquisition_start, injection, weight_kg)
    return pet.with_array(suv.astype(np.float32), units="SUVbw")
