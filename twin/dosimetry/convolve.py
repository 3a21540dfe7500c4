"""FFT convolution of time-integrated activity with a voxel S-value kernel (JAX, float32).

dose(x) = sum_y TIA(y) S(x - y): a linear convolution, computed as a real FFT product. Zero
padding: each axis is padded to a fast FFT length L >= n + h (n voxels, h kernel half-width),
which is enough for no circular wrap-around (a kernel offset d in [-h, h] and a voxel pair at
distance |x - y| <= n - 1 can only alias when L <= n + h - 1). Fast lengths are those of
``scipy.fft.next_fast_len`` (pocketfft): 2-3-5-smooth for the real-input (last) axis, whose
real transform has radix 2, 3, 4, 5 passes, and 2-3-5-7-11-smooth for the two complex axes
(256 + 15 -> 288 on the last axis and 275 = 5^2 x 11 on the others).

The kernel's FFT is computed once per (kernel, grid shape) and cached. Dose kernels are
point-symmetric (S(-R) = S(R)), so their FFT is real: it is stored as float32 (half the memory
of complex64). Per volume, a convolution is then two FFTs (forward of the TIA, inverse of the
product), where ``scipy.signal.fftconvolve`` does three (it also transforms the kernel).

Backends (the numbers are the same up to float32 round-off, about 1e-6 of the maximum)
------------------------------------------------------------------------------------
The convolution is one JAX primitive, ``twin_fft_convolve``, lowered per platform:

* CPU: XLA's CPU FFT (ducc0) runs on one thread (NOTES.md: it "barely uses the second
  core"). The CPU lowering therefore calls ``scipy.fft`` (pocketfft, multi-threaded with
  ``workers``) through ``jax.pure_callback`` inside the compiled function. The transforms are
  pruned: the forward transform runs axis by axis (x, then y, then z), each only over the rows
  that are not all zero padding, and the inverse crops each axis right after transforming it,
  so no padded copy of the volume is ever made and the last two inverse passes only touch the
  ``nz`` (then ``nz x ny``) planes that are kept. A batch of volumes is spread over the cores,
  one volume per thread with single-threaded FFTs (no synchronisation between passes, and the
  spectrum product and crops, single-threaded numpy work, also run in parallel).
* GPU/TPU (any other platform): ``jnp.fft.rfftn``/``irfftn`` (cuFFT), unchanged, batches
  mapped sequentially (``lax.map``) to keep the working set at one volume. Nothing here assumes
  or prevents a GPU: the choice is made by XLA when the function is lowered for the device the
  data is on.

Differentiation and transformations: the primitive is linear in the volume, so it has a JVP
(the same convolution of the tangent) and a transpose (correlation with the kernel, i.e. the
convolution with the point-reflected kernel, whose FFT is the complex conjugate: for the real
FFT of a symmetric dose kernel the transpose is the convolution itself). Hence ``jax.grad``,
``jax.jvp``, ``jacfwd``/``jacrev``, ``vmap`` and ``jit`` all work, on every backend. The kernel
is physics data, not a parameter: differentiating with respect to the kernel FFT raises
(``NotImplementedError``) rather than returning a silent zero.

``nonnegative`` (used for dose): negative FFT round-off (about 1e-7 of the maximum) is clipped
to zero in the primal output. Tangents and cotangents are those of the exact (unclipped) linear
map: the clipped values are round-off of a quantity that is exactly >= 0.

All arithmetic is float32 / complex64, set explicitly (the tests run with JAX x64 enabled);
float32 agrees with float64 to about 5e-6 relative (NOTES.md).
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from twin.errors import InputError


def _default_workers() -> int:
    """Threads for the CPU FFTs: ``TWIN_FFT_WORKERS`` if set, else the CPUs this process may use."""
    env = os.environ.get("TWIN_FFT_WORKERS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise InputError(f"TWIN_FFT_WORKERS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise InputError(f"TWIN_FFT_WORKERS must be a positive integer, got {env!r}")
        return n
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


FFT_WORKERS = _default_workers()


def next_smooth(n: int, primes=(2, 3, 5, 7, 11)) -> int:
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
    """Padded FFT lengths per axis (z, y, x): the smallest fast L >= n + h (and >= kernel size).

    x (the real-FFT axis): ``scipy.fft.next_fast_len(., real=True)`` (2-3-5-smooth); z, y
    (complex FFTs): ``scipy.fft.next_fast_len(.)`` (2-3-5-7-11-smooth).
    """
    if len(grid_shape) != 3 or len(kernel_shape) != 3:
        raise InputError(f"need 3-D grid and kernel shapes, got {tuple(grid_shape)} and "
                         f"{tuple(kernel_shape)}")
    out = []
    for axis, (n, k) in enumerate(zip(grid_shape, kernel_shape)):
        if k % 2 != 1:
            raise InputError(f"kernel sizes must be odd (centred kernel), "
                             f"got {tuple(kernel_shape)}")
        need = max(int(n) + k // 2, int(k))
        out.append(scipy.fft.next_fast_len(need, real=(axis == 2)))
    return tuple(out)


def _kernel_fft_host(kernel: np.ndarray, fshape: tuple) -> np.ndarray:
    """rfftn of the kernel placed with its centre at index 0 (negative offsets wrapped), numpy.

    A point-symmetric kernel (k(-d) = k(d), every dose kernel) has a real FFT: returned as
    float32. Otherwise complex64. Computed in float64 by scipy's pocketfft (once per cache
    entry), then rounded.
    """
    k = np.asarray(kernel, dtype=np.float64)
    padded = np.zeros(fshape, dtype=np.float64)
    padded[tuple(slice(0, s) for s in k.shape)] = k
    padded = np.roll(padded, tuple(-(s // 2) for s in k.shape), axis=(0, 1, 2))
    f = scipy.fft.rfftn(padded, workers=FFT_WORKERS)
    if np.array_equal(k, k[::-1, ::-1, ::-1]):
        return np.ascontiguousarray(f.real, dtype=np.float32)
    return np.ascontiguousarray(f, dtype=np.complex64)


def _kernel_fft_np(kernel: np.ndarray, fshape: tuple) -> jax.Array:
    """:func:`_kernel_fft_host` as a jax.Array."""
    return jnp.asarray(_kernel_fft_host(kernel, fshape))


# ---------------------------------------------------------------------------------------------
# Host (CPU) implementation: pocketfft through scipy.fft, pruned, threaded over volumes.

class HostKernel:
    """A host (numpy) view of a kernel FFT, hashed by identity.

    Passed as a static parameter of the primitive so that the CPU callback reads the kernel FFT
    directly instead of receiving it as a 40 MB operand copied at every call (256^3 grid).
    """

    __slots__ = ("array", "__weakref__")

    def __init__(self, array):
        self.array = np.asarray(array)

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other


_POOL: ThreadPoolExecutor | None = None


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers != n:  # noqa: SLF001 (the pool's own size)
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="twin-fft")
    return _POOL


def _split(fn, n: int, workers: int) -> None:
    """Run fn(slice) over ``workers`` contiguous chunks of range(n) in the thread pool.

    numpy releases the GIL in elementwise operations and copies, so the spectrum product and
    the final crop, otherwise single-threaded, use every core for a single volume.
    """
    if workers <= 1 or n < 2 * workers:
        fn(slice(0, n))
        return
    edges = np.linspace(0, n, workers + 1).astype(int)
    futures = [_pool(workers).submit(fn, slice(a, b)) for a, b in zip(edges[:-1], edges[1:])]
    for fu in futures:
        fu.result()


def _host_one(x: np.ndarray, kf: np.ndarray, fshape: tuple, nonnegative: bool,
              out: np.ndarray, workers: int) -> None:
    """One volume: out[...] = crop(irfftn(rfftn(pad(x)) * kf)), pruned axis by axis."""
    nz, ny, nx = x.shape
    lz, ly, lx = fshape
    f = scipy.fft.rfft(x, n=lx, axis=2, workers=workers)                    # (nz, ny, lx//2+1)
    f = scipy.fft.fft(f, n=ly, axis=1, workers=workers, overwrite_x=True)   # (nz, ly, .)
    f = scipy.fft.fft(f, n=lz, axis=0, workers=workers, overwrite_x=True)   # (lz, ly, .)

    def mul(sl):
        f[sl] *= kf[sl]

    _split(mul, lz, workers)
    f = scipy.fft.ifft(f, axis=0, workers=workers, overwrite_x=True)[:nz]
    f = scipy.fft.ifft(f, axis=1, workers=workers, overwrite_x=True)[:, :ny]
    y = scipy.fft.irfft(f, n=lx, axis=2, workers=workers)

    def crop(sl):
        if nonnegative:
            np.maximum(y[sl, :, :nx], 0.0, out=out[sl])
        else:
            out[sl] = y[sl, :, :nx]

    _split(crop, nz, workers)


def host_convolve(x, kf, *, fshape, adjoint=False, nonnegative=False) -> np.ndarray:
    """The CPU implementation on numpy arrays (also the body of the CPU callback).

    x (..., nz, ny, nx) float32; kf (lz, ly, lx//2+1) float32 or complex64, the kernel's rfftn
    on ``fshape``. Returns a new float32 numpy array of x's shape. Several volumes are spread
    over ``FFT_WORKERS`` threads, one volume each; a single volume uses multi-threaded FFTs.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    kf = np.asarray(kf)
    if adjoint and np.iscomplexobj(kf):
        kf = np.conj(kf)
    grid = x.shape[-3:]
    out = np.empty(x.shape, dtype=np.float32)
    xs = x.reshape((-1,) + grid)
    outs = out.reshape((-1,) + grid)
    nb = xs.shape[0]
    workers = FFT_WORKERS
    if nb == 1 or workers == 1:
        for i in range(nb):
            _host_one(xs[i], kf, fshape, nonnegative, outs[i], workers)
        return out
    # Several volumes: one per thread, single-threaded FFTs (pocketfft releases the GIL).
    futures = [_pool(workers).submit(_host_one, xs[i], kf, fshape, nonnegative, outs[i], 1)
               for i in range(nb)]
    for fu in futures:
        fu.result()
    return out


def _cpu_impl(x, kf, *, fshape, adjoint, nonnegative, host_kernel):
    out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    if host_kernel is not None:
        def cb(v):
            return host_convolve(v, host_kernel.array, fshape=fshape, adjoint=adjoint,
                                 nonnegative=nonnegative)
        return jax.pure_callback(cb, out, x, vmap_method="expand_dims")

    def cb2(v, k):
        return host_convolve(v, k, fshape=fshape, adjoint=adjoint, nonnegative=nonnegative)
    return jax.pure_callback(cb2, out, x, kf, vmap_method="expand_dims")


# ---------------------------------------------------------------------------------------------
# Device (GPU/TPU) implementation: XLA's FFT (cuFFT on GPU).

def _xla_impl(x, kf, *, fshape, adjoint, nonnegative, host_kernel):
    del host_kernel
    nz, ny, nx = x.shape[-3:]
    k = jnp.conj(kf) if (adjoint and jnp.iscomplexobj(kf)) else kf

    def one(v):
        f = jnp.fft.rfftn(v.astype(jnp.float32), s=fshape, axes=(-3, -2, -1))  # zero-pads
        y = jnp.fft.irfftn(f * k, s=fshape, axes=(-3, -2, -1))[:nz, :ny, :nx]
        if nonnegative:
            y = jnp.maximum(y, 0.0)
        return y.astype(jnp.float32)

    if x.ndim == 3:
        return one(x)
    lead = x.shape[:-3]
    return jax.lax.map(one, x.reshape((-1, nz, ny, nx))).reshape(lead + (nz, ny, nx))


# ---------------------------------------------------------------------------------------------
# The primitive: linear in x, with JVP, transpose and batching rules.

def _make_primitive():
    from jax.extend.core import Primitive
    from jax.interpreters import ad, batching, mlir

    p = Primitive("twin_fft_convolve")

    def abstract_eval(x, kf, **params):
        return jax.core.ShapedArray(x.shape, jnp.float32)

    p.def_abstract_eval(abstract_eval)
    # Eager calls: compile the primitive alone (lowered for the data's platform).
    p.def_impl(lambda x, kf, **params: _jitted_bind(x, kf, **params))
    mlir.register_lowering(p, mlir.lower_fun(_xla_impl, multiple_results=False))
    mlir.register_lowering(p, mlir.lower_fun(_cpu_impl, multiple_results=False), platform="cpu")

    def jvp(primals, tangents, **params):
        x, kf = primals
        tx, tk = tangents
        if type(tk) is not ad.Zero:
            raise NotImplementedError("twin_fft_convolve is not differentiable with respect to "
                                      "the kernel (fixed physics data); differentiate with "
                                      "respect to the activity volume only")
        y = p.bind(x, kf, **params)
        if type(tx) is ad.Zero:
            return y, ad.Zero.from_primal_value(y)
        return y, p.bind(tx, kf, **{**params, "nonnegative": False})

    def transpose(ct, x, kf, **params):
        if ad.is_undefined_primal(kf):
            raise NotImplementedError("twin_fft_convolve: no transpose with respect to the "
                                      "kernel")
        if type(ct) is ad.Zero:
            return [None, None]
        return [p.bind(ct, kf, **{**params, "adjoint": not params["adjoint"],
                                  "nonnegative": False}), None]

    def batch(args, dims, **params):
        x, kf = args
        dx, dk = dims
        if dk is not None:
            raise NotImplementedError("twin_fft_convolve: batching over kernels is not "
                                      "supported; map over kernels in Python (one kernel FFT "
                                      "each)")
        return p.bind(jnp.moveaxis(x, dx, 0), kf, **params), 0

    ad.primitive_jvps[p] = jvp
    ad.primitive_transposes[p] = transpose
    batching.primitive_batchers[p] = batch
    return p


@functools.partial(jax.jit, static_argnames=("fshape", "adjoint", "nonnegative", "host_kernel"))
def _jitted_bind(x, kf, *, fshape, adjoint, nonnegative, host_kernel):
    return _CONV_P.bind(x, kf, fshape=fshape, adjoint=adjoint, nonnegative=nonnegative,
                        host_kernel=host_kernel)


_CONV_P = _make_primitive()


def _fshape_ok(kf, fshape):
    want = (fshape[0], fshape[1], fshape[2] // 2 + 1)
    if tuple(kf.shape) != want:
        raise InputError(f"kernel FFT shape {tuple(kf.shape)} does not match the FFT grid "
                         f"{fshape} (expected {want})")


def fft_convolve_linear(volumes, kernel_fft, fshape, *, nonnegative=False, adjoint=False,
                        host_kernel: HostKernel | None = None):
    """The convolution primitive: volumes (..., nz, ny, nx) -> float32 of the same shape.

    ``kernel_fft``: the kernel's rfftn on the padded grid ``fshape`` (:func:`kernel_fft`);
    ``adjoint=True`` convolves with the point-reflected kernel (correlation). Traceable
    (jit, grad, jvp, vmap) and differentiable in ``volumes``; the kernel is a constant.
    ``host_kernel``: optional host view of the same kernel FFT (:class:`HostKernel`) that the
    CPU callback reads instead of receiving the kernel FFT as an operand.
    """
    x = jnp.asarray(volumes)
    if x.ndim < 3:
        raise InputError(f"volumes must have at least 3 axes (z, y, x), got shape {x.shape}")
    if x.dtype != jnp.float32:
        x = x.astype(jnp.float32)
    fshape = tuple(int(n) for n in fshape)
    kf = jax.lax.stop_gradient(jnp.asarray(kernel_fft))
    _fshape_ok(kf, fshape)
    return _CONV_P.bind(x, kf, fshape=fshape, adjoint=bool(adjoint),
                        nonnegative=bool(nonnegative), host_kernel=host_kernel)


def kernel_fft(kernel, grid_shape, host: bool = False) -> tuple:
    """(kernel FFT as a jax.Array, fshape) of an odd-sized 3-D kernel for ``grid_shape`` volumes.

    With ``host=True``: (jax.Array, fshape, :class:`HostKernel` numpy copy for the CPU path).
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 3:
        raise InputError(f"kernel must be 3-D, got shape {kernel.shape}")
    fshape = fft_shape(grid_shape, kernel.shape)
    f = _kernel_fft_host(kernel, fshape)
    if host:
        return jnp.asarray(f), fshape, HostKernel(f)
    return jnp.asarray(f), fshape


@functools.partial(jax.jit, static_argnames=("fshape", "grid_shape", "nonnegative",
                                             "host_kernel"))
def _convolve_with_fft(volumes, kernel_fft, fshape, grid_shape, nonnegative=False,
                       host_kernel=None):
    """Pure, jitted: volumes (..., nz, ny, nx) float32 -> dose of the same shape."""
    del grid_shape  # implied by the volumes' shape; kept for the callers' signature
    return fft_convolve_linear(volumes, kernel_fft, fshape, nonnegative=nonnegative,
                               host_kernel=host_kernel)


class KernelFFTCache:
    """A small LRU cache of kernel FFTs keyed by (any hashable kernel key, grid shape).

    The key for dose kernels is (nuclide, spacing, medium, half width); the FFT also depends on
    the grid shape (through the padded FFT lengths). Entries: (kernel FFT jax.Array, fshape,
    HostKernel numpy copy of it for the CPU path).
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
        value = kernel_fft(np.asarray(make_kernel(), dtype=np.float32), full[1], host=True)
        self._d[full] = value
        if len(self._d) > self.maxsize:
            self._d.popitem(last=False)
        return value

    def clear(self):
        self._d.clear()


KERNEL_FFT_CACHE = KernelFFTCache()


def _eager_on_host(v) -> bool:
    """Concrete input whose computation would run on the CPU backend: skip the device.

    A concrete numpy array (or a jax.Array on a CPU device) is convolved by the host
    implementation directly: the same code the compiled CPU callback runs, without copying the
    volume into a device buffer and back (a callback copies its operand and its result).
    """
    if isinstance(v, jax.core.Tracer):
        return False
    if isinstance(v, jax.Array):
        try:
            return all(d.platform == "cpu" for d in v.devices())
        except Exception:  # noqa: BLE001 (deleted or exotic arrays: take the compiled path)
            return False
    return jax.default_backend() == "cpu"


def _check_volumes(volumes):
    if isinstance(volumes, (jax.Array, np.ndarray)):
        v = volumes
    else:
        v = np.asarray(volumes)
    if v.ndim < 3:
        raise InputError(f"volumes must have at least 3 axes (z, y, x), got shape {v.shape}")
    return v


def _run(v, kf, fshape, host, nonnegative):
    if _eager_on_host(v):
        return host_convolve(np.asarray(v), host.array, fshape=fshape, nonnegative=nonnegative)
    grid = tuple(int(n) for n in v.shape[-3:])
    return _convolve_with_fft(jnp.asarray(v, dtype=jnp.float32), kf, fshape, grid,
                              nonnegative=nonnegative, host_kernel=host)


def convolve_fft(volumes, kernel, kernel_key=None):
    """Linear ('same', zero outside) convolution of 3-D volumes with an odd-sized kernel.

    ``volumes``: (..., nz, ny, nx), any leading batch axes; ``kernel``: (kz, ky, kx), odd
    sizes, centre = zero offset. Returns float32 of the volumes' shape: a numpy array for
    concrete input on the CPU backend (computed on the host, no device round trip), a
    jax.Array under tracing (jit/grad/vmap) or on an accelerator. With ``kernel_key``
    (hashable), the kernel FFT is cached under (kernel_key, grid shape). Equivalent to
    ``scipy.ndimage.convolve(volume, kernel, mode='constant')``.
    """
    v = _check_volumes(volumes)
    grid = tuple(int(n) for n in v.shape[-3:])
    kernel = np.asarray(kernel)
    if kernel.ndim != 3:
        raise InputError(f"kernel must be 3-D, got shape {kernel.shape}")
    if kernel_key is None:
        kf, fshape, host = kernel_fft(kernel, grid, host=True)
    else:
        kf, fshape, host = KERNEL_FFT_CACHE.get(kernel_key, grid, lambda: kernel)
    return _run(v, kf, fshape, host, False)


def convolve_dose(tia_mbq_h, nuclide: str, spacing_mm, medium: str = "soft",
                  half_width=None):
    """Absorbed dose (Gy) from voxel TIA (MBq h per voxel) in a homogeneous medium.

    ``spacing_mm``: voxel edges in the order of the array axes (z, y, x for SimpleITK arrays).
    Leading batch axes allowed. The kernel FFT is cached per (nuclide, spacing, medium, half
    width, grid shape). Kernels: :func:`twin.dosimetry.kernels.dose_kernel`. Returns float32
    (numpy for concrete CPU input, jax.Array when traced; see :func:`convolve_fft`);
    differentiable with respect to the TIA under JAX transformations.
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
        if _eager_on_host(v):
            return np.asarray(v, dtype=np.float32) * np.float32(k)
        return (jnp.asarray(v, dtype=jnp.float32) * jnp.float32(k)).astype(jnp.float32)
    kf, fshape, host = KERNEL_FFT_CACHE.get((name, sp, medium, hw), grid,
                                            lambda: dose_kernel(name, sp, medium, hw))
    return _run(v, kf, fshape, host, True)
