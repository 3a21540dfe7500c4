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
    need = (256 + 5, 128 + 6, 300 + 6)
    # complex axes (z, y): 11-smooth; the real-FFT axis (x): 5-smooth (pocketfft's radices)
    primes = ((2, 3, 5, 7, 11), (2, 3, 5, 7, 11), (2, 3, 5))
    for n, nd, pr in zip(fs, need, primes):
        assert n >= nd
        assert C.next_smooth(n, pr) == n
        # minimal: no fast length between the need and the choice
        assert C.next_smooth(nd, pr) == n
    assert C.fft_shape((256,) * 3, (31,) * 3) == (275, 275, 288)  # 5^2 x 11, 2^5 x 3^2


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


# --- the JAX primitive: compiled path, differentiation, vmap -----------------------------------

def _small_case(seed=5, shape=(7, 8, 9)):
    rng = np.random.default_rng(seed)
    x = rng.random(shape).astype(np.float32)
    k = rng.random((3, 5, 3))  # asymmetric: exercises the complex kernel FFT and its adjoint
    return x, k


def test_compiled_path_equals_host_path_and_direct():
    import jax
    x, k = _small_case()
    ref = scipy.ndimage.convolve(x.astype(np.float64), k, mode="constant")
    eager = np.asarray(C.convolve_fft(x, k))
    jitted = np.asarray(jax.jit(lambda v: C.convolve_fft(v, k))(jnp.asarray(x)))
    for out in (eager, jitted):
        assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))
    kf, fs = C.kernel_fft(k, x.shape)
    # without the host view the kernel FFT goes to the callback as an operand: same numbers
    op = np.asarray(jax.jit(lambda v: C.fft_convolve_linear(v, kf, fs))(x))
    assert np.allclose(op, jitted, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_transpose_is_correlation_and_grad_matches_finite_differences():
    import jax
    x, k = _small_case()
    kf, fs = C.kernel_fft(k, x.shape)
    rng = np.random.default_rng(9)
    w = rng.random(x.shape).astype(np.float32)

    def f(v):
        return jnp.sum(C.fft_convolve_linear(v, kf, fs) * w)

    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x)), np.float64)
    # d/dx sum(w * (x conv k)) = w correlated with k = w convolved with the reflected kernel
    ref = scipy.ndimage.correlate(w.astype(np.float64), k, mode="constant")
    assert np.max(np.abs(g - ref)) <= 1e-5 * np.abs(ref).max()
    # central finite difference along a random direction (f is linear: exact up to round-off)
    d = rng.standard_normal(x.shape).astype(np.float32)
    fd = (float(f(x + d)) - float(f(x - d))) / 2.0
    assert abs(fd - float(np.sum(g * d))) <= 1e-3 * abs(fd)
    # forward mode: the JVP is the convolution of the tangent
    _, t = jax.jvp(lambda v: C.fft_convolve_linear(v, kf, fs), (jnp.asarray(x),),
                   (jnp.asarray(d),))
    tref = scipy.ndimage.convolve(d.astype(np.float64), k, mode="constant")
    assert np.max(np.abs(np.asarray(t) - tref)) <= 1e-5 * np.abs(tref).max()


def test_vmap_and_kernel_is_not_differentiable():
    import jax
    x, k = _small_case()
    kf, fs = C.kernel_fft(k, x.shape)
    xs = np.stack([x, 2 * x, x[::-1].copy()])
    vm = np.asarray(jax.vmap(lambda v: C.fft_convolve_linear(v, kf, fs), in_axes=1,
                             out_axes=0)(jnp.moveaxis(jnp.asarray(xs), 0, 1)))
    ref = np.stack([scipy.ndimage.convolve(v.astype(np.float64), k, mode="constant")
                    for v in xs])
    assert np.max(np.abs(vm - ref)) <= 1e-5 * np.abs(ref).max()
    with pytest.raises(NotImplementedError, match="kernel"):
        jax.jvp(lambda kk: C._CONV_P.bind(jnp.asarray(x), kk, fshape=fs, adjoint=False,
                                           nonnegative=False, host_kernel=None),
                (kf,), (jnp.ones_like(kf),))


def test_dose_is_nonnegative_and_differentiable_under_jit():
    import jax
    rng = np.random.default_rng(2)
    tia = (rng.random((9, 10, 8)) * (rng.random((9, 10, 8)) > 0.7)).astype(np.float32)
    sp = (4.42, 4.42, 4.8)
    eager = C.convolve_dose(tia, "Lu-177", sp)
    assert eager.min() >= 0.0
    traced = jax.jit(lambda t: C.convolve_dose(t, "Lu-177", sp))(jnp.asarray(tia))
    assert np.allclose(np.asarray(traced), eager, rtol=0, atol=1e-6 * eager.max())
    # mean dose in a voxel set is linear in the TIA: its gradient is the correlated mask
    mask = np.zeros(tia.shape, np.float32)
    mask[3:6, 4:7, 2:5] = 1.0
    g = jax.grad(lambda t: jnp.sum(C.convolve_dose(t, "Lu-177", sp) * mask))(jnp.asarray(tia))
    k = voxel_s_values("Lu-177", sp)
    from twin.dosimetry.kernels import MGY_PER_MBQ_S_TO_GY_PER_MBQ_H
    ref = scipy.ndimage.correlate(mask.astype(np.float64), k * MGY_PER_MBQ_S_TO_GY_PER_MBQ_H,
                                  mode="constant")
    assert np.max(np.abs(np.asarray(g) - ref)) <= 1e-5 * ref.max()


def test_accelerator_lowering_matches_direct():
    # The GPU/TPU lowering (jnp.fft) cannot be selected on a CPU-only machine; its body is a
    # pure jnp function, checked here directly (forward, adjoint, batched) on the CPU.
    import jax
    x, k = _small_case()
    kf, fs = C.kernel_fft(k, x.shape)
    xs = np.stack([x, 3 * x])

    def run(v, adjoint):
        return np.asarray(jax.jit(lambda a: C._xla_impl(a, kf, fshape=fs, adjoint=adjoint,
                                                        nonnegative=False,
                                                        host_kernel=None))(v))

    fwd = run(xs, False)
    adj = run(x, True)
    for i, v in enumerate(xs):
        ref = scipy.ndimage.convolve(v.astype(np.float64), k, mode="constant")
        assert np.max(np.abs(fwd[i] - ref)) <= 1e-5 * np.abs(ref).max()
    ref = scipy.ndimage.correlate(x.astype(np.float64), k, mode="constant")
    assert np.max(np.abs(adj - ref)) <= 1e-5 * np.abs(ref).max()
