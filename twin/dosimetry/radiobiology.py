"""Radiobiology: BED and EQD2 for any dose-rate curve, NTCP (LKB), TCP (Poisson LQ), red marrow.

BED (linear-quadratic with incomplete repair, Lea-Catcheside):
    BED = D + G D^2 / (alpha/beta),
    G D^2 = 2 int_0^inf Ddot(t) int_0^t Ddot(w) exp(-mu (t - w)) dw dt,  mu = ln 2 / T_rep.
Integrated with two extra states q' = Ddot - mu q, z' = 2 Ddot q, G D^2 = z(inf) (as in
/work/shared/data/pbpk/clinical_reference.md). For a mono-exponential dose rate
Ddot = R0 exp(-lambda t) the closed form is BED = D (1 + D lambda / ((mu + lambda) alpha/beta))
(Dale RG, Br J Radiol 1985;58:515-528; the MIRD Pamphlet No. 20 expression, Wessels BW et al.,
J Nucl Med 2008;49:1884-1899), used as the test reference.
EQD2 = BED / (1 + 2 Gy / (alpha/beta)).

Units: time h, dose Gy, dose rate Gy/h, alpha/beta Gy, repair half-time h.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twin.errors import InputError


@dataclass(frozen=True)
class TissueRadiobiology:
    """alpha/beta (Gy) and repair half-time (h) of one tissue, with where they come from.

    ``repair_half_time_h`` is None where no value is in the project's checked references: pass
    one explicitly to :func:`bed`. ``status``: 'checked' (read in the source or a public code
    transcribing it) or 'unverified' (quoted secondhand; verify before clinical use).
    """

    tissue: str
    alpha_beta_gy: float
    repair_half_time_h: float | None
    source: str
    status: str


# Sources as listed in /work/shared/data/pbpk/clinical_reference.md and
# /work/shared/data/trials/population_radiobiology.md (their status is carried over).
TISSUES = {
    "kidney": TissueRadiobiology(
        "kidney", 2.6, 2.8,
        "Barone R et al., J Nucl Med 2005;46 Suppl 1:99S-106S; Wessels BW et al. (MIRD 20), "
        "J Nucl Med 2008;49:1884-1899; as used in PyTheranostics (Begum 2018 used 2.5 Gy)",
        "checked (code)"),
    "salivary": TissueRadiobiology(
        "salivary", 4.5, None, "Begum NJ et al., J Nucl Med 2018;59:929-933", "checked"),
    "tumour": TissueRadiobiology(
        "tumour", 1.5, None,
        "prostate cancer: Brenner DJ, Hall EJ, Int J Radiat Oncol Biol Phys 1999;43:1095-1101 "
        "(range 0.8-2.2 Gy); Begum 2018 used 1.49 Gy", "checked"),
    "red_marrow": TissueRadiobiology(
        "red_marrow", 15.0, None, "as used by Begum NJ et al., J Nucl Med 2018;59:929-933",
        "checked"),
}


def tissue(name: str) -> TissueRadiobiology:
    """Look up :data:`TISSUES` ('kidney', 'salivary', 'tumour', 'red_marrow')."""
    key = name.lower().replace(" ", "_")
    if key not in TISSUES:
        raise InputError(f"no radiobiology parameters for {name!r}; known: {sorted(TISSUES)}; "
                         f"pass alpha_beta_gy and repair_half_time_h explicitly")
    return TISSUES[key]


def _check_pos(name, value):
    if value is None or not np.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive number, got {value}")


def bed_monoexponential(dose_gy, decay_per_h: float, alpha_beta_gy: float,
                        repair_half_time_h: float):
    """Closed-form BED (Gy) for Ddot(t) = R0 exp(-lambda t), t >= 0 (Dale 1985; MIRD 20).

    ``dose_gy``: total dose D = R0 / lambda; ``decay_per_h``: lambda (effective, 1/h).
    """
    for n, v in (("decay_per_h", decay_per_h), ("alpha_beta_gy", alpha_beta_gy),
                 ("repair_half_time_h", repair_half_time_h)):
        _check_pos(n, v)
    mu = math.log(2.0) / repair_half_time_h
    d = np.asarray(dose_gy, dtype=np.float64)
    return d * (1.0 + d * decay_per_h / ((mu + decay_per_h) * alpha_beta_gy))


# 8-point Gauss-Legendre nodes and weights on [0, 1].
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
_GL_X = 0.5 * (_GL_X + 1.0)
_GL_W = 0.5 * _GL_W


def lea_catcheside(t_h, dose_rate_gy_per_h, repair_half_time_h: float,
                   tail_decay_per_h: float | None = None) -> tuple[float, float]:
    """Total dose D (Gy) and G D^2 (Gy^2) for a sampled dose-rate curve.

    ``t_h``: increasing times (h); ``dose_rate_gy_per_h``: dose rate at those times, linear in
    between (so start at the administration, rate 0 or the initial rate). After the last sample
    the rate continues as Ddot_N exp(-tail_decay_per_h (t - t_N)) if ``tail_decay_per_h`` is
    given (e.g. the physical decay constant), else it stops. The ODE q' = Ddot - mu q,
    z' = 2 Ddot q is solved exactly for q on each interval (Ddot linear) and z by 8-point
    Gauss-Legendre quadrature per interval; the tail is integrated in closed form.
    """
    _check_pos("repair_half_time_h", repair_half_time_h)
    t = np.asarray(t_h, dtype=np.float64)
    r = np.asarray(dose_rate_gy_per_h, dtype=np.float64)
    if t.ndim != 1 or t.shape != r.shape or t.size < 2:
        raise InputError("t_h and dose_rate_gy_per_h must be 1-D arrays of the same length >= 2")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))):
        raise InputError("times and dose rates must be finite")
    if np.any(np.diff(t) <= 0):
        raise InputError("times must be strictly increasing")
    if np.any(r < 0):
        raise InputError("dose rates must be >= 0")
    mu = math.log(2.0) / repair_half_time_h
    h = np.diff(t)
    d0 = r[:-1]
    g = (r[1:] - d0) / h
    e = np.exp(-mu * h)
    # q at the end of each interval, given q at its start: q1 = q0 e + A, with
    # A = d0 (1 - e)/mu + g (h/mu - (1 - e)/mu^2)  (exact for a linear Ddot).
    one_m_e = -np.expm1(-mu * h)
    a_inc = d0 * one_m_e / mu + g * (h / mu - one_m_e / mu**2)
    q_start = np.empty_like(h)
    q = 0.0
    for i in range(h.size):  # a scan over time samples (not voxels)
        q_start[i] = q
        q = q * e[i] + a_inc[i]
    # z increments: 2 int_0^h (d0 + g s) q(s) ds with q(s) known in closed form.
    s = h[:, None] * _GL_X[None, :]
    em = np.exp(-mu * s)
    om = -np.expm1(-mu * s)
    qs = q_start[:, None] * em + d0[:, None] * om / mu + g[:, None] * (s / mu - om / mu**2)
    rate = d0[:, None] + g[:, None] * s
    z = float(np.sum(2.0 * h[:, None] * _GL_W[None, :] * rate * qs))
    dose = float(np.sum(0.5 * (r[:-1] + r[1:]) * h))
    if tail_decay_per_h is not None and r[-1] > 0:
        lam = float(tail_decay_per_h)
        _check_pos("tail_decay_per_h", lam)
        r1 = r[-1]
        dose += r1 / lam
        # q(s) = q e^{-mu s} + r1 (e^{-lam s} - e^{-mu s}) / (mu - lam);
        # 2 int r1 e^{-lam s} q(s) ds = 2 r1 [q/(lam+mu) + r1/(mu-lam) (1/(2 lam) - 1/(lam+mu))]
        # (limit mu -> lam taken when equal).
        if abs(mu - lam) > 1e-12 * max(mu, lam):
            tail = r1 / (mu - lam) * (1.0 / (2 * lam) - 1.0 / (lam + mu))
        else:
            tail = r1 / (4 * lam * lam)
        z += 2.0 * r1 * (q / (lam + mu) + tail)
    return dose, z


def bed(t_h, dose_rate_gy_per_h, alpha_beta_gy: float, repair_half_time_h: float,
        tail_decay_per_h: float | None = None) -> float:
    """BED (Gy) of a sampled dose-rate curve (Lea-Catcheside; see :func:`lea_catcheside`)."""
    _check_pos("alpha_beta_gy", alpha_beta_gy)
    d, gd2 = lea_catcheside(t_h, dose_rate_gy_per_h, repair_half_time_h, tail_decay_per_h)
    return d + gd2 / alpha_beta_gy


def eqd2(bed_gy, alpha_beta_gy: float):
    """Equivalent dose in 2 Gy fractions (Gy): BED / (1 + 2 / (alpha/beta))."""
    _check_pos("alpha_beta_gy", alpha_beta_gy)
    return np.asarray(bed_gy, dtype=np.float64) / (1.0 + 2.0 / alpha_beta_gy)


# ----------------------------------------------------------------------------------------
# NTCP and TCP
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LKBParameters:
    """Lyman-Kutcher-Burman parameters: TD50 (Gy, EQD2), slope m, volume effect n."""

    td50_gy: float
    m: float
    n: float
    source: str
    status: str


# Whole-kidney EBRT tolerance fit (2 Gy fractions); apply to EQD2.
LKB_KIDNEY = LKBParameters(
    28.0, 0.10, 0.70,
    "Burman C, Kutcher GJ, Emami B, Goitein M, Int J Radiat Oncol Biol Phys 1991;21:123-135",
    "unverified (listed as such in population_radiobiology.md)")


def generalised_eud(doses_gy, n: float, weights=None) -> float:
    """gEUD = (sum_i v_i D_i^(1/n))^n (Gy) over voxels or DVH bins (v: volume fractions)."""
    _check_pos("n", n)
    d = np.asarray(doses_gy, dtype=np.float64).ravel()
    v = (np.full(d.size, 1.0 / d.size) if weights is None
         else np.asarray(weights, dtype=np.float64).ravel() / np.sum(weights))
    return float(np.sum(v * d ** (1.0 / n)) ** n)


def ntcp_lkb(eud_gy, params: LKBParameters = LKB_KIDNEY):
    """LKB NTCP = Phi((EUD - TD50) / (m TD50)); EUD as EQD2 (Gy) to match EBRT-derived TD50."""
    from scipy.special import ndtr

    t = (np.asarray(eud_gy, dtype=np.float64) - params.td50_gy) / (params.m * params.td50_gy)
    return ndtr(t)


def tcp_poisson(bed_gy, alpha_per_gy: float, clonogens_per_ml: float, voxel_volume_ml: float):
    """Poisson LQ TCP = exp(-sum_i N_i exp(-alpha BED_i)), N_i = clonogen density x voxel volume.

    ``bed_gy``: BED per voxel (or one value for a uniform tumour of one voxel volume); the
    parameters have no defaults: no RPT-validated TCP parameters are in the project's checked
    references (see docs/dose.md).
    """
    for n, v in (("alpha_per_gy", alpha_per_gy), ("clonogens_per_ml", clonogens_per_ml),
                 ("voxel_volume_ml", voxel_volume_ml)):
        _check_pos(n, v)
    b = np.asarray(bed_gy, dtype=np.float64)
    survivors = clonogens_per_ml * voxel_volume_ml * np.exp(-alpha_per_gy * b)
    return float(np.exp(-np.sum(survivors)))


# ----------------------------------------------------------------------------------------
# Red marrow (EANM)
# ----------------------------------------------------------------------------------------

# Red-marrow-to-blood activity concentration ratio (RMBLR), EANM guidelines (Hindorf C et al.,
# Eur J Nucl Med Mol Imaging 2010;37:1238-1250, doi:10.1007/s00259-010-1422-4): 1 for small
# peptides such as 177Lu-DOTATATE (Forrer F et al. 2009), 0.36 for non-marrow-binding antibodies.
RMBLR_SMALL_PEPTIDE = 1.0
RMBLR_ANTIBODY = 0.36


def red_marrow_dose(blood_tia_mbq_h_per_ml: float, body_tia_mbq_h: float, *,
                    marrow_mass_g: float, body_mass_g: float, s_rm_from_tb_gy_per_mbq_h: float,
                    nuclide: str | None = None, s_rm_from_rm_gy_per_mbq_h: float | None = None,
                    rmblr: float = RMBLR_SMALL_PEPTIDE, tumour_tia_mbq_h: float = 0.0,
                    s_rm_from_tumour_gy_per_mbq_h: float | None = None,
                    other_source_tia_mbq_h: float = 0.0) -> dict:
    """Red-marrow absorbed dose (Gy) by the blood-based EANM method (Hindorf et al. 2010).

    Self-dose: marrow TIA A_RM = RMBLR x [A_blood] x m_RM, with [A_blood] the blood TIA per mL
    (MBq h/mL) and the marrow concentration per gram taken equal to RMBLR x the blood's per mL;
    D_self = A_RM x S(RM<-RM). Default S(RM<-RM) (if ``nuclide`` is given and no value passed):
    the non-penetrating energy fully absorbed in the marrow mass (photons neglected; pass a
    phantom S-value, e.g. OLINDA's scaled to the patient, to include them).
    Cross-dose from the remainder of the body: A_RB = A_TB - A_RM - A_tumour - A_other,
    S(RM<-RB) = S(RM<-TB) m_TB / m_RB - S(RM<-RM) m_RM / m_RB (remainder-of-body correction used
    in the EANM guideline), m_RB = m_TB - m_RM. Cross-dose from tumour: A_tumour x
    S(RM<-tumour) (defaults to S(RM<-TB) if not given). ``other_source_tia_mbq_h``: TIA of
    organs whose cross-dose is neglected or counted elsewhere.
    Returns {'self_gy', 'remainder_gy', 'tumour_gy', 'total_gy', 'marrow_tia_mbq_h'}.
    S-values in Gy per MBq h; masses in g. S(RM<-TB) has no default: it comes from a phantom
    (OLINDA/IDAC, scaled by body mass) and must be supplied by the caller.
    """
    from pbpk_models.units import gy_per_mbq_h
    from twin.dosimetry.kernels import local_energy_mev

    for n, v in (("marrow_mass_g", marrow_mass_g), ("body_mass_g", body_mass_g),
                 ("rmblr", rmblr)):
        _check_pos(n, v)
    if body_mass_g <= marrow_mass_g:
        raise InputError("body_mass_g must exceed marrow_mass_g")
    for n, v in (("blood_tia_mbq_h_per_ml", blood_tia_mbq_h_per_ml),
                 ("body_tia_mbq_h", body_tia_mbq_h), ("tumour_tia_mbq_h", tumour_tia_mbq_h),
                 ("s_rm_from_tb_gy_per_mbq_h", s_rm_from_tb_gy_per_mbq_h)):
        if v is None or not np.isfinite(v) or v < 0:
            raise InputError(f"{n} must be a number >= 0, got {v}")
    if s_rm_from_rm_gy_per_mbq_h is None:
        if nuclide is None:
            raise InputError("give nuclide (for the electron self-dose S-value) or "
                             "s_rm_from_rm_gy_per_mbq_h")
        s_rm_from_rm_gy_per_mbq_h = gy_per_mbq_h(local_energy_mev(nuclide), marrow_mass_g)
    a_rm = rmblr * blood_tia_mbq_h_per_ml * marrow_mass_g
    a_rb = body_tia_mbq_h - a_rm - tumour_tia_mbq_h - other_source_tia_mbq_h
    if a_rb < 0:
        raise InputError(f"the body TIA ({body_tia_mbq_h:.4g} MBq h) is smaller than marrow + "
                         f"tumour + other sources ({body_tia_mbq_h - a_rb:.4g}); check the inputs")
    m_rb = body_mass_g - marrow_mass_g
    s_rb = (s_rm_from_tb_gy_per_mbq_h * body_mass_g / m_rb
            - s_rm_from_rm_gy_per_mbq_h * marrow_mass_g / m_rb)
    s_rb = max(s_rb, 0.0)
    s_tu = s_rm_from_tb_gy_per_mbq_h if s_rm_from_tumour_gy_per_mbq_h is None \
        else s_rm_from_tumour_gy_per_mbq_h
    self_gy = a_rm * s_rm_from_rm_gy_per_mbq_h
    rem_gy = a_rb * s_rb
    tu_gy = tumour_tia_mbq_h * s_tu
    return {"self_gy": self_gy, "remainder_gy": rem_gy, "tumour_gy": tu_gy,
            "total_gy": self_gy + rem_gy + tu_gy, "marrow_tia_mbq_h": a_rm}
