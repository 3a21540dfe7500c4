"""Lesion response between cycles: the receptor amount of a lesion in cycle k+1 after the dose of
cycle k (optional; ``lesion_response=None`` everywhere keeps the planner exactly as without it).

Why: the field reports that the tumour absorbed dose per administered activity falls over the
cycles. For 177Lu-DOTATATE, Roth D et al. Dosimetric quantities in neuroendocrine tumors over
treatment cycles with 177Lu-DOTATATE. J Nucl Med 2022;63(3):399 (PMC8978188) (41 patients, 182
lesions >= 8 cm3, 880 lesion-cycle dose assessments, linear mixed-effect models; abstract): the
tumour absorbed dose decreased by 6% per cycle in grade-1 and 14% per cycle in grade-2 NETs (P <
0.05), the absorbed-dose rate and the activity concentration on day 1 decreased by similar
amounts, the effective half-times varied less, and grade-2 tumour volumes decreased. No per-cycle
rate for 177Lu-PSMA-617 (nor any dose-response parameter mapping a lesion's dose to its receptor
loss) could be verified in the sources searched, so there is no PSMA default.

Two models, both pure numpy, vectorised over (rows = MAP + posterior samples, lesions); only
the cycles are a loop (a few):

* :class:`PerCycleDecrease` (empirical; ``rate``): the receptor density of every lesion is
  multiplied by (1 - rate) at each new cycle, whatever the dose. Presets ``roth2022-g1``
  (rate 0.06) and ``roth2022-g2`` (0.14) carry Roth et al. 2022. Mapping: the paper's activity
  concentration on day 1 fell like the dose while T_eff changed less, so the decrease is put on
  the receptor density ``Rden_<lesion>`` (uptake per volume) at constant volume. Assumptions,
  stated: the "% per cycle" is read as a relative (multiplicative) rate - a linear reading gives
  1 - 3r instead of (1 - r)^3 at cycle 4 (0.58 vs 0.64 for 14%); the lesion's dose per GBq is
  proportional to its receptor density only while binding is far from saturation (the PBPK model
  keeps the saturation, so the simulated drop can be smaller than ``rate``).
* :class:`LQRegression` (mechanistic; every parameter from the user, no defaults): the lesion
  is a population of receptor-expressing clonogenic cells (fraction v of the initial number)
  and doomed cells (d) that have lost function and are cleared. Cycle k's delivered lesion BED
  (``bed_gy`` when the lesion has a repair half-time, e.g. ``--repair-half-time Tumor1=H``;
  otherwise its absorbed dose, i.e. the alpha term only) kills cells with the linear-quadratic
  survival S = exp(-alpha BED) (BED = D (1 + G D / (alpha/beta)); Dale RG, Br J Radiol
  1985;58:515-528). Over the interval dt to the next cycle, doomed cells are cleared
  exponentially with half-time ``clearance_half_time_h`` (counted from the administration) and
  survivors regrow with ``doubling_time_h`` (None: no repopulation):
  ``v' = v S 2^(dt/T_d)``, ``d' = (d + v (1 - S)) 2^(-dt/T_c)``. Receptors are carried by the
  clonogenic cells only (assumption), so at the next cycle the receptor amount is v' (of the
  initial), the lesion volume v' + d', and the receptor density v' / (v' + d'):
  ``Rden_<lesion>`` x v'/(v'+d'), ``V_<lesion>`` x (v'+d'). Dose per GBq falls as the density
  falls (doomed cells still occupy volume), and stays unchanged if dead cells vanish at once
  (T_c -> 0: the lesion only shrinks). Tested against a scipy integration of the cell
  population ODE with a mono-exponential dose rate (tests/twin/planning/test_response.py).
  No value of alpha, T_c or T_d for PSMA- or SSTR-expressing lesions could be verified in
  the sources searched, so there are no defaults: the user supplies alpha
  (1/Gy), T_c and T_d from their own source.

Validity: the twin's lesion parameters describe the lesion at the first simulated cycle (the
pre-therapy PET or cycle-1 SPECT it was fitted to); the response is applied from the second
simulated cycle on. Every cycle is then simulated on its own (60 days) with the adjusted
parameters, and the per-cycle doses summed (cycles six weeks apart barely interact: the
planner's surrogate assumes the same); organ doses change only through the sink effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twin.errors import InputError

ROTH_2022 = ("Roth D et al., Dosimetric quantities in neuroendocrine tumors over treatment cycles "
             "with 177Lu-DOTATATE, J Nucl Med 2022;63(3):399 (PMC8978188) "
             "(abstract: tumour absorbed dose -{pct}% per cycle, grade-{g} NETs)")


@dataclass(frozen=True)
class ResponseState:
    """Clonogenic (``viable``) and doomed (``doomed``) cell fractions of the initial number,
    arrays (rows, lesions)."""

    viable: np.ndarray
    doomed: np.ndarray

    @classmethod
    def initial(cls, n_rows: int, n_lesions: int) -> "ResponseState":
        return cls(np.ones((n_rows, n_lesions)), np.zeros((n_rows, n_lesions)))

    def factors(self):
        """(receptor-density factor, volume factor) on ``Rden_<lesion>`` and ``V_<lesion>``."""
        vol = self.viable + self.doomed
        return np.where(vol > 0, self.viable / np.where(vol > 0, vol, 1.0), 0.0), vol


def _check_positive(name, v, allow_none=False):
    if v is None and allow_none:
        return
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise InputError(f"lesion response: {name} must be a positive number, got {v!r}")


@dataclass(frozen=True)
class PerCycleDecrease:
    """Empirical: receptor density x (1 - rate) per cycle (see the module docstring)."""

    rate: float
    source: str = "user-given"
    radiopharmaceutical: str | None = None  # the one the source measured (None: any)

    def __post_init__(self):
        if not isinstance(self.rate, (int, float)) or not 0 <= self.rate < 1:
            raise InputError(f"lesion response: rate per cycle must be in [0, 1), got "
                             f"{self.rate!r}")

    def advance(self, state: ResponseState, dose_gy, bed_gy, dt_h: float) -> ResponseState:
        # doomed fraction grows so that the density v/(v+d) drops by (1 - rate) at constant volume
        v, d = state.viable, state.doomed
        vol = v + d
        v2 = v * (1.0 - self.rate)
        return ResponseState(v2, vol - v2)

    def describe(self) -> str:
        return f"per-cycle decrease {self.rate:g} ({self.source})"


@dataclass(frozen=True)
class LQRegression:
    """Mechanistic: LQ cell kill, clearance of doomed cells, optional regrowth (module docs)."""

    alpha_gy: float
    clearance_half_time_h: float
    doubling_time_h: float | None = None
    source: str = "user-given"
    radiopharmaceutical: str | None = None

    def __post_init__(self):
        _check_positive("alpha_gy (1/Gy)", self.alpha_gy)
        _check_positive("clearance_half_time_h", self.clearance_half_time_h)
        _check_positive("doubling_time_h", self.doubling_time_h, allow_none=True)

    def survival(self, dose_gy, bed_gy):
        """S = exp(-alpha BED), BED where finite, else the absorbed dose (alpha term only)."""
        dose = np.asarray(dose_gy, float)
        bed = np.asarray(bed_gy, float) if bed_gy is not None else np.full(dose.shape, np.nan)
        e = np.where(np.isfinite(bed), bed, dose)
        return np.exp(-self.alpha_gy * np.maximum(e, 0.0))

    def advance(self, state: ResponseState, dose_gy, bed_gy, dt_h: float) -> ResponseState:
        if not math.isfinite(dt_h) or dt_h < 0:
            raise InputError(f"lesion response: interval to the next cycle must be >= 0 h, got "
                             f"{dt_h}")
        S = self.survival(dose_gy, bed_gy)
        grow = 1.0 if self.doubling_time_h is None else 2.0 ** (dt_h / self.doubling_time_h)
        clear = 2.0 ** (-dt_h / self.clearance_half_time_h)
        v, d = state.viable, state.doomed
        return ResponseState(v * S * grow, (d + v * (1.0 - S)) * clear)

    def describe(self) -> str:
        td = "none" if self.doubling_time_h is None else f"{self.doubling_time_h:g} h"
        return (f"LQ regression alpha {self.alpha_gy:g}/Gy, clearance half-time "
                f"{self.clearance_half_time_h:g} h, doubling time {td} ({self.source})")


# Named models with their source (the only cited parameters found; 177Lu-DOTATATE).
PRESETS = {
    "roth2022-g1": PerCycleDecrease(0.06, ROTH_2022.format(pct=6, g=1), "lu177-dotatate"),
    "roth2022-g2": PerCycleDecrease(0.14, ROTH_2022.format(pct=14, g=2), "lu177-dotatate"),
}

_KEYS = {"per-cycle": {"rate"},
         "lq": {"alpha_gy", "clearance_half_time_h", "doubling_time_h"}}


def parse_lesion_response(text):
    """``None``/'' -> None; a preset name (:data:`PRESETS`); ``per-cycle:rate=R``; or
    ``lq:alpha_gy=A,clearance_half_time_h=H[,doubling_time_h=T]``. Objects pass through."""
    if text is None or isinstance(text, (PerCycleDecrease, LQRegression)):
        return text
    s = str(text).strip()
    if not s or s.lower() == "none":
        return None
    if s.lower() in PRESETS:
        return PRESETS[s.lower()]
    kind, _, rest = s.partition(":")
    kind = kind.strip().lower()
    usage = (f"--lesion-response takes a preset ({', '.join(PRESETS)}), "
             f"'per-cycle:rate=R' or 'lq:alpha_gy=A,clearance_half_time_h=H"
             f"[,doubling_time_h=T]'; got {text!r}")
    if kind not in _KEYS or not rest.strip():
        raise InputError(usage)
    kw = {}
    for item in rest.split(","):
        k, eq, v = item.partition("=")
        k = k.strip()
        if not eq or k not in _KEYS[kind]:
            raise InputError(f"{usage} (unknown or malformed {item.strip()!r})")
        try:
            kw[k] = float(v)
        except ValueError:
            raise InputError(f"{usage} ({k}={v.strip()!r} is not a number)") from None
    if kind == "per-cycle":
        if "rate" not in kw:
            raise InputError(f"{usage} (rate is required)")
        return PerCycleDecrease(kw["rate"])
    missing = {"alpha_gy", "clearance_half_time_h"} - set(kw)
    if missing:
        raise InputError(f"{usage} (missing {', '.join(sorted(missing))}: no cited default)")
    return LQRegression(kw["alpha_gy"], kw["clearance_half_time_h"], kw.get("doubling_time_h"))


def lesion_parameter_index(parameter_names, lesions):
    """Column indices of ``Rden_<lesion>`` and ``V_<lesion>`` in the parameter vectors."""
    names = list(parameter_names)
    out = []
    for key in ("Rden_", "V_"):
        miss = [r for r in lesions if key + r not in names]
        if miss:
            raise InputError(f"lesion response needs parameters {', '.join(key + r for r in miss)}"
                             f" in the model; they are missing")
        out.append(np.array([names.index(key + r) for r in lesions]))
    return tuple(out)


def scaled_params(P, state: ResponseState, rden_idx, v_idx):
    """Parameter vectors with the lesions' receptor density and volume scaled by the state."""
    rf, vf = state.factors()
    Pk = np.array(P, dtype=np.float64, copy=True)
    Pk[:, rden_idx] *= rf
    Pk[:, v_idx] *= vf
    return Pk


