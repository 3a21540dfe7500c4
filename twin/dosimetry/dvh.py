"""Region dose statistics, cumulative dose-volume histograms, and the local-deposition check.

Conventions: every voxel of a region has the same volume, so volume fractions are voxel counts.
D_x (Gy) is the minimum dose received by the hottest x % of the region's volume: with the
region's doses sorted in decreasing order d_1 >= d_2 >= ... >= d_n, D_x = d_k with
k = ceil(x n / 100) (at least 1). So D2 is near the maximum, D98 near the minimum, D50 the
median. V_x (fraction, 0-1) is the share of the region's voxels with dose >= x Gy.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pbpk_models.units import gy_per_mbq_h
from twin.errors import InputError


def _check_labels(labels, shape):
    lab = np.asarray(labels)
    if lab.shape != tuple(shape):
        raise InputError(f"label volume shape {lab.shape} differs from the dose grid "
                         f"{tuple(shape)}; resample the masks onto the dose grid (nearest "
                         f"neighbour)")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.mod(lab, 1) == 0):
            raise InputError("the label volume must hold integer labels (0 = background)")
        lab = lab.astype(np.int64)
    return lab


def region_names(labels, label_names: dict | None = None) -> dict:
    """{label: name} for every non-zero label present (names default to 'label_<n>')."""
    present = [int(v) for v in np.unique(np.asarray(labels)) if v != 0]
    names = dict(label_names or {})
    return {v: str(names.get(v, f"label_{v}")) for v in present}


def dose_at_volume(sorted_desc: np.ndarray, percent: float) -> float:
    """D_x from doses sorted in decreasing order (see the module docstring)."""
    n = sorted_desc.size
    k = max(1, int(math.ceil(percent * n / 100.0 - 1e-9)))
    return float(sorted_desc[min(k, n) - 1])


def region_statistics(dose_gy, labels, label_names: dict | None = None, voxel_volume_ml=None,
                      v_thresholds_gy=(), tia_mbq_h=None, energy_mev_per_decay=None,
                      density_g_cm3=None) -> pd.DataFrame:
    """Per-region dose table: mean, min, max, D2, D50, D98 (Gy) and V_x (fraction).

    ``dose_gy``: (z, y, x) dose; ``labels``: integer volume on the same grid (0 = background);
    ``label_names``: {label: region name}; ``voxel_volume_ml``: volume of one voxel (mL).
    With ``tia_mbq_h`` the table gets each region's TIA (MBq h); with also
    ``energy_mev_per_decay`` (MeV absorbed per decay) and ``voxel_volume_ml``, the organ
    self-dose by local deposition, ``self_dose_local_gy`` = TIA x E / region mass (mass from
    ``density_g_cm3`` or 1.04 g/cm3, ICRU soft tissue): the region's own activity fully absorbed in
    it, a cross-check of the mean dose (equal for regions much larger than the particle range
    and without cross-dose).
    """
    dose = np.asarray(dose_gy)
    lab = _check_labels(labels, dose.shape)
    names = region_names(lab, label_names)
    flat_l = lab.ravel()
    flat_d = dose.ravel()
    order = np.argsort(flat_l, kind="stable")
    sl = flat_l[order]
    rows = []
    for v, name in names.items():
        lo, hi = np.searchsorted(sl, v, "left"), np.searchsorted(sl, v, "right")
        idx = order[lo:hi]
        d = np.sort(flat_d[idx].astype(np.float64))[::-1]
        row = {"region": name, "label": v, "n_voxels": d.size,
               "mean_gy": float(d.mean()), "min_gy": float(d[-1]), "max_gy": float(d[0]),
               "d2_gy": dose_at_volume(d, 2), "d50_gy": dose_at_volume(d, 50),
               "d98_gy": dose_at_volume(d, 98)}
        if voxel_volume_ml is not None:
            row["volume_ml"] = d.size * float(voxel_volume_ml)
            rho = (np.asarray(density_g_cm3).ravel()[idx].astype(np.float64)
                   if density_g_cm3 is not None else np.full(d.size, 1.04))
            row["mass_g"] = float(rho.sum() * float(voxel_volume_ml))
        for x in v_thresholds_gy:
            row[f"v{x:g}gy"] = float(np.mean(d >= x))
        if tia_mbq_h is not None:
            tia_r = float(np.asarray(tia_mbq_h).ravel()[idx].astype(np.float64).sum())
            row["tia_mbq_h"] = tia_r
            if energy_mev_per_decay is not None and "mass_g" in row:
                row["self_dose_local_gy"] = tia_r * gy_per_mbq_h(energy_mev_per_decay,
                                                                  row["mass_g"])
        rows.append(row)
    return pd.DataFrame(rows)


def cumulative_dvh(dose_gy, labels, label_names: dict | None = None,
                   n_bins: int = 200, max_dose_gy: float | None = None) -> pd.DataFrame:
    """Cumulative DVH per region: long table ``region, dose_gy, volume_fraction``.

    volume_fraction(d) = share of the region's voxels with dose >= d, on ``n_bins`` + 1 dose
    levels from 0 to ``max_dose_gy`` (default: the highest dose in any region).
    """
    dose = np.asarray(dose_gy)
    lab = _check_labels(labels, dose.shape)
    names = region_names(lab, label_names)
    inside = dose[lab != 0]
    top = float(max_dose_gy if max_dose_gy is not None else (inside.max() if inside.size else 0.0))
    levels = np.linspace(0.0, top if top > 0 else 1.0, n_bins + 1)
    frames = []
    for v, name in names.items():
        d = np.sort(dose[lab == v].astype(np.float64))
        frac = 1.0 - np.searchsorted(d, levels, side="left") / d.size
        frames.append(pd.DataFrame({"region": name, "dose_gy": levels, "volume_fraction": frac}))
    if not frames:
        return pd.DataFrame(columns=["region", "dose_gy", "volume_fraction"])
    return pd.concat(frames, ignore_index=True)


def plot_dvh(dvh: pd.DataFrame, path, title: str = "Cumulative dose-volume histogram", inputs=()):
    """Plot a :func:`cumulative_dvh` table to an image file (PNG, SVG, PDF), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twin.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, g in dvh.groupby("region", sort=False):
        ax.plot(g["dose_gy"], 100 * g["volume_fraction"], label=str(name))
    ax.set_xlabel("absorbed dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 101)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(path, inputs=inputs) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
