"""Observations: region activities over time, the data a twin is fitted to.

One row per region and time point: ``region, time_h, activity_mbq, sigma_mbq, modality,
radiopharmaceutical`` (time from the first administration of the regimen, hours; activity at
that time, not decay corrected, MBq; its standard uncertainty, MBq). A CSV or DataFrame at the
edge, arrays inside. Made by ``twin.observe`` from images, or read from CSV.

This module imports only numpy, pandas and pbpk_models (the package layering rule).

Noise model of a region measurement (:func:`region_sigma_mbq`): counting (Poisson) noise of the
counts that make up the region, sigma_P = sqrt(A / (S T)) for activity A (MBq), system sensitivity
S (counts/s per MBq) and acquisition time T (s), combined in quadrature with a proportional
calibration term sigma_C = c A (camera or scanner calibration uncertainty, e.g. c = 0.05 for PET
cross-calibrated to a dose calibrator, 0.10 for quantitative 177Lu SPECT: Boellaard R et al.,
EANM FDG PET/CT guidelines v2.0, Eur J Nucl Med Mol Imaging 2015;42:328-354,
doi:10.1007/s00259-014-2961-x; Ljungberg M et al., MIRD Pamphlet No. 26, J Nucl Med
2016;57:151-162, doi:10.2967/jnumed.115.159012). Partial-volume and segmentation errors are not in
this model; they are systematic, not random.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pbpk_models.errors import InputError
from pbpk_models.radionuclides import parse_radiopharmaceutical

COLUMNS = ("region", "time_h", "activity_mbq", "sigma_mbq", "modality", "radiopharmaceutical")

# Modality spellings accepted at the edge -> the names used inside.
_MODALITY = {"pt": "PET", "pet": "PET", "nm": "SPECT", "spect": "SPECT", "planar": "planar",
             "blood": "blood", "urine": "urine"}


def region_sigma_mbq(activity_mbq, sensitivity_cps_per_mbq, duration_s, calibration_rel):
    """Standard uncertainty (MBq) of a region activity: Poisson and calibration in quadrature.

    sigma = sqrt(A / (S T) + (c A)^2); A in MBq, S in counts/s per MBq, T in s, c relative.
    """
    a = np.clip(np.asarray(activity_mbq, dtype=float), 0.0, None)
    poisson_var = a / (np.asarray(sensitivity_cps_per_mbq, float) * np.asarray(duration_s, float))
    return np.sqrt(poisson_var + (np.asarray(calibration_rel, float) * a) ** 2)


@dataclass(frozen=True, eq=False)
class Observations:
    """Region activities over time (column arrays of equal length, validated on creation).

    Attributes:
        region: model region names (str array).
        time_h: time from the first administration (h), >= 0.
        activity_mbq: region activity at ``time_h`` (MBq), >= 0.
        sigma_mbq: its standard uncertainty (MBq), > 0.
        modality: 'PET', 'SPECT', ... (PT and NM are accepted and renamed).
        radiopharmaceutical: e.g. 'ga68-psma-11', 'lu177-psma-617'.
        source: where the data came from (a file name), for error messages.
    """

    region: np.ndarray
    time_h: np.ndarray
    activity_mbq: np.ndarray
    sigma_mbq: np.ndarray
    modality: np.ndarray
    radiopharmaceutical: np.ndarray
    source: str = ""

    def __post_init__(self):
        where = self.source or "observations"
        cols = {}
        for name in COLUMNS:
            v = np.asarray(getattr(self, name))
            if v.ndim != 1:
                raise InputError(f"{where}: column {name} must be one-dimensional")
            cols[name] = v
        n = {len(v) for v in cols.values()}
        if len(n) != 1:
            raise InputError(f"{where}: columns have different lengths "
                             f"{ {k: len(v) for k, v in cols.items()} }")
        if n == {0}:
            raise InputError(f"{where}: no observations (empty table); give at least one row")
        for name in ("time_h", "activity_mbq", "sigma_mbq"):
            try:
                x = cols[name].astype(float)
            except (TypeError, ValueError):
                raise InputError(f"{where}: column {name} must hold numbers") from None
            bad = ~np.isfinite(x)
            if bad.any():
                raise InputError(f"{where}: {name} is NaN or infinite in row "
                                 f"{int(np.argmax(bad)) + 1}; fill or remove that row")
            if name == "time_h" and (x < 0).any():
                raise InputError(f"{where}: negative time_h in row {int(np.argmax(x < 0)) + 1}; "
                                 f"times are hours after the first administration")
            if name == "activity_mbq" and (x < 0).any():
                raise InputError(f"{where}: negative activity_mbq in row "
                                 f"{int(np.argmax(x < 0)) + 1}; activities are >= 0 MBq")
            if name == "sigma_mbq" and (x <= 0).any():
                raise InputError(f"{where}: sigma_mbq must be > 0 (row "
                                 f"{int(np.argmax(x <= 0)) + 1}); give each measurement's "
                                 f"standard uncertainty in MBq")
            x = x.copy()
            x.flags.writeable = False
            object.__setattr__(self, name, x)
        for name in ("region", "modality", "radiopharmaceutical"):
            v = cols[name]
            s = np.array(["" if (x is None or (isinstance(x, float) and np.isnan(x))) else
                          str(x).strip() for x in v], dtype=object)
            empty = s == ""
            if empty.any():
                raise InputError(f"{where}: {name} is empty in row {int(np.argmax(empty)) + 1}")
            if name == "modality":
                s = np.array([_MODALITY.get(x.lower(), x) for x in s], dtype=object)
            if name == "radiopharmaceutical":
                cache = {x: parse_radiopharmaceutical(x).name for x in set(s)}
                s = np.array([cache[x] for x in s], dtype=object)
            s.flags.writeable = False
            object.__setattr__(self, name, s)

    def __len__(self) -> int:
        return len(self.time_h)

    @property
    def regions(self) -> tuple:
        return tuple(dict.fromkeys(self.region))

    def select(self, region=None, modality=None, radiopharmaceutical=None) -> "Observations":
        keep = np.ones(len(self), bool)
        for col, want in (("region", region), ("modality", modality),
                          ("radiopharmaceutical", radiopharmaceutical)):
            if want is not None:
                want = [want] if isinstance(want, str) else list(want)
                keep &= np.isin(getattr(self, col), want)
        return Observations(**{c: getattr(self, c)[keep] for c in COLUMNS}, source=self.source)

    # -- the edge -----------------------------------------------------------------------------
    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({c: np.asarray(getattr(self, c)) for c in COLUMNS})

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, source: str = "") -> "Observations":
        where = source or "observations"
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"{where}: missing column(s) {', '.join(missing)}; the columns are "
                             f"{', '.join(COLUMNS)}")
        return cls(**{c: df[c].to_numpy() for c in COLUMNS}, source=source)

    @classmethod
    def from_csv(cls, path) -> "Observations":
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: file not found")
        try:
            df = pd.read_csv(path, skipinitialspace=True)
        except pd.errors.EmptyDataError:
            raise InputError(f"{path}: empty file; write the header {','.join(COLUMNS)} and one "
                             f"row per measurement") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable CSV ({type(exc).__name__}); check the "
                             f"file") from None
        df.columns = [str(c).strip() for c in df.columns]
        return cls.from_dataframe(df, source=str(path))

    def to_csv(self, path, inputs=()) -> Path:
        """Write exactly the six columns, atomically; refuses to overwrite an input."""
        from pbpk_models.atomic import write_csv_atomic

        path = Path(path)
        write_csv_atomic(self.to_dataframe(), path, inputs=inputs)
        return path
