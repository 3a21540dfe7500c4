"""The ``twin`` command line.

Each subcommand lives in its own module of this package with two functions,
``register(subparsers)`` (adds its parser) and ``run(args)`` (does the work, returns the exit
code). ``main`` turns the project's errors into a one-line message and a non-zero exit: a user
never sees a traceback for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules, in the order --help lists them.
_COMMANDS = ("demo", "run", "simulate", "fit", "reduce", "inspect_cmd", "dose", "plan", "replan",
             "stp", "trial", "cohort")


def _configure_jax() -> None:
    # The command line owns the process, so it may switch JAX to 64-bit (PBPK needs float64);
    # library code only checks (see pbpk_models.precision).
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    import jax

    jax.config.update("jax_enable_x64", True)
    # compiled programs are kept on disk for the next command (twin.compile_cache)
    from twin import compile_cache

    compile_cache.enable()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twin",
        description="Theranostic digital twin: simulate, personalise and plan radiopharmaceutical "
                    "therapy (177Lu-PSMA-617, 177Lu-DOTATATE, ...) from PET and SPECT. Units: time "
                    "h, activity MBq (GBq where an option says so), ligand nmol, TIA MBq h, dose Gy.",
    )
    from twin import __version__

    parser.add_argument("--version", action="version", version=f"twin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"twin.cli.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not installed in this build
            if exc.name != f"twin.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv=None) -> int:
    from twin.errors import TwinError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from twin import interrupt

    interrupt.install()
    try:
        _configure_jax()
        return int(args.func(args) or 0)
    except TwinError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"twin {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twin {args.command}: interrupted; no partial output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
