"""Plot of a plan: cumulative BED (or dose) per organ against cycle, with the limits."""

from __future__ import annotations

import numpy as np


def cumulative_table(plan, level: float = 0.90):
    """Per cycle and plotted region: cumulative MAP value, credible interval, the quantile at
    which the limits hold, and the limit (NaN where none). Regions: the limited ones and the
    lesions; quantity: the limit's (BED or dose), the lesion metric for lesions."""
    import pandas as pd

    d = plan.doses
    keep = d.ok.copy()
    keep[0] = False
    items = [(lim.region, lim.quantity, lim.value) for lim in plan.limits]
    items += [(r, plan.lesion_metric, np.nan) for r in plan.lesions]
    rows = []
    for region, q, value in items:
        j = d.regions.index(region)
        cum = d.cumulative(q)[:, :, j]
        for k in range(cum.shape[1]):
            rows.append({"region": region, "quantity": q, "cycle": k + 1,
                         "map_gy": cum[0, k],
                         "low_gy": np.quantile(cum[keep, k], (1 - level) / 2),
                         "high_gy": np.quantile(cum[keep, k], (1 + level) / 2),
                         "quantile_gy": np.quantile(cum[keep, k], plan.quantile),
                         "limit_gy": value})
    return pd.DataFrame(rows)


def plot_cumulative(plan, path, title: str | None = None, inputs=()):
    """PNG: one panel per limited region and lesion, cumulative BED/dose against cycle (MAP,
    90% interval, the limit quantile) with the limit line. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twin.atomic import atomic_path

    tab = cumulative_table(plan)
    keys = list(dict.fromkeys(zip(tab["region"], tab["quantity"])))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.2), squeeze=False)
    for ax, (region, q) in zip(axes[0], keys):
        t = tab[(tab.region == region) & (tab.quantity == q)]
        c = t["cycle"].to_numpy()
        ax.fill_between(c, t["low_gy"], t["high_gy"], alpha=0.25, label="90% interval")
        ax.plot(c, t["map_gy"], "o-", label="MAP")
        ax.plot(c, t["quantile_gy"], "s--", ms=3, label=f"q{plan.quantile:g}")
        lim = t["limit_gy"].iloc[0]
        if np.isfinite(lim):
            ax.axhline(lim, color="r", lw=1, label=f"limit {lim:g} Gy")
        ax.set_title(f"{region} ({'BED' if q == 'bed_gy' else 'dose'})")
        ax.set_xlabel("cycle")
        ax.set_ylabel("cumulative Gy")
        ax.set_xticks(c)
        ax.legend(fontsize=7)
    acts = ", ".join(f"{a / 1000:.2f}" for a in plan.activities_mbq)
    fig.suptitle(title or f"plan: {acts} GBq", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, inputs=inputs) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def interval_table(doses, level: float = 0.90):
    """What-if table of an ``OrganDoses`` (row 0 MAP, rows 1.. posterior samples): per region,
    per cycle and cumulative (cycle 'total'), TIA, dose and BED at the MAP with the equal-tailed
    ``level`` credible interval of the samples."""
    import pandas as pd

    keep = doses.ok.copy()
    keep[0] = False
    if keep.sum() < 2:
        raise ValueError("need at least two successful posterior samples for an interval")
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    rows = []
    C = doses.dose_gy.shape[1]
    for q in ("tia_mbq_h", "dose_gy", "bed_gy"):
        per = getattr(doses, q)
        cum = doses.cumulative(q)
        for j, r in enumerate(doses.regions):
            for k in range(C + 1):
                v = per[:, k, j] if k < C else cum[:, -1, j]
                if not np.isfinite(v[0]):
                    continue
                rows.append({"region": r, "cycle": str(k + 1) if k < C else "total",
                             "quantity": q, "map": v[0], "low": np.quantile(v[keep], lo_q),
                             "high": np.quantile(v[keep], hi_q)})
    return pd.DataFrame(rows)
