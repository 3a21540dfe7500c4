"""FFT convolution of time-integrated activity with a voxel S-value kernel (JAX, float32).

dose(x) = sum_y TIA(y) S(x - y): a linear convolution, computed as a real FFT product under
``jax.jit``. Zero padding: each axis is padded to the smallest 11-smooth length L >= n + h
(n voxels, h kernel half-width), which is enough for no circular wrap-around (a kernel offset d
in [-h, h] and a voxel pair at distance |x - y| <= n - 1 can only alias when L <= n + h - 1).
11-smooth: XLA's CPU FFT is DUCC (ducc0), which has dedicated radix-2, 3, 4, 5, 7, 8 and 11
passes, so these lengths are as fast per point as 2-3-5-smooth ones and often shorter
(256 + 15 -> 275 instead of 288: 13 % fewer points).

The kernel's FFT is computed once per (kernel, grid shape) and cached. Dose kernels are
point-symmetric (S(-R) = S(R)), so their FFT is real: it is stored as float32 (half the memory
of complex64). Volumes may carry leading batch axes (time points, virtual patients): they are
convolved one after the other inside one compiled function (``lax.map``), sharing the kernel
FFT, which keeps the working set at one volume (measured 1.35x faster per volume than a Python
loop over single calls, and faster than one batched FFT call, on the 2-core CPU).

All arithmetic is float32 / complex64, set explicitly (the tests run with JAX x64 enabled);
float32 agrees with float64 to about 5e-6 relative (NOTES.md).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from twin.errors import InputError


# Radices with dedicated passes in DUCC's 1-D FFT (ducc0/fft/fft1d_impl.h: pass2, pass3, pass4,
# pass5, pass7, pass8, pass11); other prime factors go through a generic, slower pass.
_FAST_PRIMES = (2, 3, 5, 7, 11)


def next_smooth(n: int, primes=_FAST_PRIMES) -> int:
    """The smallest integer >= n whose prime factors are all in ``primes``."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in primes:
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_shape(grid_shape, kernel_shape) -> tuple:
    """Padded FFT lengths per axis: the smallest 11-smooth L >= n + h (and >= kernel size)."""
    out = []
    for n, k in zip(grid_shape, kernel_shape):
        if k % 2 != 1:
            raise InputError(f"kernel sizes must be odd (centred kernel), "
                             f"got {tuple(kernel_shape)}")
        h = k // 2
        out.append(next_smooth(max(int(n) + h, k)))
    return tuple(out)


