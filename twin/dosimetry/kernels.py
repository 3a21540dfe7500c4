"""Voxel S-value (VSV) kernels at any voxel size, and local deposition for other nuclides.

Source data
-----------
Monte Carlo voxel S-values of Lanconelli N, Pacilio M, Lo Meo S, et al., "A free database of
radionuclide voxel S values for the dosimetry of nonuniform activity distributions",
Phys Med Biol 2012;57:517-533 (doi:10.1088/0031-9155/57/2/517), in ICRU soft tissue
(1.04 g/cm3) and ICRU compact bone, for 89Sr, 90Y, 131I, 153Sm, 177Lu, 186Re, 188Re at eleven
cubic voxel sizes (files in ``twin/dosimetry/data/lanconelli2012_vsv``; see the README there).

Resampling to any voxel size (the method, see docs/dose.md)
-----------------------------------------------------------
A voxel S-value is the dose point kernel (DPK) k(r) averaged over a source point uniform in the
source voxel and a target point uniform in the target voxel (MIRD Pamphlet No. 17, Bolch WE et
al., J Nucl Med 1999;40:11S-36S). The difference of two uniform points in a box of edges
(a_x, a_y, a_z) has the separable triangular ("tent") density, so

    S(R) = integral k(|u|) prod_axes tent_a(u_axis - R_axis) du.

We recover k(r) from the database itself: k is written as a non-negative sum of isotropic
Gaussians, k(r) = sum_m c_m exp(-r^2 / (2 sigma_m^2)), with sigma_m fixed on a logarithmic grid
(0.03-200 mm). Then S(R) = sum_m c_m prod_axes I(R_axis; a_axis, sigma_m), with I a closed form
(second difference of the twice-integrated Gaussian), exact for any box, cubic or not. The c_m are
the non-negative least-squares fit (relative residuals) to all the database voxel sizes of one
nuclide and medium at once: the database kernels at different voxel sizes are the same physics
(one DPK) sampled by different boxes, so this is an inverse problem with ~600 data for 56
unknowns (residuals relative, floored at 1e-3 of the central value). A kernel at a new voxel
size is then this integral, times a factor that makes sum(S * voxel mass) equal the database's
absorbed energy per decay exactly at the database sizes (the factor is database energy / model
energy within the same 11^3 extent, interpolated in kernel extent between sizes; it is within
0.3 % of 1 in soft tissue, 2.2 % in bone). This is the approach of Dieudonne A et al.,
"Fine-resolution voxel S values for constructing absorbed dose distributions at variable voxel
size", J Nucl Med
2010;51:1600-1607 (doi:10.2967/jnumed.110.077149): VSVs for any voxel size and shape from a
finer description of the same Monte Carlo kernel; here the finer description is a continuous
DPK fitted to the database rather than a 0.5 mm Monte Carlo kernel.

Leave-one-out over the eleven database sizes (each size predicted from a fit to the other
ten), soft tissue, all seven nuclides: central voxel within 0.55 %, first and second neighbours
within 0.5 %; bone within 2.8 % (177Lu bone, whose database kernels are themselves noisier).
See tests/twin/dosimetry/test_kernels.py and docs/dose.md.

Units
-----
Database S in mGy/(MBq s); the kernels returned for convolution are in Gy per MBq h of
time-integrated activity in the source voxel (1 mGy/(MBq s) = 3.6 Gy/(MBq h)).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np

from pbpk_models.radionuclides import (
    energy_per_decay_mev,
    half_life_h,
    normalise_nuclide,
    progeny,
)
from pbpk_models.units import S_PER_H, gy_per_mbq_h
from twin.errors import InputError

# Nuclides and cubic voxel sizes (mm) of the Lanconelli 2012 database.
DATABASE_NUCLIDES = ("Lu-177", "Y-90", "I-131", "Sr-89", "Sm-153", "Re-186", "Re-188")
DATABASE_VOXEL_SIZES_MM = (2.21, 2.33, 2.4, 3.0, 3.59, 3.9, 4.0, 5.0, 6.0, 6.8, 9.28)
MEDIA = ("soft", "bone")

# Mass densities of the database media (g/cm3). Soft tissue: ICRU soft tissue, 1.04, stated
# with the database (Lanconelli 2012; /work/shared/data/README.md). Bone: ICRU compact bone
# (the files' title line says "Bone compact"), 1.85 g/cm3 (ICRU Report 46); consistent with the
# database itself: 90Y and 89Sr absorb 0.935 and 0.58 MeV per decay in soft tissue, and
# sum(S_bone) x V x 1.85 gives 0.997-1.000 x that at every voxel size.
MEDIUM_DENSITY_G_CM3 = {"soft": 1.04, "bone": 1.85}

# 1 mGy/(MBq s) -> Gy/(MBq h): x 1e-3 Gy/mGy x 3600 s/h.
MGY_PER_MBQ_S_TO_GY_PER_MBQ_H = 1e-3 * S_PER_H

# Half-width (voxels) of the database kernels (11 x 11 x 11).
DATABASE_HALF_WIDTH = 5

# Gaussian widths (mm) of the dose point kernel representation: from below the smallest
# electron ranges that a 2.2 mm voxel resolves to beyond the largest database kernel (about
# 100 mm). A numerical basis, not physical data.
_SIGMAS_MM = np.geomspace(0.03, 200.0, 56)

_FILE_TAG = {"Lu-177": "177Lu", "Y-90": "90Y", "I-131": "131I", "Sr-89": "89Sr",
             "Sm-153": "153Sm", "Re-186": "186Re", "Re-188": "188Re"}


def _size_tag(voxel_mm: float) -> str:
    s = f"{voxel_mm:g}"
    return s


def _check_medium(medium: str) -> str:
    if medium not in MEDIA:
        raise InputError(f"medium must be one of {MEDIA}, got {medium!r}")
    return medium


def database_nuclide(nuclide: str) -> str | None:
    """The canonical name if the Lanconelli database has ``nuclide``, else None."""
    name = normalise_nuclide(nuclide)
    return name if name in DATABASE_NUCLIDES else None


@functools.lru_cache(maxsize=None)
def _load_octant(nuclide: str, voxel_mm: float, medium: str) -> np.ndarray:
    name = normalise_nuclide(nuclide)
    if name not in DATABASE_NUCLIDES:
        raise InputError(f"the voxel S-value database has no {name}; it has "
                         f"{', '.join(DATABASE_NUCLIDES)}")
    size = min(DATABASE_VOXEL_SIZES_MM, key=lambda s: abs(s - voxel_mm))
    if abs(size - voxel_mm) > 1e-6:
        raise InputError(f"the database has no {voxel_mm} mm kernel; sizes are "
                         f"{DATABASE_VOXEL_SIZES_MM} (use voxel_s_values for any size)")
    fname = f"{_FILE_TAG[name]}{_size_tag(size)}mm{_check_medium(medium)}.txt"
    ref = resources.files("twin.dosimetry") / "data" / "lanconelli2012_vsv" / fname
    with ref.open("rb") as f:
        text = f.read().decode("latin-1")
    rows = [ln.split("\t") for ln in text.splitlines()[2:] if ln.strip()]
    arr = np.array([[float(x) for x in r[:4]] for r in rows])
    if arr.shape != (216, 4):
        raise InputError(f"{fname}: expected 216 rows of i, j, k, S; got {arr.shape[0]}")
    octant = np.zeros((6, 6, 6))
    ijk = arr[:, :3].astype(int)
    octant[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = arr[:, 3]
    octant.setflags(write=False)
    return octant


def load_database_kernel(nuclide: str, voxel_mm: float, medium: str = "soft") -> np.ndarray:
    """The database kernel mirrored to 11 x 11 x 11, in mGy/(MBq s) (Lanconelli et al. 2012).

    ``voxel_mm``: one of :data:`DATABASE_VOXEL_SIZES_MM`. ``medium``: 'soft' or 'bone'.
    Index [5, 5, 5] is the source voxel.
    """
    octant = _load_octant(normalise_nuclide(nuclide), float(voxel_mm), medium)
    idx = np.abs(np.arange(-DATABASE_HALF_WIDTH, DATABASE_HALF_WIDTH + 1))
    return octant[np.ix_(idx, idx, idx)].copy()


def kernel_energy_mev(s_mgy_per_mbq_s: np.ndarray, spacing_mm, density_g_cm3: float) -> float:
    """Energy absorbed per decay (MeV) in the kernel's extent: sum(S) x voxel mass.

    S in mGy/(MBq s) = 1e-9 Gy per decay; mass = density x voxel volume.
    """
    vol_cm3 = float(np.prod(np.asarray(spacing_mm, float))) * 1e-3
    mass_kg = density_g_cm3 * vol_cm3 * 1e-3
    joule_per_mev = 1.602176634e-13  # CODATA 2018, exact
    return float(np.sum(s_mgy_per_mbq_s)) * 1e-9 * mass_kg / joule_per_mev


def database_energy_mev(nuclide: str, voxel_mm: float, medium: str = "soft") -> float:
    """Energy per decay (MeV) that the database kernel absorbs within its 11^3 extent."""
    k = load_database_kernel(nuclide, voxel_mm, medium)
    return kernel_energy_mev(k, (voxel_mm,) * 3, MEDIUM_DENSITY_G_CM3[medium])


# ----------------------------------------------------------------------------------------
# The dose point kernel as a sum of Gaussians, and its exact voxel average
# ----------------------------------------------------------------------------------------

def _g2(x, s):
    """Second antiderivative of exp(-x^2 / (2 s^2)) (vanishing slope and value at -inf)."""
    from scipy.special import erf

    return s * math.sqrt(math.pi / 2.0) * x * erf(x / (s * math.sqrt(2.0))) \
        + s * s * np.exp(-x * x / (2.0 * s * s))


def _tent_gauss(r_mm, a_mm, s_mm):
    """Integral of exp(-u^2/2s^2) against the unit-area tent of half-width a centred at r."""
    return (_g2(r_mm + a_mm, s_mm) - 2.0 * _g2(r_mm, s_mm) + _g2(r_mm - a_mm, s_mm)) / a_mm**2


def _design(spacing_mm, offsets: np.ndarray) -> np.ndarray:
    """Matrix W[offset, m]: voxel-averaged Gaussian m at integer voxel offsets (n, 3)."""
    w = np.ones((offsets.shape[0], _SIGMAS_MM.size))
    for ax in range(3):
        a = float(spacing_mm[ax])
        r = np.abs(offsets[:, ax:ax + 1]).astype(float) * a
        w *= _tent_gauss(r, a, _SIGMAS_MM[None, :])
    return w


def _octant_offsets(half_width) -> np.ndarray:
    g = np.meshgrid(*[np.arange(h + 1) for h in half_width], indexing="ij")
    return np.stack([x.ravel() for x in g], axis=1)


@dataclass(frozen=True)
class PointKernelModel:
    """A dose point kernel k(r) = sum_m c_m exp(-r^2 / (2 sigma_m^2)) fitted to the database.

    ``coefficients`` in mGy/(MBq s) (dose per decay at r, as a rate per MBq); ``sigmas_mm`` in
    mm; ``fitted_sizes_mm``: the database voxel sizes used; ``energy_correction``: pairs
    (kernel half-extent mm, database energy / model energy) at those sizes, used to renormalise.
    """

    nuclide: str
    medium: str
    sigmas_mm: tuple
    coefficients: tuple
    fitted_sizes_mm: tuple
    energy_correction: tuple

    def voxel_s_values_raw(self, spacing_mm, half_width) -> np.ndarray:
        """Unnormalised S (mGy/(MBq s)) on the full (2h+1) kernel for voxel edges ``spacing_mm``."""
        hw = tuple(int(h) for h in half_width)
        offs = _octant_offsets(hw)
        octant = (_design(spacing_mm, offs) @ np.asarray(self.coefficients)).reshape(
            tuple(h + 1 for h in hw))
        idx = [np.abs(np.arange(-h, h + 1)) for h in hw]
        return np.clip(octant[np.ix_(*idx)], 0.0, None)

    def energy_factor(self, spacing_mm, half_width) -> float:
        """Renormalisation factor for a kernel of this physical extent (dimensionless).

        At each database size, factor = database energy / the model's energy within the same
        11^3 extent (so the database energy is reproduced exactly there); elsewhere linear
        interpolation in the half-extent (cube root of the kernel volume / 2), constant
        beyond the database's extents, where the model's own energy (photon tails) extrapolates.
        """
        vol = float(np.prod([(2 * h + 1) * a for h, a in zip(half_width, spacing_mm)]))
        ext = 0.5 * vol ** (1 / 3)
        x, y = np.array(self.energy_correction).T
        return float(np.interp(ext, x, y))


@functools.lru_cache(maxsize=None)
def fit_point_kernel(nuclide: str, medium: str = "soft",
                     exclude_mm: tuple = ()) -> PointKernelModel:
    """Fit the dose point kernel of ``nuclide`` in ``medium`` to the database (cached).

    ``exclude_mm``: database voxel sizes to leave out (for leave-one-out validation).
    """
    from scipy.optimize import nnls

    name = normalise_nuclide(nuclide)
    _check_medium(medium)
    sizes = tuple(s for s in DATABASE_VOXEL_SIZES_MM
                  if all(abs(s - e) > 1e-6 for e in exclude_mm))
    if len(sizes) < 3:
        raise InputError("at least three database voxel sizes are needed to fit a point kernel")
    ii, jj, kk = np.meshgrid(*[np.arange(6)] * 3, indexing="ij")
    uniq = (ii >= jj) & (jj >= kk)  # the database kernels are symmetric under permutations
    offs = np.stack([ii[uniq], jj[uniq], kk[uniq]], axis=1)
    rows, rhs, energies = [], [], []
    for a in sizes:
        y = _load_octant(name, a, medium)[uniq]
        # Relative residuals, with a floor at 1e-3 of the central value: the far tails
        # (bremsstrahlung, photons; Monte Carlo noise) count in absolute terms there. Pure
        # relative weights let ~200 noisy tail voxels per size pull the fit (90Y: 7 % error at
        # first neighbours in leave-one-out, against 0.3 % with the floor).
        w = 1.0 / (y + 1e-3 * y.max())
        rows.append(_design((a, a, a), offs) * w[:, None])
        rhs.append(y * w)
    A = np.vstack(rows)
    b = np.concatenate(rhs)
    scale = np.abs(A).max(axis=0)
    scale[scale == 0] = 1.0
    c, _ = nnls(A / scale, b, maxiter=20 * A.shape[1])
    c = c / scale
    model = PointKernelModel(nuclide=name, medium=medium, sigmas_mm=tuple(_SIGMAS_MM),
                             coefficients=tuple(c), fitted_sizes_mm=sizes, energy_correction=())
    rho = MEDIUM_DENSITY_G_CM3[medium]
    for a in sizes:
        raw = model.voxel_s_values_raw((a, a, a), (DATABASE_HALF_WIDTH,) * 3)
        energies.append((5.5 * a, database_energy_mev(name, a, medium)
                         / kernel_energy_mev(raw, (a, a, a), rho)))
    return PointKernelModel(nuclide=name, medium=medium, sigmas_mm=tuple(_SIGMAS_MM),
                            coefficients=tuple(c), fitted_sizes_mm=sizes,
                            energy_correction=tuple(energies))


def default_half_width(spacing_mm) -> tuple:
    """Kernel half-width (voxels) per axis: at least 5 voxels of the coarsest axis, like the
    database's 11^3 kernels; finer axes get proportionally more voxels."""
    sp = np.asarray(spacing_mm, float)
    return tuple(int(math.ceil(DATABASE_HALF_WIDTH * sp.max() / s - 1e-9)) for s in sp)


