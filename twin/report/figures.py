"""The report's figures: matplotlib (Agg) figures rendered to PNG bytes.

Every function takes plain arrays or tables and returns PNG bytes (no files): the report embeds
them as base64 ``data:`` URIs so that report.html is one self-contained file.
"""

from __future__ import annotations

import io

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_png(fig, dpi: int = 90) -> bytes:
    """PNG bytes of a figure (the figure is closed)."""
    plt = _plt()
    buf = io.BytesIO()
    # fixed metadata: the same figure gives the same bytes (reproducible reports)
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def tac_figure(curves, observations, radiopharmaceutical: str, regions) -> bytes:
    """Measured region activity (points, 1 sigma bars; open markers: not used in the fit) and
    the fitted curve (MAP, line) with its credible band, one panel per region.

    Args:
        curves: long table ``radiopharmaceutical, region, time_h, map_mbq, low_mbq, high_mbq``.
        observations: OBS table (``region, time_h, activity_mbq, sigma_mbq, modality,
            radiopharmaceutical`` and optionally ``used_in_fit``).
        regions: the regions to draw.
    """
    plt = _plt()
    regions = list(regions)
    ncol = min(3, len(regions))
    nrow = int(np.ceil(len(regions) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    c = curves[curves["radiopharmaceutical"] == radiopharmaceutical]
    o = observations[observations["radiopharmaceutical"] == radiopharmaceutical] \
        if observations is not None else None
    for ax, region in zip(axes.ravel(), regions):
        cr = c[c["region"] == region]
        if len(cr):
            ax.fill_between(cr["time_h"], cr["low_mbq"], cr["high_mbq"], color="C0", alpha=0.25,
                            lw=0, label="credible band")
            ax.plot(cr["time_h"], cr["map_mbq"], color="C0", lw=1.5, label="twin (MAP)")
        if o is not None:
            orr = o[o["region"] == region]
            used = orr["used_in_fit"].astype(bool) if "used_in_fit" in orr else \
                np.ones(len(orr), bool)
            for mask, face, lab in ((used, "C3", "fitted"), (~used, "white", "held out")):
                if mask.any():
                    ax.errorbar(orr["time_h"][mask], orr["activity_mbq"][mask],
                                yerr=orr["sigma_mbq"][mask], fmt="o", ms=4, color="C3",
                                mfc=face, capsize=2, label=lab)
        ax.set_title(region, fontsize=9)
        ax.set_xlabel("time (h)", fontsize=8)
        ax.set_ylabel("activity (MBq)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(regions):]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(radiopharmaceutical, fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def spectrum_figure(spectra, label: str = "eigenvalue of J$^T$J") -> bytes:
    """Sloppiness spectra: eigenvalues on a log scale, one column per model.

    Args:
        spectra: eigenvalues (one spectrum) or [(label, eigenvalues), ...].
    """
    plt = _plt()
    if len(spectra) and isinstance(spectra[0], tuple):
        items = [(str(n), np.asarray(e, float)) for n, e in spectra]
    else:
        items = [("", np.asarray(spectra, float))]
    if len(items) > 4:  # a long MBAM chain: the first two (this twin, full) and the last two
        items = items[:2] + items[-2:]
    fig, ax = plt.subplots(figsize=(1.6 + 1.0 * len(items), 3.4))
    for i, (_, ev) in enumerate(items):
        ev = ev[np.isfinite(ev) & (ev > 0)]
        ax.hlines(ev, i - 0.32, i + 0.32, color="C0" if i == 0 else "0.25", lw=1.2)
    ax.set_yscale("log")
    ax.set_xlim(-0.6, len(items) - 0.4)
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([n for n, _ in items], rotation=30 if len(items) > 1 else 0,
                       ha="right" if len(items) > 1 else "center", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel(label, fontsize=8)
    ax.set_title("sloppiness spectrum", fontsize=9)
    fig.tight_layout()
    return to_png(fig)


def mbam_figure(steps) -> bytes:
    """MBAM steps: parameters left (left axis) and the worst relative prediction error of each
    model against the full one (right axis, %); a rejected step drawn open."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    x = np.asarray(steps["step"] if "step" in steps else np.arange(len(steps)), float)
    y = np.asarray(steps["n_parameters"] if "n_parameters" in steps else x[::-1], float)
    acc = ~np.asarray(steps["status"].eq("rejected")) if "status" in steps else \
        np.ones(len(x), bool)
    ax.plot(x[acc], y[acc], "o-", color="C0")
    if (~acc).any():
        ax.plot(x[~acc], y[~acc], "o", color="C0", mfc="white")
    ax.set_xlabel("MBAM step", fontsize=8)
    ax.set_ylabel("parameters", fontsize=8, color="C0")
    ax.set_xticks(x)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(labelsize=7)
    if "max_rel_error" in steps:
        err = 100 * np.asarray(steps["max_rel_error"], float)
        ax2 = ax.twinx()
        pos = err > 0  # the full model's error is 0 by definition: not on a log axis
        ax2.plot(x[acc & pos], err[acc & pos], "s--", color="C1")
        if (~acc & pos).any():
            ax2.plot(x[~acc & pos], err[~acc & pos], "s", color="C1", mfc="white",
                     label="rejected")
            ax2.legend(fontsize=7)
        if pos.any():
            ax2.set_yscale("log")
        ax2.set_ylabel("worst prediction error (%)", fontsize=8, color="C1")
        ax2.tick_params(labelsize=7)
    fig.tight_layout()
    return to_png(fig)


def mip_figure(ct_hu, dose_gy, spacing_zyx) -> bytes:
    """Maximum-intensity projections of the dose (colour) over the CT (grey): coronal and
    sagittal views, patient head up. Arrays are ``[z, y, x]`` (DICOM: z increases toward the
    head)."""
    plt = _plt()
    ct = np.asarray(ct_hu, dtype=np.float32)
    dose = np.asarray(dose_gy, dtype=np.float32)
    sz, sy, sx = (float(s) for s in spacing_zyx)
    views = [("coronal", ct.max(axis=1), dose.max(axis=1), sx / sz),
             ("sagittal", ct.max(axis=2), dose.max(axis=2), sy / sz)]
    vmax = float(np.percentile(dose[dose > 0], 99.9)) if np.any(dose > 0) else 1.0
    fig, axes = plt.subplots(1, 2, figsize=(7, 5))
    im = None
    for ax, (name, c, d, aspect) in zip(axes, views):
        ax.imshow(c, cmap="gray", vmin=-200, vmax=1200, origin="lower",
                  aspect=1.0 / aspect)
        masked = np.ma.masked_less(d, 0.02 * vmax)
        im = ax.imshow(masked, cmap="inferno", vmin=0, vmax=vmax, alpha=0.75, origin="lower",
                       aspect=1.0 / aspect)
        ax.set_title(f"{name} MIP", fontsize=9)
        ax.set_axis_off()
    cb = fig.colorbar(im, ax=list(axes), shrink=0.8)
    cb.set_label("absorbed dose (Gy)", fontsize=8)
    return to_png(fig)


def dvh_figure(dvh, regions=None) -> bytes:
    """Cumulative DVHs (volume fraction receiving at least the dose)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    names = list(regions) if regions is not None else list(dict.fromkeys(dvh["region"]))
    for i, name in enumerate(names):
        d = dvh[dvh["region"] == name]
        if len(d):
            ax.plot(d["dose_gy"], 100 * d["volume_fraction"], color=f"C{i % 10}",
                    ls="-" if i < 10 else "--", label=name)
    ax.set_xlabel("absorbed dose (Gy)", fontsize=8)
    ax.set_ylabel("volume (%)", fontsize=8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return to_png(fig)


def bed_figure(bed, limits: dict | None = None) -> bytes:
    """Cumulative BED per organ over the plan's cycles, with the limits as dashed lines.

    Args:
        bed: table ``region, cycle, cumulative_bed_gy``.
        limits: {region: limit (Gy)}.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, (name, d) in enumerate(bed.groupby("region", sort=False)):
        ax.plot(d["cycle"], d["cumulative_bed_gy"], "o-", color=f"C{i % 10}", label=name)
        if limits and name in limits:
            ax.axhline(limits[name], color=f"C{i % 10}", ls="--", lw=1)
    ax.set_xlabel("cycle", fontsize=8)
    ax.set_ylabel("cumulative BED (Gy)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)
