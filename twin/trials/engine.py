"""Organ doses and BEDs of every virtual patient at every activity level, as one batched solve.

Rows = (patient, activity) pairs. Each row is solved by the organ dosimetry engine
:func:`twin.dosimetry.organ.organ_dosimetry_function` (the full PBPK model with saturable
binding, Rodas5P, TIA from the model's integral states, Lea-Catcheside BED on the dose-rate
curve inside the same jitted function). Rows are processed in fixed-size chunks (one compile;
tqdm progress bar when there is more than one chunk); within a chunk they are split over all
JAX devices with ``jax.shard_map`` on a ``Mesh`` with one ``"patients"`` axis (inputs placed with
``NamedSharding``); on one device the same code runs unsharded. Rows are independent, so the
results do not depend on the number of devices or the chunk size.

Cycles (``cycle_mode``):
- ``"full"``: all ``n_cycles`` administrations in one solve (carry-over of ligand and activity
  between cycles included); the per-cycle BEDs add up to the whole course's Lea-Catcheside BED.
- ``"superpose"`` (default for trials): one cycle is solved and the course's dose and BED are
  ``n_cycles`` x the cycle's. This is the planning engine's surrogate (``twin.planning.optimise``:
  cycles 6 weeks apart barely interact; 177Lu decays 6.3 half-lives in 6 weeks) and is 6x
  cheaper; ``benchmarks/bench_trials.py`` measures the difference against ``"full"``.

Doses are self-doses of the non-penetrating emissions in each region (the organ engine's
definition; photons and cross-dose neglected); the red marrow is the model's ``RedMarrow``
region (not the EANM blood method). Kidney BED uses alpha/beta 2.6 Gy and T_rep 2.8 h
(``twin.dosimetry.radiobiology.TISSUES``).

Units: activity GBq per cycle (MBq inside), dose Gy, BED Gy, time h.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from twin.errors import InputError, ModelError

LESIONS = ("Tumor1", "Tumor2", "TumorRest")
INTERVAL_WEEKS = 6.0   # VISION: 7.4 GBq every 6 weeks, up to 6 cycles (Sartor O et al., NEJM 2021)
N_CYCLES = 6
POINTS_PER_CYCLE = 32  # the planning engine's default grid (twin.planning.PlanSettings)
GROUPED_CHUNK = 256    # chunks from this size use block_groups=3 (measured: bench_blocks.py)


@dataclass(frozen=True)
class LevelDoses:
    """Per patient (rows) and activity level (columns), course totals unless named cycle 1.

    kidney_bed_gy, kidney_dose_gy, marrow_dose_gy, salivary_dose_gy, lesion_dose_gy (volume-
    weighted mean over the lesions, whole course), lesion_dose_c1_gy (same, cycle 1),
    ok (solver success); activities_gbq (L,) or (n, L) per cycle.
    """

    activities_gbq: np.ndarray
    kidney_bed_gy: np.ndarray
    kidney_dose_gy: np.ndarray
    marrow_dose_gy: np.ndarray
    salivary_dose_gy: np.ndarray
    lesion_dose_gy: np.ndarray
    lesion_dose_c1_gy: np.ndarray
    ok: np.ndarray
    n_cycles: int
    cycle_mode: str

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in (
            "kidney_bed_gy", "kidney_dose_gy", "marrow_dose_gy", "salivary_dose_gy",
            "lesion_dose_gy", "lesion_dose_c1_gy")}


def _mesh():
    import jax
    from jax.sharding import Mesh

    devs = jax.devices()
    return Mesh(np.array(devs), ("patients",)) if len(devs) > 1 else None


def _sharded(f, mesh):
    """``f`` over rows split across the mesh's devices (shard_map); unchanged on one device."""
    if mesh is None:
        return f
    import jax
    from jax.sharding import PartitionSpec as PS

    row = PS("patients")
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(row, row, row, row, PS(), PS()),
                                 out_specs=row, check_vma=False))


