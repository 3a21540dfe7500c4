"""TWIN.json: a personalised twin on disk (versioned, documented, plain JSON).

Format ``twin.TWIN`` version 1, an object with the keys:

- ``format``: ``"twin.TWIN"``; ``version``: 1 (readers refuse other major versions).
- ``model``: library model name (``psma-pbrpk``); ``variant``: its variant (``corrected``).
- ``personal``: list of ``{"name", "unit", "map", "log_map", "posterior_sd_log"}``: the
  fitted parameters in their canonical units (``pbpk_models`` units: h, mL, nmol), MAP value and
  its logarithm, posterior SD of the log value.
- ``cov_log``: posterior covariance of the log parameters (Laplace, Gauss-Newton), ordered as
  ``personal``.
- ``prior``: ``{"names", "mean_log", "cov_log", "sources"}`` the prior used.
- ``fixed``: ``{name: value}`` non-personal parameters set for this patient (canonical units);
  every other parameter is the model's default (population value).
- ``regimen``: rows ``{time_h, radiopharmaceutical, activity_mbq, ligand_nmol}`` that the twin was
  fitted with (time h, activity MBq, ligand nmol).
- ``diagnostics``: what the fit reported (cost, chi2_data, n_obs, grad_inf, starts, residual per
  observation, warnings, time_s).
- ``identifiability``: per parameter prior and posterior SD of the log value and a verdict.
- ``created_by``: package and version that wrote the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from calibration.priors import Prior
from calibration.uncertainty import Posterior, identifiability
from pbpk_models.errors import InputError
from pbpk_models.regimen import REGIMEN_COLUMNS, Administration, Regimen

FORMAT = "twin.TWIN"
VERSION = 1


def _clean(x):
    """JSON-safe copy: numpy to lists and floats, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def twin_to_dict(posterior: Posterior, regimen: Regimen | None = None) -> dict:
    """The TWIN.json content of a posterior (and the regimen it was fitted with)."""
    try:
        from importlib.metadata import version

        created = f"calibration (twin {version('twin')})"
    except Exception:  # metadata missing in a source checkout
        created = "calibration"
    sd = posterior.sd_log
    return _clean({
        "format": FORMAT, "version": VERSION,
        "model": posterior.model_name, "variant": posterior.variant,
        "personal": [{"name": n, "unit": u, "map": float(np.exp(t)), "log_map": float(t),
                      "posterior_sd_log": float(s)}
                     for n, u, t, s in zip(posterior.names, posterior.units,
                                           posterior.theta_map, sd)],
        "cov_log": posterior.cov_log,
        "prior": posterior.prior.to_dict(),
        "fixed": dict(posterior.fixed),
        "regimen": [] if regimen is None else
        [{c: getattr(a, c) for c in REGIMEN_COLUMNS} for a in regimen.administrations],
        "diagnostics": posterior.diagnostics,
        "identifiability": identifiability(posterior),
        "created_by": created,
    })


def dumps_twin(posterior: Posterior, regimen: Regimen | None = None) -> str:
    return json.dumps(twin_to_dict(posterior, regimen), indent=1, allow_nan=False)


def write_twin(path, posterior: Posterior, regimen: Regimen | None = None) -> Path:
    """Write TWIN.json atomically (temporary file beside it, then rename)."""
    from pbpk_models.atomic import write_text_atomic

    path = Path(path)
    write_text_atomic(path, dumps_twin(posterior, regimen))
    return path


def twin_from_dict(d: dict, source: str = "TWIN.json") -> tuple[Posterior, Regimen | None]:
    """(Posterior, Regimen or None) from TWIN.json content. Raises InputError if malformed."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError(f"{source}: not a twin file (format {FORMAT!r} expected)")
    if d.get("version") != VERSION:
        raise InputError(f"{source}: twin file version {d.get('version')} is not supported "
                         f"(this program reads version {VERSION}); refit with this version")
    try:
        personal = d["personal"]
        names = tuple(p["name"] for p in personal)
        units = tuple(p["unit"] for p in personal)
        theta = np.array([p["log_map"] for p in personal], dtype=np.float64)
        cov = np.array(d["cov_log"], dtype=np.float64)
        prior = Prior.from_dict(d["prior"])
        fixed = {str(k): float(v) for k, v in d.get("fixed", {}).items()}
        post = Posterior(str(d["model"]), str(d["variant"]), names, units, theta, cov, prior,
                         fixed, dict(d.get("diagnostics", {})))
        rows = d.get("regimen") or []
        regimen = Regimen(tuple(Administration(float(r["time_h"]), str(r["radiopharmaceutical"]),
                                               float(r["activity_mbq"]), float(r["ligand_nmol"]))
                                for r in rows)) if rows else None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: malformed twin file ({type(exc).__name__}: {exc})") from None
    return post, regimen


def read_twin(path) -> tuple[Posterior, Regimen | None]:
    """Read TWIN.json: (Posterior, the regimen it was fitted with or None)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"twin file {path} does not exist")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    return twin_from_dict(d, str(path))
