"""FFT convolution against scipy.ndimage.convolve (direct), batching and the kernel cache."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from twin.dosimetry import convolve as C
from twin.dosimetry.kernels import voxel_s_values


@pytest.mark.parametrize("shape", [(9, 10, 11), (12, 8, 7), (16, 16, 16), (5, 6, 4)])
@pytest.mark.parametrize("spacing", [(4.42, 4.42, 4.8), (2.4, 3.0, 6.0), (4.0, 4.0, 4.0)])
def test_fft_equals_direct_convolution(shape, spacing):
    rng = np.random.default_rng(abs(hash((shape, spacing))) % 2**32)
    x = rng.random(shape) * (rng.random(shape) > 0.5)
    k = voxel_s_values("Lu-177", spacing)
    ref = scipy.ndimage.convolve(x, k, mode="constant", cval=0.0)
    out = C.convolve_fft(x, k)
    assert out.dtype == jnp.float32 and out.shape == shape
    assert np.max(np.abs(np.asarray(out, np.float64) - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_no_wraparound_at_edges():
    # A source in a corner voxel must give no dose at the opposite side.
    x = np.zeros((8, 9, 10))
    x[0, 0, 0] = 1.0
    k = voxel_s_values("Y-90", 2.21)
    out = np.asarray(C.convolve_fft(x, k))
    assert np.abs(out[6:, :, :]).max() <= 1e-6 * float(out.max())
    ref = scipy.ndimage.convolve(x, k, mode="constant")
    assert np.allclose(out, ref, atol=1e-5 * ref.max())


def test_fft_shape_is_fast_and_large_enough():
    fs = C.fft_shape((256, 128, 300), (11, 13, 13))
    assert fs[0] >= 256 + 5 and fs[1] >= 128 + 6 and fs[2] >= 300 + 6
    for n, need in zip(fs, (261, 134, 306)):
        m = n
        for p in (2, 3, 5, 7, 11):
            while m % p == 0:
                m //= p
        assert m == 1
        # minimal: no 11-smooth length between the need and the choice
        assert all(C.next_smooth(L) > L for L in range(need, n))
    assert C.fft_shape((256,) * 3, (31,) * 3) == (275,) * 3  # 5^2 x 11


def test_symmetric_kernel_fft_is_stored_real():
    k = voxel_s_values("Lu-177", (4.42, 4.42, 4.8))
    fs = (16, 18, 20)
    kf = C._kernel_fft_np(k, fs)
    assert kf.dtype == jnp.float32 and kf.shape == (16, 18, 11)
    padded = np.pad(k, [(0, f - n) for f, n in zip(fs, k.shape)])
    full = np.fft.rfftn(np.roll(padded, tuple(-(n // 2) for n in k.shape), axis=(0, 1, 2)))
    assert np.abs(full.imag).max() < 1e-6 * np.abs(full).max()
    assert np.allclose(np.asarray(kf), full.real, rtol=1e-5, atol=1e-6 * np.abs(full).max())
    asym = np.zeros((3, 3, 3))
    asym[0, 1, 1] = 1.0
    assert C._kernel_fft_np(asym, (8, 8, 8)).dtype == jnp.complex64


def test_batch_equals_one_at_a_time_and_cache_hits():
    rng = np.random.default_rng(3)
    vols = rng.random((3, 10, 11, 12)).astype(np.float32)
    C.KERNEL_FFT_CACHE.clear()
    misses = C.KERNEL_FFT_CACHE.misses
    batch = np.asarray(C.convolve_dose(vols, "Lu-177", (4.42, 4.42, 4.8)))
    singles = np.stack([np.asarray(C.convolve_dose(v, "Lu-177", (4.42, 4.42, 4.8)))
                        for v in vols])
    assert C.KERNEL_FFT_CACHE.misses == misses + 1  # one kernel FFT for all four calls
    assert np.allclose(batch, singles, rtol=1e-6, atol=1e-7 * batch.max())
    assert batch.dtype == np.float32
