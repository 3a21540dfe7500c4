"""Region TIA (from the PBPK twin) -> voxel TIA, spread by a measured uptake pattern.

Each region's TIA (MBq h) is distributed over the region's voxels in proportion to an uptake
image (latest quantitative SPECT, else PET; any linear unit), so that the voxel sum of each
region equals its TIA exactly (up to float rounding). Negative uptake values (reconstruction
noise) count as zero. A region whose uptake sums to zero gets its TIA spread uniformly.
Voxels with label 0 or with a label whose region has no TIA get zero.
"""

from __future__ import annotations

import numpy as np

from twin.errors import InputError


def spread_region_tia(region_tia_mbq_h, labels, label_names: dict, uptake) -> np.ndarray:
    """Voxel TIA (MBq h per voxel, float64) conserving each region's TIA.

    ``region_tia_mbq_h``: {region name: TIA (MBq h)} or a pandas Series indexed by name.
    ``labels``: integer volume (0 = background); ``label_names``: {label: region name} (several
    labels may share a name: the region is their union). ``uptake``: image on the same grid.
    Raises InputError for a region with TIA but no voxels, shape mismatch, NaN or negative TIA.
    """
    tia = {str(k): float(v) for k, v in dict(region_tia_mbq_h).items()}
    lab = np.asarray(labels)
    up = np.asarray(uptake, dtype=np.float64)
    if lab.shape != up.shape:
        raise InputError(f"labels {lab.shape} and uptake image {up.shape} are on different grids;"
                         f" resample them onto one grid")
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError("the label volume must hold integer labels")
    if np.isnan(up).any():
        raise InputError("the uptake image contains NaN; replace them by 0")
    for name, value in tia.items():
        if not np.isfinite(value) or value < 0:
            raise InputError(f"TIA of region {name!r} is {value}; it must be a finite number >= 0")
    by_name: dict[str, list[int]] = {}
    for label, name in label_names.items():
        by_name.setdefault(str(name), []).append(int(label))
    missing = sorted(set(tia) - set(by_name))
    if missing:
        raise InputError(f"regions {missing} have a TIA but no label in the label table; "
                         f"add them to the table (label -> name) or drop them")
    w = np.clip(up, 0.0, None)
    out = np.zeros(lab.shape, dtype=np.float64)
    for name, value in tia.items():
        mask = np.isin(lab, by_name[name])
        n = int(mask.sum())
        if n == 0:
            raise InputError(f"region {name!r} (labels {by_name[name]}) has no voxels in the "
                             f"label volume")
        s = float(w[mask].sum())
        out[mask] = value * (w[mask] / s if s > 0 else np.full(n, 1.0 / n))
    return out
