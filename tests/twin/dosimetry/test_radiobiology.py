"""BED (Lea-Catcheside) against the mono-exponential closed form; NTCP, TCP, red marrow."""

import math

import numpy as np
import pytest

from twin.dosimetry import radiobiology as rb
from twin.errors import InputError


@pytest.mark.parametrize("t_eff_h, t_rep_h", [(40.0, 2.8), (100.0, 0.5), (10.0, 10.0)])
def test_bed_matches_closed_form_monoexponential(t_eff_h, t_rep_h):
    lam = math.log(2) / t_eff_h
    dose = 25.0
    r0 = dose * lam
    t = np.linspace(0.0, 5 * t_eff_h, 400)
    rate = r0 * np.exp(-lam * t)
    ref = rb.bed_monoexponential(dose, lam, 2.6, t_rep_h)
    got = rb.bed(t, rate, 2.6, t_rep_h, tail_decay_per_h=lam)
    assert got == pytest.approx(ref, rel=1e-4)
    # the tail alone (two samples) is exact
    got2 = rb.bed([0.0, 1e-9], [r0, r0 * math.exp(-lam * 1e-9)], 2.6, t_rep_h, tail_decay_per_h=lam)
    assert got2 == pytest.approx(ref, rel=1e-7)


def test_bed_uptake_then_washout_is_between_limits():
    # A rising-then-falling curve: BED > D, and fast repair -> BED -> D.
    t = np.linspace(0, 300, 601)
    rate = 0.5 * (np.exp(-0.02 * t) - np.exp(-0.5 * t))
    d, gd2 = rb.lea_catcheside(t, rate, 2.8, tail_decay_per_h=0.02)
    assert d == pytest.approx(0.5 * (1 / 0.02 - 1 / 0.5), rel=1e-3)  # trapezoid, 0.5 h steps
    assert 0 < gd2 < d * d
    assert rb.bed(t, rate, 2.6, 1e-3, 0.02) == pytest.approx(d, rel=1e-3)


def test_eqd2_and_tables():
    assert rb.eqd2(40.0, 2.0) == pytest.approx(20.0)
    kidney = rb.tissue("kidney")
    assert kidney.alpha_beta_gy == 2.6 and kidney.repair_half_time_h == 2.8
    with pytest.raises(InputError):
        rb.tissue("lung")


def test_ntcp_tcp():
    assert rb.ntcp_lkb(28.0) == pytest.approx(0.5)
    assert rb.ntcp_lkb(28.0 * 1.1) == pytest.approx(0.8413, abs=1e-3)  # one m*TD50 above
    assert rb.generalised_eud([10.0, 10.0], 0.7) == pytest.approx(10.0)
    assert rb.tcp_poisson(0.0, 0.3, 1e7, 1.0) == pytest.approx(math.exp(-1e7))
    assert rb.tcp_poisson(100.0, 0.3, 1e7, 1.0) == pytest.approx(math.exp(-1e7 * math.exp(-30)))


def test_red_marrow_eanm():
    out = rb.red_marrow_dose(0.5, 10000.0, marrow_mass_g=1170.0, body_mass_g=73000.0,
                             s_rm_from_tb_gy_per_mbq_h=1e-6, nuclide="Lu-177")
    assert out["marrow_tia_mbq_h"] == pytest.approx(0.5 * 1170.0)
    from pbpk_models.units import gy_per_mbq_h
    assert out["self_gy"] == pytest.approx(585.0 * gy_per_mbq_h(0.147923, 1170.0), rel=1e-3)
    assert out["total_gy"] == pytest.approx(out["self_gy"] + out["remainder_gy"] + out["tumour_gy"])
    more = rb.red_marrow_dose(0.5, 10000.0, marrow_mass_g=1170.0, body_mass_g=73000.0,
                              s_rm_from_tb_gy_per_mbq_h=1e-6, nuclide="Lu-177",
                              tumour_tia_mbq_h=3000.0, s_rm_from_tumour_gy_per_mbq_h=2e-6)
    assert more["tumour_gy"] == pytest.approx(6e-3)
    with pytest.raises(InputError):
        rb.red_marrow_dose(5.0, 100.0, marrow_mass_g=1170.0, body_mass_g=73000.0,
                           s_rm_from_tb_gy_per_mbq_h=1e-6, nuclide="Lu-177")
