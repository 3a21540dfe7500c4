"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives; if
that is inside a garbage-collector callback (JAX registers one), the exception is printed as
"Exception ignored" and the run goes on. The command line therefore records the request too
(:func:`install`), and long jobs call :func:`check` at safe points (each pipeline stage), which
raises KeyboardInterrupt if a request was recorded. Outputs are atomic (twin.atomic), so an
interrupted run leaves only complete files.
"""

from __future__ import annotations

import signal
import threading

REQUESTED = threading.Event()


def _handler(signum, frame):
    REQUESTED.set()
    raise KeyboardInterrupt


def install() -> None:
    """Record SIGINT (and still raise KeyboardInterrupt at once). Main thread only; keeps a
    handler the caller installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _handler):
        REQUESTED.clear()
        signal.signal(signal.SIGINT, _handler)


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed (even if it was swallowed elsewhere)."""
    if REQUESTED.is_set():
        raise KeyboardInterrupt