def _check_spacing(spacing_mm) -> tuple:
    sp = tuple(float(s) for s in np.ravel(spacing_mm))
    if len(sp) == 1:
        sp = sp * 3
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"voxel spacing must be three positive sizes in mm, got {spacing_mm}")
    return sp


def voxel_s_values(nuclide: str, spacing_mm, medium: str = "soft", half_width=None,
                   exclude_mm: tuple = (), renormalise: bool = True) -> np.ndarray:
    """Voxel S-values (mGy/(MBq s)) of ``nuclide`` for voxels of edges ``spacing_mm`` (mm).

    ``spacing_mm``: a number or three edges, in the order of the volume's array axes; the
    result has shape (2 h_0 + 1, 2 h_1 + 1, 2 h_2 + 1) with the source voxel at the centre.
    ``half_width``: voxels per axis (default :func:`default_half_width`). A database size with
    the default width returns the database kernel itself. ``exclude_mm``: database sizes left
    out of the fit (validation). ``renormalise``: scale so that sum(S) x voxel mass equals the
    energy per decay absorbed within the same extent in the database.
    Raises InputError for a nuclide not in the database.
    """
    name = normalise_nuclide(nuclide)
    if name not in DATABASE_NUCLIDES:
        raise InputError(f"no voxel S-value kernel for {name}; kernels exist for "
                         f"{', '.join(DATABASE_NUCLIDES)} (other nuclides: local deposition)")
    _check_medium(medium)
    sp = _check_spacing(spacing_mm)
    hw = (default_half_width(sp) if half_width is None
          else tuple(int(h) for h in np.broadcast_to(half_width, 3)))
    if (len(set(sp)) == 1 and hw == (DATABASE_HALF_WIDTH,) * 3 and not exclude_mm
            and any(abs(sp[0] - s) < 1e-6 for s in DATABASE_VOXEL_SIZES_MM)):
        return load_database_kernel(name, sp[0], medium)
    model = fit_point_kernel(name, medium, tuple(float(e) for e in exclude_mm))
    k = model.voxel_s_values_raw(sp, hw)
    if renormalise:
        k = k * model.energy_factor(sp, hw)
    return k