def run_cycles(one_cycle, P, activities_mbq, times_h, ligands_nmol, response, lesion_cols,
               rden_idx, v_idx, state: ResponseState | None = None):
    """Simulate cycles one by one, each with the lesion parameters of its response state.

    ``one_cycle(activity_mbq, ligand_nmol, P) -> OrganDoses`` of one cycle at t = 0 (rows of P);
    ``lesion_cols``: region columns of the lesions. Returns (OrganDoses with all cycles, list of
    the states at each cycle). The per-cycle dose of cycle k is the whole integral of its own
    administration (60 days), not the span to the next cycle.
    """
    import dataclasses

    n = np.asarray(P).shape[0]
    state = state or ResponseState.initial(n, len(lesion_cols))
    parts, states = [], []
    for k, (a, t) in enumerate(zip(activities_mbq, times_h)):
        states.append(state)
        lig = np.nan if ligands_nmol is None or k >= len(ligands_nmol) else ligands_nmol[k]
        d = one_cycle(float(a), lig, scaled_params(P, state, rden_idx, v_idx))
        parts.append(d)
        if k + 1 < len(times_h):
            state = response.advance(state, d.dose_gy[:, 0, lesion_cols],
                                     d.bed_gy[:, 0, lesion_cols], float(times_h[k + 1] - t))
    first = parts[0]
    cat = {key: np.concatenate([getattr(p, key) for p in parts], axis=1)
           for key in ("tia_mbq_h", "dose_gy", "bed_gy")}
    ok = np.logical_and.reduce([p.ok for p in parts])
    return dataclasses.replace(first, cycle_times_h=np.asarray(times_h, float),
                               activity_mbq=np.asarray(activities_mbq, float), ok=ok,
                               **cat), states


def search_factors(response, state0: ResponseState, dose_les, bed_les, n_cycles: int,
                   interval_h: float):
    """Receptor-density factors g_j (j = 1..n_cycles) of new cycles for the planner's activity
    grid: ``dose_les``/``bed_les`` (G, rows, L) are one cycle's lesion dose/BED at the initial
    state; cycle j's lesion dose is approximated by g_j x dose (BED: its quadratic part by g_j^2),
    i.e. dose per GBq proportional to the receptor density (unsaturated binding). Returns
    (n_cycles, G, rows, L) factors, used only to rank candidate plans; the chosen plan is
    simulated in full with :func:`run_cycles`."""
    G = dose_les.shape[0]
    st = ResponseState(np.broadcast_to(state0.viable, dose_les.shape).copy(),
                       np.broadcast_to(state0.doomed, dose_les.shape).copy())
    quad = np.where(np.isfinite(bed_les), bed_les - dose_les, np.nan)
    out = np.empty((n_cycles,) + dose_les.shape)
    for j in range(n_cycles):
        g = st.factors()[0]
        out[j] = g
        st = response.advance(st, g * dose_les, g * dose_les + g ** 2 * quad, interval_h)
    assert out.shape[1] == G
    return out
