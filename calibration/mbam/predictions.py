"""The prediction vector r(theta) of a measurement protocol, weighted by its noise model.

A :class:`Protocol` is what a patient's imaging will measure (PROTOCOL.json, issue 5):

    {"regimen": [{"time_h", "radiopharmaceutical", "activity_mbq", "ligand_nmol"}, ...],
     "observations": [{"region", "time_h", "modality", "relative_sigma"
                       [, "radiopharmaceutical"]}, ...],
     "preserve": ["Kidney", "SG", ...],
     "parameters": ["NAME", ...]}            # optional: the MBAM parameter set

Times are hours from the regimen's first administration (as in OBS.csv). An observation without
a radiopharmaceutical is assigned the one administered that its modality images (PET: a
positron emitter, SPECT/planar: a gamma emitter) or the only one. ``preserve``: regions whose TIA
(of every radiopharmaceutical in the regimen, integrated over ``tia_days`` after the last
administration) is appended to r with relative sigma ``tia_sigma`` so the reduction keeps it.

r_i(theta) = y_i(theta) / (relative_sigma_i * y_i(theta_ref)): noise proportional to the
activity (the dominant term of calibration.fit.NOISE for organ VOIs), evaluated at the reference
model's predictions so the weights stay fixed along the reduction. ``theta = log p`` of the
MBAM parameters; every other parameter at its value. The solve is the project's
(:func:`pbpk_models.simulate.prepare` and :func:`~pbpk_models.simulate.solve_core`, Rosenbrock
Rodas5P, forward-mode differentiable), one segment per radiopharmaceutical as in
:func:`calibration.fit.build_problem` (uncoupled).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pbpk_models.errors import InputError, ModelError
from pbpk_models.regimen import Administration, Regimen

POSITRON = ("Ga-68", "F-18", "Cu-64", "Zr-89", "Sc-44", "Y-86", "I-124")
# Solver for the geometry: second derivatives through an adaptive solve are accurate to about
# the solve's tolerance, so tighter than the population default (rtol 1e-6).
MBAM_SETTINGS = dict(rtol=1e-9, atol=1e-12, method="rosenbrock", adjoint="forward")


@dataclass(frozen=True)
class ProtocolObservation:
    region: str
    time_h: float
    modality: str
    relative_sigma: float
    radiopharmaceutical: str = ""


@dataclass(frozen=True)
class Protocol:
    regimen: Regimen
    observations: tuple
    preserve: tuple = ()
    parameters: tuple = ()
    tia_sigma: float = 0.02
    tia_days: float = 60.0
    source: str = "protocol"

    @classmethod
    def from_dict(cls, d: dict, source: str = "protocol") -> "Protocol":
        from pbpk_models.radionuclides import parse_radiopharmaceutical

        if not isinstance(d, dict):
            raise InputError(f"{source}: a protocol is a JSON object with 'regimen' and "
                             f"'observations'")
        regs = d.get("regimen")
        if not isinstance(regs, list) or not regs:
            raise InputError(f"{source}: 'regimen' must be a non-empty list of administrations "
                             f"{{time_h, radiopharmaceutical, activity_mbq, ligand_nmol}}")
        admins = []
        for i, a in enumerate(regs):
            try:
                rp = str(a["radiopharmaceutical"])
                act = float(a["activity_mbq"])
                nmol = a.get("ligand_nmol")
                if nmol is None:
                    from pbpk_models.regimen import typical_ligand_nmol

                    nmol = typical_ligand_nmol(rp, act)
                    if nmol is None:
                        raise InputError(f"{source}: regimen entry {i + 1}: give ligand_nmol "
                                         f"(no typical amount is known for {rp})")
                admins.append(Administration(float(a["time_h"]), rp, act, float(nmol)))
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"{source}: regimen entry {i + 1} is malformed ({exc}); it "
                                 f"needs time_h, radiopharmaceutical, activity_mbq, "
                                 f"ligand_nmol") from None
        regimen = Regimen(tuple(admins))
        obs_in = d.get("observations") or []
        if not isinstance(obs_in, list):
            raise InputError(f"{source}: 'observations' must be a list")
        rps = regimen.radiopharmaceuticals
        obs = []
        for i, o in enumerate(obs_in):
            try:
                region = str(o["region"])
                t = float(o["time_h"])
                modality = str(o.get("modality", "SPECT"))
                rs = float(o.get("relative_sigma", 0.1))
                rp = str(o.get("radiopharmaceutical", "")).lower()
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"{source}: observation {i + 1} is malformed ({exc}); it needs "
                                 f"region, time_h, modality, relative_sigma") from None
            if not (rs > 0 and math.isfinite(rs)):
                raise InputError(f"{source}: observation {i + 1}: relative_sigma must be "
                                 f"positive, got {rs}")
            if not (math.isfinite(t) and t >= 0):
                raise InputError(f"{source}: observation {i + 1}: time_h must be >= 0, got {t}")
            if not rp:
                if len(rps) == 1:
                    rp = rps[0]
                else:
                    pet = modality.upper() == "PET"
                    cands = [r for r in rps
                             if (parse_radiopharmaceutical(r).nuclide in POSITRON) == pet]
                    if len(cands) != 1:
                        raise InputError(f"{source}: observation {i + 1} ({modality}): say which "
                                         f"radiopharmaceutical it images (one of {rps})")
                    rp = cands[0]
            if rp not in rps:
                raise InputError(f"{source}: observation {i + 1}: {rp} is not in the regimen "
                                 f"({', '.join(rps)})")
            obs.append(ProtocolObservation(region, t, modality, rs, rp))
        preserve = d.get("preserve") or []
        if not isinstance(preserve, list):
            raise InputError(f"{source}: 'preserve' must be a list of region names")
        params = d.get("parameters") or []
        if not obs and not preserve:
            raise InputError(f"{source}: the protocol observes nothing: give at least one "
                             f"observation {{region, time_h, modality, relative_sigma}} or a "
                             f"region to preserve")
        return cls(regimen, tuple(obs), tuple(str(p) for p in preserve),
                   tuple(str(p) for p in params),
                   float(d.get("tia_sigma", 0.02)), float(d.get("tia_days", 60.0)), source)

    @classmethod
    def from_json(cls, path) -> "Protocol":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"protocol file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(d, str(path))

    def to_dict(self) -> dict:
        return {"regimen": [{"time_h": a.time_h, "radiopharmaceutical": a.radiopharmaceutical,
                             "activity_mbq": a.activity_mbq, "ligand_nmol": a.ligand_nmol}
                            for a in self.regimen.administrations],
                "observations": [o.__dict__ for o in self.observations],
                "preserve": list(self.preserve), "parameters": list(self.parameters),
                "tia_sigma": self.tia_sigma, "tia_days": self.tia_days}


@dataclass(eq=False)
class PredictionMap:
    """r(theta) for a spec, a protocol and the MBAM parameters ``names``.

    ``predict(theta)`` raw predictions (MBq for observations, MBq h for TIA), ``r(theta)``
    weighted; both pure JAX. ``labels`` one per entry; ``theta0`` log of the current values.
    """

    spec: object
    protocol: Protocol
    names: tuple
    base: np.ndarray
    theta0: np.ndarray
    labels: tuple
    n_obs: int
    segments: list = field(repr=False, default_factory=list)
    scale: np.ndarray | None = None
    settings: object = None

    def predict(self, theta):
        import jax.numpy as jnp

        p = jnp.asarray(self.base).at[self._idx].set(jnp.exp(theta))
        obs_parts, tia_parts = [], []
        for seg in self.segments:
            out = seg["core"](p, *seg["arrays"])
            amt = out["amounts"][seg["ts"], seg["rp"], seg["reg"]]
            obs_parts.append(amt * seg["mbq"][seg["rp"]])
            if len(seg["preserve"]):
                tia_parts.append(out["tia_nmol_h"][:, seg["preserve"]].reshape(-1)
                                 * jnp.repeat(seg["mbq"], len(seg["preserve"])))
        return jnp.concatenate(obs_parts + tia_parts)

    def r(self, theta):
        return self.predict(theta) / self.scale

    @property
    def _idx(self):
        return self.__dict__["idx"]


def prediction_map(spec, protocol: Protocol, names, values=None, reference=None,
                   settings=None, allow_empty: bool = False) -> PredictionMap:
    """Build r(theta). ``values``: {name: value} overriding the spec's defaults (any parameter);
    ``reference``: raw predictions defining the weights (default: this model at theta0)."""
    import jax
    import jax.numpy as jnp

    from pbpk_models.simulate import SolverSettings, prepare, solve_core

    settings = settings or SolverSettings(**MBAM_SETTINGS)
    names = tuple(names)
    if not names and not allow_empty:
        raise InputError(f"model {spec.name}: no parameters to reduce (the MBAM parameter set is "
                         f"empty); name them in the protocol's 'parameters' or with --parameters")
    regions = spec.regions
    bad = sorted({o.region for o in protocol.observations} - set(regions)
                 | set(protocol.preserve) - set(regions))
    if bad:
        raise InputError(f"{protocol.source}: unknown region(s) {', '.join(bad)} for model "
                         f"{spec.name}; its regions are {', '.join(regions)}")
    reg = protocol.regimen
    t0 = float(reg.times_h.min())
    segments, labels_obs, labels_tia = [], [], []
    order = []
    base = None
    pnames = None
    for rp in reg.radiopharmaceuticals:
        rows = [i for i, o in enumerate(protocol.observations) if o.radiopharmaceutical == rp]
        if not rows and not protocol.preserve:
            continue
        admins = tuple(a for a in reg.administrations if a.radiopharmaceutical.lower() == rp)
        sub = Regimen(admins)
        t_abs = np.array([t0 + protocol.observations[i].time_h for i in rows])
        first = min(a.time_h for a in admins)
        if len(t_abs) and t_abs.min() < first - 1e-9:
            raise InputError(f"{protocol.source}: an observation of {rp} is before its "
                             f"administration")
        ts = np.unique(np.concatenate([t_abs, [first]]))
        m, at, hot, cold, ts, t_end = prepare(spec, sub, ts, protocol.tia_days)
        if base is None:
            pnames = m.parameter_names
            base = m.params_from(values or {})
            m.check_params(base)
        rnames = [r.name for r in m.radiopharmaceuticals]
        segments.append({
            "core": solve_core(m, len(at), settings),
            "arrays": tuple(jnp.asarray(a) for a in (at, hot, cold, ts, np.float64(t_end))),
            "rp": jnp.asarray([rnames.index(rp)] * len(rows), dtype=jnp.int32),
            "ts": jnp.asarray(np.searchsorted(ts, t_abs), dtype=jnp.int32),
            "reg": jnp.asarray([m.regions.index(protocol.observations[i].region)
                                for i in rows], dtype=jnp.int32),
            "mbq": jnp.asarray(m.mbq_per_nmol),
            "preserve": np.array([m.regions.index(r) for r in protocol.preserve], np.int32),
        })
        order += rows
        labels_obs += [f"{protocol.observations[i].modality} {protocol.observations[i].region} "
                       f"{protocol.observations[i].time_h:g} h ({rp})" for i in rows]
        labels_tia += [f"TIA {r} ({rn})" for rn in rnames for r in protocol.preserve]
    if not segments:
        raise InputError(f"{protocol.source}: the protocol observes nothing")
    for n in names:
        if n not in pnames:
            raise InputError(spec._unknown_parameter_message(n))
    idx = np.array([pnames.index(n) for n in names], np.int32)
    with np.errstate(divide="ignore"):
        theta0 = np.log(np.maximum(base[idx], 0.0))
    if not np.all(np.isfinite(theta0)):
        zero = [n for n, t in zip(names, theta0) if not np.isfinite(t)]
        raise InputError(f"parameters {', '.join(zero)} are zero: MBAM works in log space; leave "
                         f"them out of the parameter set")
    rel = np.array([protocol.observations[i].relative_sigma for i in order]
                   + [protocol.tia_sigma] * len(labels_tia))
    pm = PredictionMap(spec, protocol, names, base, theta0, tuple(labels_obs + labels_tia),
                       len(labels_obs), segments, None, settings)
    pm.__dict__["idx"] = jnp.asarray(idx)
    pm.__dict__["order"] = np.array(order, int)
    if reference is None:
        reference = np.asarray(jax.jit(pm.predict)(jnp.asarray(theta0)))
        if not np.all(np.isfinite(reference)):
            raise ModelError(f"model {spec.name}: the solve failed at the starting parameters")
    reference = np.asarray(reference, float)
    if reference.shape != rel.shape:
        raise ModelError("reference predictions do not match the protocol")
    floor = 1e-12 + 1e-9 * np.max(np.abs(reference))
    pm.scale = jnp.asarray(rel * np.maximum(np.abs(reference), floor))
    pm.__dict__["reference"] = reference
    return pm
