"""CT number to mass density, and the density correction of kernel-convolved dose.

HU -> density: the piecewise-linear calibration of Schneider W, Bortfeld T, Schlegel W,
"Correlation between CT numbers and tissue parameters needed for Monte Carlo simulations of
clinical dose distributions", Phys Med Biol 2000;45:459-478 (doi:10.1088/0031-9155/45/2/314),
as distributed with the OpenGATE toolkit (``data/Schneider2000DensitiesTable.txt``). Values
below -1000 HU take the table's first density (air), above 3000 HU its last.

Density correction (convention): a voxel S-value kernel is the dose in its homogeneous medium
(soft tissue, 1.04 g/cm3). In a voxel of density rho, the energy deposited there is taken to be
the same as in the kernel medium and the dose is divided by the local mass:
D(x) = D_kernel(x) x rho_medium / rho(x). This is the "density-corrected" kernel convolution
compared with direct Monte Carlo by Dieudonne A et al., J Nucl Med 2013;54:236-243
(doi:10.2967/jnumed.112.105825; not re-read here), which found it adequate in soft tissue and
bone but poor at lung and air interfaces, where the ranges scale with density and this
correction overestimates the dose. Without a CT, no scaling is applied.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from twin.errors import InputError


@functools.lru_cache(maxsize=1)
def schneider_table() -> tuple[np.ndarray, np.ndarray]:
    """(HU, density g/cm3) knots of the Schneider 2000 table, HU increasing."""
    ref = resources.files("twin.dosimetry") / "data" / "Schneider2000DensitiesTable.txt"
    rows = []
    with ref.open("r", encoding="latin-1") as f:
        for line in f:
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            hu, rho = s.split()[:2]
            rows.append((float(hu), float(rho)))
    a = np.array(rows)
    hu, rho = a[:, 0], a[:, 1]
    hu.setflags(write=False)
    rho.setflags(write=False)
    return hu, rho


def hu_to_density(hu) -> np.ndarray:
    """Mass density (g/cm3) from CT numbers (HU), piecewise linear (Schneider et al. 2000).

    The table has a step at 100/101 HU (soft tissue to bone mixtures), kept as is.
    Raises InputError if ``hu`` contains NaN.
    """
    h = np.asarray(hu, dtype=np.float64)
    if np.isnan(h).any():
        raise InputError("the CT contains NaN values; fill or mask them before dose calculation")
    xs, ys = schneider_table()
    return np.interp(h, xs, ys).astype(np.float32)


def density_scale(density_g_cm3, medium_density_g_cm3: float = 1.04) -> np.ndarray:
    """Factor rho_medium / rho(x) that turns kernel-medium dose into local dose (dimensionless).

    Densities below 1e-3 g/cm3 (air outside the patient, 1.21e-3 in the table) are clipped to
    the table's air density to avoid division by zero.
    """
    rho = np.asarray(density_g_cm3, dtype=np.float32)
    if (rho <= 0).any() or np.isnan(rho).any():
        raise InputError("densities must be positive numbers (g/cm3)")
    air = np.float32(1.21e-3)  # the table's density at -1000 HU
    return (np.float32(medium_density_g_cm3) / np.maximum(rho, air)).astype(np.float32)