def solve_rows(model, P, hot, cold, *, n_cycles: int, interval_h: float, days: float = 60.0,
               points_per_cycle: int = POINTS_PER_CYCLE, chunk_size: int = 64,
               progress: bool = True, sharding: bool = True):
    """Per-row TIA (n, C, R) MBq h, dose (n, C, R) Gy, kidney BED (n, C) Gy and ok (n,).

    ``P`` (n, n_params); ``hot`` (n, C) labelled nmol and ``cold`` (n, C) unlabelled nmol per
    cycle of the model's (single) therapy radiopharmaceutical.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as PS

    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u
    from pbpk_models.model import require_x64
    from pbpk_models.simulate import POPULATION_SETTINGS
    from twin.dosimetry.organ import _mass_function, cycle_grid, organ_dosimetry_function
    from twin.dosimetry.radiobiology import tissue

    require_x64("virtual trials")
    if len(model.radiopharmaceuticals) != 1:
        raise InputError("the trial engine takes a model compiled for one radiopharmaceutical")
    n = P.shape[0]
    regions = tuple(model.regions)
    masses = _mass_function(model)(P)
    e = rn.energy_per_decay_mev(model.radiopharmaceuticals[0].nuclide)
    S = np.where(np.isfinite(masses), u.gy_per_mbq_h(e, 1.0) / np.where(
        np.isfinite(masses), masses, 1.0), 0.0)
    kid = tissue("kidney")
    mu = np.ones(len(regions))
    ik = regions.index("Kidney")
    mu[ik] = math.log(2.0) / kid.repair_half_time_h
    at = np.arange(n_cycles) * interval_h
    grid = cycle_grid(at, float(at[-1] + 24.0 * days), points_per_cycle)
    mesh = _mesh() if sharding else None
    n_dev = 1 if mesh is None else mesh.devices.size
    chunk = max(n_dev, min(chunk_size, n))
    chunk = int(math.ceil(chunk / n_dev) * n_dev)
    # large chunks are throughput-bound: organ blocks grouped by size pad less (1.19x the
    # throughput at 256 patients per chunk for twice the compile time, ~15 s more: worth it
    # from a few thousand patients; benchmarks/bench_blocks.py)
    settings = POPULATION_SETTINGS if chunk < GROUPED_CHUNK else dataclasses.replace(
        POPULATION_SETTINGS, block_groups=3)
    f = organ_dosimetry_function(model, n_cycles, points_per_cycle, settings, 0)
    g = _sharded(f, mesh)
    n_pad = int(math.ceil(n / chunk) * chunk)
    pad = n_pad - n

    def padded(a):
        a = np.asarray(a, dtype=np.float64)
        return np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a

    Pp, Sp = padded(P), padded(S)
    Hp, Cp = padded(hot)[..., None], padded(cold)[..., None]
    put = (lambda a: jax.device_put(a, NamedSharding(mesh, PS("patients")))) if mesh is not None \
        else jnp.asarray
    tia = np.empty((n_pad, n_cycles, len(regions)))
    z = np.empty_like(tia)
    ok = np.empty(n_pad, dtype=bool)
    starts = range(0, n_pad, chunk)
    if progress and len(starts) > 1:
        from tqdm import tqdm

        starts = tqdm(starts, desc="virtual patients", unit="chunk", leave=False)
    for s in starts:
        sl = slice(s, s + chunk)
        out = g(put(Pp[sl]), put(Hp[sl]), put(Cp[sl]), put(Sp[sl]), jnp.asarray(grid),
                jnp.asarray(mu))
        tia[sl] = np.asarray(out["tia"])
        z[sl] = np.asarray(out["z"])
        ok[sl] = np.asarray(out["ok"])
    tia, z, ok = tia[:n], z[:n], ok[:n]
    ok &= np.all(np.isfinite(tia), axis=(1, 2))
    dose = np.where(np.isfinite(masses)[:, None, :], tia * S[:, None, :], np.nan)
    bed_k = dose[:, :, ik] + z[:, :, ik] / kid.alpha_beta_gy
    return {"tia": tia, "dose": dose, "kidney_bed": bed_k, "ok": ok, "regions": regions,
            "masses": masses}


def nmol_per_cycle(model, activity_mbq):
    """(labelled, unlabelled) nmol of the model's radiopharmaceutical for activities (MBq), with
    the typical ligand amount per GBq (``pbpk_models.regimen.typical_ligand_nmol``)."""
    from pbpk_models.regimen import typical_ligand_nmol

    rp = model.radiopharmaceuticals[0].name
    a = np.asarray(activity_mbq, dtype=np.float64)
    per_gbq = typical_ligand_nmol(rp, 1000.0)
    if per_gbq is None:
        raise InputError(f"no typical ligand amount per GBq is known for {rp}")
    hot = a / float(model.mbq_per_nmol[0])
    total = per_gbq * a / 1000.0
    return hot, np.maximum(total - hot, 0.0)


def level_doses(population, activities_gbq, *, n_cycles: int | None = None,
                interval_weeks: float | None = None, cycle_mode: str = "superpose",
                points_per_cycle: int = POINTS_PER_CYCLE, chunk_size: int = 64,
                progress: bool = True, sharding: bool = True) -> LevelDoses:
    """Course doses of every patient of ``population`` at every activity per cycle.

    ``activities_gbq``: (L,) levels shared by all patients, or (n, L) per patient (e.g. the
    dosimetry-guided arm, L = 1). ``n_cycles`` and ``interval_weeks`` default to the
    population's schedule (mcrpc: 6 every 6 weeks; net: 4 every 8 weeks). Raises ModelError if
    every solve fails.
    """
    if n_cycles is None:
        n_cycles = int(getattr(population, "n_cycles", N_CYCLES))
    if interval_weeks is None:
        interval_weeks = float(getattr(population, "interval_weeks", INTERVAL_WEEKS))
    if cycle_mode not in ("superpose", "full"):
        raise InputError(f"cycle_mode must be 'superpose' or 'full', not {cycle_mode!r}")
    if not isinstance(n_cycles, int) or n_cycles < 1:
        raise InputError(f"n_cycles must be a positive integer, got {n_cycles!r}")
    model, P = population.model, population.params
    n = P.shape[0]
    A = np.asarray(activities_gbq, dtype=np.float64)
    if A.ndim == 1:
        A = np.broadcast_to(A, (n, A.size))
    if A.shape[0] != n or not np.all(np.isfinite(A)) or np.any(A <= 0):
        raise InputError("activities must be positive numbers of GBq, one set per patient or "
                         "one shared set")
    L = A.shape[1]
    C = n_cycles if cycle_mode == "full" else 1
    hot, cold = nmol_per_cycle(model, A.reshape(-1) * 1000.0)
    rows_P = np.repeat(P, L, axis=0)
    res = solve_rows(model, rows_P, np.repeat(hot[:, None], C, axis=1),
                     np.repeat(cold[:, None], C, axis=1), n_cycles=C,
                     interval_h=interval_weeks * 7 * 24.0, points_per_cycle=points_per_cycle,
                     chunk_size=chunk_size, progress=progress, sharding=sharding)
    if not res["ok"].any():
        raise ModelError("the ODE solve failed for every virtual patient")
    regions = res["regions"]
    factor = n_cycles if cycle_mode == "superpose" else 1
    dose, bed = res["dose"], res["kidney_bed"]
    lesion_idx = [regions.index(r) for r in LESIONS if r in regions]
    m = res["masses"][:, lesion_idx]
    w = m / m.sum(axis=1, keepdims=True)
    les_c = (dose[:, :, lesion_idx] * w[:, None, :]).sum(axis=2)      # (rows, C)

    def shape(x):
        return np.asarray(x).reshape(n, L)

    return LevelDoses(
        activities_gbq=np.asarray(activities_gbq, dtype=np.float64),
        kidney_bed_gy=shape(bed.sum(axis=1) * factor),
        kidney_dose_gy=shape(dose[:, :, regions.index("Kidney")].sum(axis=1) * factor),
        marrow_dose_gy=shape(dose[:, :, regions.index("RedMarrow")].sum(axis=1) * factor),
        salivary_dose_gy=shape(dose[:, :, regions.index("SG")].sum(axis=1) * factor),
        lesion_dose_gy=shape(les_c.sum(axis=1) * factor),
        lesion_dose_c1_gy=shape(les_c[:, 0]),
        ok=shape(res["ok"]), n_cycles=n_cycles, cycle_mode=cycle_mode)