def _kernel_fft_np(kernel: np.ndarray, fshape: tuple) -> jax.Array:
    """rfftn of the kernel placed with its centre at index 0 (negative offsets wrapped).

    A point-symmetric kernel (k(-d) = k(d), every dose kernel) has a real FFT: returned as
    float32. Otherwise complex64.
    """
    k = np.asarray(kernel, dtype=np.float32)
    padded = np.zeros(fshape, dtype=np.float32)
    padded[tuple(slice(0, s) for s in k.shape)] = k
    padded = np.roll(padded, tuple(-(s // 2) for s in k.shape), axis=(0, 1, 2))
    f = _rfft3(jnp.asarray(padded, dtype=jnp.float32))
    if np.array_equal(k, k[::-1, ::-1, ::-1]):
        return jnp.real(f).astype(jnp.float32)
    return f


@jax.jit
def _rfft3(x):
    return jnp.fft.rfftn(x, axes=(-3, -2, -1))


@functools.partial(jax.jit, static_argnames=("fshape", "grid_shape", "nonnegative"))
def _convolve_with_fft(volumes, kernel_fft, fshape, grid_shape, nonnegative=False):
    """Pure, jitted: volumes (..., nz, ny, nx) float32 -> dose of the same shape.

    ``nonnegative``: clip FFT round-off (about 1e-7 of the maximum) below zero, for dose.
    Leading batch axes are flattened and mapped over sequentially (``lax.map``).
    """
    nz, ny, nx = grid_shape

    def one(x):
        f = jnp.fft.rfftn(x.astype(jnp.float32), s=fshape, axes=(-3, -2, -1))  # zero-pads
        y = jnp.fft.irfftn(f * kernel_fft, s=fshape, axes=(-3, -2, -1))[:nz, :ny, :nx]
        if nonnegative:
            y = jnp.maximum(y, 0.0)
        return y.astype(jnp.float32)

    if volumes.ndim == 3:
        return one(volumes)
    lead = volumes.shape[:-3]
    flat = volumes.reshape((-1, nz, ny, nx))
    return jax.lax.map(one, flat).reshape(lead + (nz, ny, nx))


class KernelFFTCache:
    """A small LRU cache of kernel FFTs keyed by (any hashable kernel key, grid shape).

    The key for dose kernels is (nuclide, spacing, medium, half width); the FFT also depends on
    the grid shape (through the padded FFT lengths).
    """

    def __init__(self, maxsize: int = 16):
        self.maxsize = maxsize
        self._d: OrderedDict = OrderedDict()
        self.misses = 0

    def get(self, key, grid_shape, make_kernel):
        full = (key, tuple(int(n) for n in grid_shape))
        if full in self._d:
            self._d.move_to_end(full)
            return self._d[full]
        self.misses += 1
        kernel = np.asarray(make_kernel(), dtype=np.float32)
        fshape = fft_shape(grid_shape, kernel.shape)
        value = (_kernel_fft_np(kernel, fshape), fshape)
        self._d[full] = value
        if len(self._d) > self.maxsize:
            self._d.popitem(last=False)
        return value

    def clear(self):
        self._d.clear()


KERNEL_FFT_CACHE = KernelFFTCache()


def _check_volumes(volumes):
    v = jnp.asarray(volumes)
    if v.ndim < 3:
        raise InputError(f"volumes must have at least 3 axes (z, y, x), got shape {v.shape}")
    return v


def convolve_fft(volumes, kernel, kernel_key=None) -> jax.Array:
    """Linear ('same', zero outside) convolution of 3-D volumes with an odd-sized kernel.

    ``volumes``: (..., nz, ny, nx), any leading batch axes; ``kernel``: (kz, ky, kx), odd
    sizes, centre = zero offset. Returns float32 of the volumes' shape. With ``kernel_key``
    (hashable), the kernel FFT is cached under (kernel_key, grid shape). Equivalent to
    ``scipy.ndimage.convolve(volume, kernel, mode='constant')``.
    """
    v = _check_volumes(volumes)
    grid = tuple(int(n) for n in v.shape[-3:])
    kernel = np.asarray(kernel)
    if kernel.ndim != 3:
        raise InputError(f"kernel must be 3-D, got shape {kernel.shape}")
    if kernel_key is None:
        fshape = fft_shape(grid, kernel.shape)
        kf = _kernel_fft_np(kernel, fshape)
    else:
        kf, fshape = KERNEL_FFT_CACHE.get(kernel_key, grid, lambda: kernel)
    return _convolve_with_fft(v.astype(jnp.float32), kf, fshape, grid)


def convolve_dose(tia_mbq_h, nuclide: str, spacing_mm, medium: str = "soft",
                  half_width=None) -> jax.Array:
    """Absorbed dose (Gy) from voxel TIA (MBq h per voxel) in a homogeneous medium.

    ``spacing_mm``: voxel edges in the order of the array axes (z, y, x for SimpleITK arrays).
    Leading batch axes allowed. The kernel FFT is cached per (nuclide, spacing, medium, half
    width, grid shape). Kernels: :func:`twin.dosimetry.kernels.dose_kernel`.
    """
    from pbpk_models.radionuclides import normalise_nuclide
    from twin.dosimetry.kernels import _check_spacing, database_nuclide, dose_kernel

    name = normalise_nuclide(nuclide)
    sp = tuple(round(s, 6) for s in _check_spacing(spacing_mm))
    hw = None if half_width is None else tuple(int(h) for h in np.broadcast_to(half_width, 3))
    v = _check_volumes(tia_mbq_h)
    grid = tuple(int(n) for n in v.shape[-3:])
    if database_nuclide(name) is None:
        # Local deposition: a 1 x 1 x 1 kernel is a scale factor; no FFT (and no round-off).
        k = float(dose_kernel(name, sp, medium, hw)[0, 0, 0])
        return (v.astype(jnp.float32) * jnp.float32(k)).astype(jnp.float32)
    kf, fshape = KERNEL_FFT_CACHE.get((name, sp, medium, hw), grid,
                                      lambda: dose_kernel(name, sp, medium, hw))
    return _convolve_with_fft(v.astype(jnp.float32), kf, fshape, grid, nonnegative=True)