# ----------------------------------------------------------------------------------------
# Nuclides without a kernel: local deposition of the non-penetrating energy of the chain
# ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def chain_members(nuclide: str) -> tuple[tuple[str, float], ...]:
    """(member, decays per decay of the parent) for the parent and its radioactive progeny.

    Daughters are assumed to decay where their parent decayed ("in equilibrium at the decay
    site"): integrated over time, every decay of the parent is followed by exactly one decay of
    each daughter, weighted by the product of the branching fractions on the way. So the
    time-integrated activity of a daughter is the parent's TIA times that product. (Activity
    ratios of transient equilibrium, lambda_d / (lambda_d - lambda_p), describe activities at
    late times, not the integrated number of decays, and do not apply here.)
    Branching: radioactivedecay (ICRP 107). Stable nuclides end the chain.
    """
    parent = normalise_nuclide(nuclide)
    out: dict[str, float] = {}

    def walk(name: str, weight: float):
        if not math.isfinite(half_life_h(name)):
            return
        out[name] = out.get(name, 0.0) + weight
        for d, b in progeny(name):
            if b > 0 and d != "SF":
                walk(d, weight * b)

    walk(parent, 1.0)
    return tuple(out.items())


def local_energy_mev(nuclide: str, include_progeny: bool = True) -> float:
    """Non-penetrating energy per decay of the parent (MeV), chain included, ICRP 107.

    Alpha, alpha recoil, beta-, beta+ (kinetic), Auger and internal-conversion electrons
    (``pbpk_models.radionuclides.NON_PENETRATING``); photons excluded.
    """
    members = chain_members(nuclide) if include_progeny else ((normalise_nuclide(nuclide), 1.0),)
    return float(sum(w * energy_per_decay_mev(m, "non-penetrating") for m, w in members))


def dose_kernel(nuclide: str, spacing_mm, medium: str = "soft", half_width=None) -> np.ndarray:
    """The kernel used for dose: Gy per MBq h in the source voxel, at ``spacing_mm`` (mm).

    Database nuclides: :func:`voxel_s_values` converted to Gy/(MBq h). Other nuclides
    (161Tb, 225Ac, 212Pb, ...): a 1 x 1 x 1 kernel depositing the chain's non-penetrating energy
    (:func:`local_energy_mev`) in the decay voxel of the medium's density; photons are neglected.
    """
    sp = _check_spacing(spacing_mm)
    _check_medium(medium)
    if database_nuclide(nuclide):
        return voxel_s_values(nuclide, sp, medium, half_width) * MGY_PER_MBQ_S_TO_GY_PER_MBQ_H
    half_life_h(nuclide)  # unknown nuclide -> InputError
    mass_g = MEDIUM_DENSITY_G_CM3[medium] * float(np.prod(sp)) * 1e-3
    return np.full((1, 1, 1), gy_per_mbq_h(local_energy_mev(nuclide), mass_g))
