"""Radionuclide data: half-lives, decay chains, mean energy per decay by radiation type.

Sources, never hand-typed numbers:
- half-lives, progeny and branching fractions: the ``radioactivedecay`` package (ICRP
  Publication 107 decay data; Malins A, Lemoine T, J Open Source Softw 2022;7:3318),
- emission spectra: the ``icrp107-database`` package (ICRP Publication 107, Eckerman K, Endo A,
  Ann ICRP 2008;38(3)), entries ``[E_MeV, yield per decay]`` per radiation type.

``radioactivedecay`` takes about 2.5 s to import, so it is imported lazily and every look-up is
cached.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from importlib import resources

from pbpk_models.errors import InputError

# Radiation types of ICRP 107 that deposit their energy within about a millimetre in tissue
# (electrons and heavy charged particles), as opposed to photons.
NON_PENETRATING = ("alpha", "beta-", "beta+", "auger", "IE", "alpha recoil")
PENETRATING = ("gamma", "X", "annihilation")


def normalise_nuclide(name: str) -> str:
    """``'Lu177'``, ``'lu-177'``, ``'177Lu'``, ``'Lu-177'`` -> ``'Lu-177'``; also metastable 'Tc-99m'."""
    s = str(name).strip()
    m = re.fullmatch(r"([A-Za-z]{1,2})-?(\d{1,3})([mn]?)", s) or None
    if m:
        sym, mass, meta = m.groups()
    else:
        m = re.fullmatch(r"(\d{1,3})([mn]?)-?([A-Za-z]{1,2})", s)
        if not m:
            raise InputError(f"cannot read nuclide name {name!r}; write it like 'Lu-177' or 'Ga-68'")
        mass, meta, sym = m.groups()
    return f"{sym[0].upper()}{sym[1:].lower()}-{int(mass)}{meta.lower()}"


@functools.lru_cache(maxsize=None)
def _rd_nuclide(name: str):
    import radioactivedecay as rd  # lazy: slow import

    try:
        return rd.Nuclide(name)
    except Exception as exc:  # radioactivedecay raises ValueError with its own wording
        raise InputError(f"unknown nuclide {name!r}: {exc}") from None


@functools.lru_cache(maxsize=None)
def half_life_h(nuclide: str) -> float:
    """Half-life in hours (radioactivedecay / ICRP 107)."""
    name = normalise_nuclide(nuclide)
    return float(_rd_nuclide(name).half_life("h"))


def decay_constant_per_h(nuclide: str) -> float:
    """Physical decay constant ln 2 / T_1/2 in 1/h."""
    return math.log(2.0) / half_life_h(nuclide)


@functools.lru_cache(maxsize=None)
def progeny(nuclide: str) -> tuple[tuple[str, float], ...]:
    """Direct daughters and their branching fractions (radioactivedecay)."""
    n = _rd_nuclide(normalise_nuclide(nuclide))
    return tuple((str(d), float(b)) for d, b in zip(n.progeny(), n.branching_fractions()))


@functools.lru_cache(maxsize=None)
def _icrp107(nuclide: str) -> dict:
    name = normalise_nuclide(nuclide)
    try:
        ref = resources.files("icrp107_database") / "icrp107" / f"{name}.json"
        with ref.open("rb") as f:
            # The package stores each file JSON-encoded twice.
            data = json.load(f)
            if isinstance(data, str):
                data = json.loads(data)
    except FileNotFoundError:
        raise InputError(f"nuclide {name} is not in the ICRP 107 database "
                         f"(icrp107-database package)") from None
    return data


@functools.lru_cache(maxsize=None)
def mean_energy_mev(nuclide: str, radiation: str) -> float:
    """Mean energy emitted per decay (MeV) by one ICRP 107 radiation type, sum of E * yield.

    For ``'beta-'`` and ``'beta+'`` the entries are mean energies of each branch.
    """
    em = _icrp107(nuclide)["emissions"]
    if radiation not in em:
        raise InputError(f"radiation type {radiation!r} unknown; ICRP 107 types: {sorted(em)}")
    return float(sum(e * y for e, y in em[radiation]))


@functools.lru_cache(maxsize=None)
def energy_per_decay_mev(nuclide: str, kind: str = "non-penetrating") -> float:
    """Mean energy per decay (MeV) of the non-penetrating or the penetrating emissions."""
    kinds = {"non-penetrating": NON_PENETRATING, "penetrating": PENETRATING}
    if kind not in kinds:
        raise InputError(f"kind must be one of {sorted(kinds)}, got {kind!r}")
    em = _icrp107(nuclide)["emissions"]
    return float(sum(mean_energy_mev(nuclide, r) for r in kinds[kind] if r in em))


@dataclass(frozen=True)
class Radiopharmaceutical:
    """A labelled ligand: ``lu177-psma-617`` is nuclide Lu-177 on ligand psma-617."""

    name: str
    nuclide: str
    ligand: str

    @property
    def decay_constant_per_h(self) -> float:
        return decay_constant_per_h(self.nuclide)


_RP = re.compile(r"^([a-z]{1,2})(\d{1,3}m?)-(.+)$")


def parse_radiopharmaceutical(name: str) -> Radiopharmaceutical:
    """``'lu177-psma-617'`` -> Radiopharmaceutical(nuclide 'Lu-177', ligand 'psma-617')."""
    s = str(name).strip().lower()
    m = _RP.match(s)
    if not m:
        raise InputError(f"cannot read radiopharmaceutical {name!r}: write it as nuclide-ligand, "
                         f"e.g. 'lu177-psma-617', 'ga68-psma-11', 'lu177-dotatate'")
    sym, mass, ligand = m.groups()
    nuclide = normalise_nuclide(f"{sym}-{mass}")
    half_life_h(nuclide)  # validates the nuclide
    return Radiopharmaceutical(name=s, nuclide=nuclide, ligand=ligand)


# Theranostic pairs: therapy radiopharmaceutical -> imaging companions commonly used before it.
THERANOSTIC_PAIRS = {
    "lu177-psma-617": ("ga68-psma-11", "f18-dcfpyl", "cu64-psma-617"),
    "lu177-psma-i&t": ("ga68-psma-11", "f18-dcfpyl"),
    "ac225-psma-617": ("ga68-psma-11", "f18-dcfpyl"),
    "lu177-dotatate": ("ga68-dotatate",),
}
