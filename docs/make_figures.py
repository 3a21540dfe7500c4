"""Save the report's key figures as PNG files for the README tour (docs/images/).

    python docs/make_figures.py [--out docs/images] [--demo-dir DIR] [--quick] [--seed 0]

Runs `twin demo` (the full one by default: it has the planning stage and its cumulative BED
chart; `--quick` has none) into --demo-dir (a temporary folder by default) and writes the
figures of its report.html (the same drawings, :func:`twin.report.key_figures`): the fitted
time-activity curves with credible bands, the dose maximum-intensity projections over the CT,
the DVHs, the plan's cumulative BED per cycle, the sloppiness spectrum and, where a reduction is
shipped, the MBAM steps. Files are written atomically; each is checked to stay under --max-kb.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    p.add_argument("--demo-dir", type=Path, default=None,
                   help="where the demo writes (default: a temporary folder, removed after)")
    p.add_argument("--quick", action="store_true", help="the quick demo (no plan chart)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-kb", type=float, default=150.0, help="size limit per PNG (kB)")
    args = p.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from twin.atomic import atomic_path
    from twin.cli.demo import run_demo
    from twin.report import key_figures

    with tempfile.TemporaryDirectory() as tmp:
        demo_dir = args.demo_dir or Path(tmp) / "demo"
        res = run_demo(demo_dir, quick=args.quick, seed=args.seed)
        figures = key_figures(res["report"])
    args.out.mkdir(parents=True, exist_ok=True)
    too_big = []
    for name, png in figures.items():
        with atomic_path(args.out / name, suffix=".png") as tmp_path:
            Path(tmp_path).write_bytes(png)
        kb = len(png) / 1024
        print(f"{args.out / name}: {kb:.0f} kB")
        if kb > args.max_kb:
            too_big.append(name)
    if too_big:
        print(f"over {args.max_kb:g} kB: {', '.join(too_big)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
