"""Administrations of radiopharmaceuticals: time, activity and ligand amount.

A regimen file (CSV) has the columns ``time_h, radiopharmaceutical, activity_mbq, ligand_nmol``:
time in hours from an origin of the user's choice (usually the first administration), activity in
MBq, ligand amount in nmol = labelled + unlabelled ligand. The labelled amount follows from the
activity and the nuclide's molar activity (carrier-free), so ``ligand_nmol`` must be at least that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pbpk_models import units as u
from pbpk_models.errors import InputError
from pbpk_models.radionuclides import parse_radiopharmaceutical

REGIMEN_COLUMNS = ("time_h", "radiopharmaceutical", "activity_mbq", "ligand_nmol")

# Typical total ligand amount per administered GBq, used when a regimen leaves ligand_nmol empty.
TYPICAL_NMOL_PER_GBQ = {
    # 7.4 GBq of 177Lu-PSMA-617 (Pluvicto) ~ 10.18 nmol labelled + 46.91 nmol unlabelled
    # (Fele-Paranj et al., EJNMMI Radiopharm Chem 2024;9:6, as summarised in psma_pbrpk.md)
    "lu177-psma-617": (10.18 + 46.91) / 7.4,
    # 105 nmol peptide per 7.4 GBq cycle (Jimenez-Franco LD et al., J Nucl Med 2021;62:92)
    "lu177-dotatate": 105.0 / 7.4,
}
# Typical total ligand amount per administration (nmol), independent of activity.
TYPICAL_NMOL = {
    # PET ligand amounts in PSMA PBPK simulations: 3 nmol standard (Begum NJ et al.,
    # Sci Rep 2019;9:20041)
    "ga68-psma-11": 3.0,
    # 333 MBq at 45 MBq/nmol ~ 7.4 nmol (derived; docs/research/imaging_ligands.md)
    "f18-dcfpyl": 7.4,
    # median 12.3 ug 68Ga-DOTATATE ~ 8.6 nmol (M ~ 1435 g/mol) (Siebinga H et al., EJNMMI Res
    # 2021;11:73)
    "ga68-dotatate": 8.6,
}


@dataclass(frozen=True)
class Administration:
    time_h: float
    radiopharmaceutical: str
    activity_mbq: float
    ligand_nmol: float

    def __post_init__(self):
        for name in ("time_h", "activity_mbq", "ligand_nmol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise InputError(f"administration {name} must be a finite number, got {v!r}")
        if self.activity_mbq < 0:
            raise InputError(f"activity_mbq must not be negative, got {self.activity_mbq}")
        if self.ligand_nmol < 0:
            raise InputError(f"ligand_nmol must not be negative, got {self.ligand_nmol}")
        parse_radiopharmaceutical(self.radiopharmaceutical)


def typical_ligand_nmol(radiopharmaceutical: str, activity_mbq: float) -> float | None:
    rp = radiopharmaceutical.lower()
    if rp in TYPICAL_NMOL_PER_GBQ:
        return TYPICAL_NMOL_PER_GBQ[rp] * u.mbq_to_gbq(activity_mbq)
    return TYPICAL_NMOL.get(rp)


@dataclass(frozen=True)
class Regimen:
    """An ordered tuple of administrations."""

    administrations: tuple[Administration, ...]

    def __post_init__(self):
        if not self.administrations:
            raise InputError("a regimen needs at least one administration")
        object.__setattr__(self, "administrations",
                           tuple(sorted(self.administrations, key=lambda a: a.time_h)))

    @classmethod
    def single(cls, radiopharmaceutical: str, activity_mbq: float, ligand_nmol: float | None = None,
               time_h: float = 0.0) -> "Regimen":
        if ligand_nmol is None:
            ligand_nmol = typical_ligand_nmol(radiopharmaceutical, activity_mbq)
            if ligand_nmol is None:
                raise InputError(f"give ligand_nmol for {radiopharmaceutical}: no typical amount "
                                 f"is known")
        return cls((Administration(float(time_h), radiopharmaceutical, float(activity_mbq),
                                   float(ligand_nmol)),))

    @classmethod
    def cycles(cls, radiopharmaceutical: str, activities_mbq, interval_h: float,
               ligand_nmol=None, start_h: float = 0.0) -> "Regimen":
        acts = list(activities_mbq)
        ligs = list(ligand_nmol) if ligand_nmol is not None else [None] * len(acts)
        admins = []
        for k, (a, lig) in enumerate(zip(acts, ligs)):
            admins += list(cls.single(radiopharmaceutical, a, lig,
                                      start_h + k * interval_h).administrations)
        return cls(tuple(admins))

    @property
    def radiopharmaceuticals(self) -> tuple[str, ...]:
        seen = []
        for a in self.administrations:
            if a.radiopharmaceutical.lower() not in seen:
                seen.append(a.radiopharmaceutical.lower())
        return tuple(seen)

    @property
    def times_h(self) -> np.ndarray:
        return np.array([a.time_h for a in self.administrations])

    def unique_times(self) -> np.ndarray:
        return np.unique(self.times_h)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{c: getattr(a, c) for c in REGIMEN_COLUMNS}
                             for a in self.administrations], columns=list(REGIMEN_COLUMNS))

    @classmethod
    def from_frame(cls, df, source: str = "regimen") -> "Regimen":
        import pandas as pd

        missing = [c for c in REGIMEN_COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"{source}: missing column(s) {', '.join(missing)}; a regimen has the "
                             f"columns {', '.join(REGIMEN_COLUMNS)}")
        if len(df) == 0:
            raise InputError(f"{source}: no administrations (the file has a header but no rows)")
        admins = []
        for i, row in df.iterrows():
            where = f"{source}, row {int(i) + 2}"
            try:
                t = float(row["time_h"])
                a = float(row["activity_mbq"])
            except (TypeError, ValueError):
                raise InputError(f"{where}: time_h and activity_mbq must be numbers") from None
            rp = str(row["radiopharmaceutical"]).strip()
            lig = row["ligand_nmol"]
            if lig is None or (isinstance(lig, float) and math.isnan(lig)) or \
                    (isinstance(lig, str) and not lig.strip()):
                lig = typical_ligand_nmol(rp, a)
                if lig is None:
                    raise InputError(f"{where}: ligand_nmol is empty and no typical amount is "
                                     f"known for {rp}; give it in nmol")
            try:
                lig = float(lig)
            except (TypeError, ValueError):
                raise InputError(f"{where}: ligand_nmol must be a number, got {lig!r}") from None
            if not (math.isfinite(t) and math.isfinite(a) and math.isfinite(lig)):
                raise InputError(f"{where}: values must be finite numbers")
            try:
                admins.append(Administration(t, rp, a, lig))
            except InputError as exc:
                raise InputError(f"{where}: {exc}") from None
        if pd.isna(df["radiopharmaceutical"]).any():
            raise InputError(f"{source}: empty radiopharmaceutical name")
        return cls(tuple(admins))

    @classmethod
    def from_csv(cls, path) -> "Regimen":
        import pandas as pd

        path = Path(path)
        if not path.is_file():
            raise InputError(f"regimen file {path} does not exist")
        try:
            df = pd.read_csv(path, skipinitialspace=True)
        except Exception as exc:  # pandas raises several parser error types
            raise InputError(f"cannot read regimen CSV {path}: {exc}") from None
        df.columns = [str(c).strip() for c in df.columns]
        return cls.from_frame(df, source=str(path))

    def dose_arrays(self, model):
        """(times (n,), hot (n, n_rp), cold (n, n_ligands)) in nmol for a compiled model.

        Administrations at the same time are merged into one bolus. Raises InputError when a
        ligand amount is below the labelled amount implied by the activity.
        """
        times = self.unique_times()
        names = [r.name for r in model.radiopharmaceuticals]
        hot = np.zeros((len(times), len(names)))
        cold = np.zeros((len(times), len(model.ligands)))
        for a in self.administrations:
            rp = parse_radiopharmaceutical(a.radiopharmaceutical)
            if rp.name not in names:
                raise InputError(f"the model was compiled without {rp.name}")
            rp_i = names.index(rp.name)
            ligand = model.radiopharmaceuticals[rp_i].ligand
            labelled = a.activity_mbq / model.mbq_per_nmol[rp_i]
            if a.ligand_nmol < labelled * (1 - 1e-9):
                raise InputError(
                    f"ligand_nmol {a.ligand_nmol:g} nmol at t={a.time_h:g} h is less than the "
                    f"labelled amount {labelled:.4g} nmol implied by {a.activity_mbq:g} MBq of "
                    f"{rp.name} (carrier-free); ligand_nmol counts labelled + unlabelled ligand")
            k = int(np.searchsorted(times, a.time_h))
            hot[k, rp_i] += labelled
            cold[k, model.ligands.index(ligand)] += max(a.ligand_nmol - labelled, 0.0)
        return times, hot, cold

    def administered_mbq(self, model) -> np.ndarray:
        out = np.zeros(len(model.radiopharmaceuticals))
        names = [r.name for r in model.radiopharmaceuticals]
        for a in self.administrations:
            out[names.index(parse_radiopharmaceutical(a.radiopharmaceutical).name)] += a.activity_mbq
        return out
