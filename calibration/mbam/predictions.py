"""The prediction vector r(theta) of a measurement protocol, weighted by its noise model.

A :class:`Protocol` is what a patient's imaging will measure (PROTOCOL.json, issue 5):

    {"regimen": [{"time_h", "radiopharmaceutical", "activity_mbq", "ligand_nmol"}, ...],
     "observations": [{"region", "time_h", "modality", "relative_sigma"
                       [, "radiopharmaceutical"]}, ...],
     "preserve": ["Kidney", "SG", ...],
     "parameters": ["NAME", ...] | "full",    # optional: the MBAM parameter set
     "preserve_radiopharmaceuticals": [...],  # optional: whose TIA is preserved
     "curve_times_h": [...], "curve_sigma": 0.1,  # optional: geometry-only time courses
     "region_groups": {"Rest": ["Rest", "Art", ...]}}  # optional: observed sums of regions

Times are hours from the regimen's first administration (as in OBS.csv). An observation without
a radiopharmaceutical is assigned the one administered that its modality images (PET: a
positron emitter, SPECT/planar: a gamma emitter) or the only one. ``preserve``: regions whose TIA
(of the *therapy* radiopharmaceuticals, integrated over ``tia_days`` after the last
administration) is appended to r with relative sigma ``tia_sigma`` so the reduction keeps it.
The therapy radiopharmaceuticals are ``preserve_radiopharmaceuticals`` or, by default, those of
the regimen that are not positron emitters (the PET ligand's TIA is not a decision quantity);
a regimen of positron emitters only preserves all of them.

``parameters: "full"`` (or :func:`full_parameter_set`) is the sloppy full model: every free
parameter except the physical constants (volumes, body size, haematocrit) and parameters at 0.
A ligand-specific parameter (``k_on``) is varied together with its copies for the other ligands
(``k_on[psma-11]``): one log-shift for all, each copy keeping its ratio to the principal one, so
that a limit (which :func:`calibration.mbam.limits.apply_limit` applies to every copy) is what
the geometry explored.

``region_groups`` (as ``calibration.fit(region_groups=...)``): an observed region may be the sum
of model regions, e.g. the imaged remainder of the body; the observation is the sum of its
members (the fit's weight matrix), their time courses enter the geometry curves one by one.

``curve_times_h`` (hours after each radiopharmaceutical's first administration; default
:data:`CURVE_TIMES_H` when the parameter set is larger than the protocol's predictions, else
none): the time-activity curves of the preserved (therapy) and observed (imaging) regions at
these times are appended to r with relative sigma ``curve_sigma``. They only give the model
manifold enough dimensions for the geometry (a protocol of 15 numbers cannot define 47
directions: J would have a 32-dimensional null space); the acceptance of a reduction is judged
on the protocol's observations and the preserved TIA only (:attr:`PredictionMap.decision`).

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
# Geometry-only time points (h after administration): early distribution, uptake plateau, the
# clearance phase and the Lu-177 half-life scale (6.6 d); chosen to span the kinetics (assumed).
CURVE_TIMES_H = (0.25, 1.0, 4.0, 24.0, 72.0, 168.0, 336.0)
# Parameters that are physical constants of the patient or of the model, never reduced.
PHYSICAL_UNITS = ("mL", "L", "kg", "m^2", "g")
PHYSICAL_NAMES = ("hematocrit",)


def full_parameter_set(spec) -> tuple:
    """The sloppy full model's parameters: every free parameter of ``spec`` except physical
    constants (volumes, body weight and surface, haematocrit: unit in :data:`PHYSICAL_UNITS` or
    name in :data:`PHYSICAL_NAMES`) and parameters whose value is 0 (log space)."""
    out = []
    for p in spec.parameters:
        if p.unit.strip() in PHYSICAL_UNITS or p.name in PHYSICAL_NAMES:
            continue
        if not (p.value > 0 and math.isfinite(p.value)):
            continue
        out.append(p.name)
    return tuple(out)


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
    preserve_radiopharmaceuticals: tuple = ()
    curve_times_h: tuple | None = None
    curve_sigma: float = 0.1
    region_groups: tuple = ()   # ((observed name, (model regions, ...)), ...)

    @property
    def therapy(self) -> tuple:
        """Radiopharmaceuticals whose TIA is preserved."""
        from pbpk_models.radionuclides import parse_radiopharmaceutical

        if self.preserve_radiopharmaceuticals:
            return tuple(self.preserve_radiopharmaceuticals)
        rps = self.regimen.radiopharmaceuticals
        ther = tuple(r for r in rps if parse_radiopharmaceutical(r).nuclide not in POSITRON)
        return ther or tuple(rps)

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
        if isinstance(params, str):
            if params != "full":
                raise InputError(f"{source}: 'parameters' is a list of names or \"full\"")
            params = ["full"]
        prp = [str(r).lower() for r in (d.get("preserve_radiopharmaceuticals") or [])]
        bad_rp = [r for r in prp if r not in rps]
        if bad_rp:
            raise InputError(f"{source}: preserve_radiopharmaceuticals {bad_rp} are not in the "
                             f"regimen ({', '.join(rps)})")
        ct = d.get("curve_times_h")
        if ct is not None:
            try:
                ct = tuple(float(t) for t in ct)
            except (TypeError, ValueError):
                raise InputError(f"{source}: curve_times_h must be a list of hours") from None
            if any(not (t > 0 and math.isfinite(t)) for t in ct):
                raise InputError(f"{source}: curve_times_h must be positive hours")
        csig = float(d.get("curve_sigma", 0.1))
        if not (csig > 0 and math.isfinite(csig)):
            raise InputError(f"{source}: curve_sigma must be positive, got {csig}")
        groups = d.get("region_groups") or {}
        if not isinstance(groups, dict) or not all(
                isinstance(v, list) and v and all(isinstance(x, str) for x in v)
                for v in groups.values()):
            raise InputError(f"{source}: 'region_groups' maps an observed region to a non-empty "
                             f"list of model regions, e.g. {{\"Rest\": [\"Rest\", \"Muscle\"]}}")
        if not obs and not preserve:
            raise InputError(f"{source}: the protocol observes nothing: give at least one "
                             f"observation {{region, time_h, modality, relative_sigma}} or a "
                             f"region to preserve")
        return cls(regimen, tuple(obs), tuple(str(p) for p in preserve),
                   tuple(str(p) for p in params),
                   float(d.get("tia_sigma", 0.02)), float(d.get("tia_days", 60.0)), source,
                   tuple(prp), ct, csig,
                   tuple((str(k), tuple(v)) for k, v in groups.items()))

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
                "tia_sigma": self.tia_sigma, "tia_days": self.tia_days,
                "preserve_radiopharmaceuticals": list(self.therapy),
                "curve_times_h": (None if self.curve_times_h is None
                                  else list(self.curve_times_h)),
                "curve_sigma": self.curve_sigma,
                "region_groups": {k: list(v) for k, v in self.region_groups}}

    def resolve_parameters(self, spec, names=None) -> tuple:
        """The MBAM parameter set: ``names``, else the protocol's; ``("full",)`` expands to
        :func:`full_parameter_set`."""
        names = tuple(names) if names else tuple(self.parameters)
        if names == ("full",):
            return full_parameter_set(spec)
        return names


@dataclass(eq=False)
class PredictionMap:
    """r(theta) for a spec, a protocol and the MBAM parameters ``names``.

    ``predict(theta)`` raw predictions (MBq for observations and curves, MBq h for TIA),
    ``r(theta)`` weighted; both pure JAX. ``labels`` one per entry; ``theta0`` log of the current
    values; entries ``[:n_decision]`` are the protocol's observations (``[:n_obs]``) and the
    preserved TIA, the rest geometry-only time courses.
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
    n_decision: int = 0

    def params(self, theta):
        """Full parameter vector of the compiled model at log-parameters ``theta`` (ligand
        copies shifted with their principal parameter)."""
        import jax.numpy as jnp

        p = jnp.asarray(self.base).at[self._idx].set(jnp.exp(theta))
        cidx, csrc = self.__dict__["copies"]
        if len(cidx):
            shift = jnp.exp(theta[csrc] - jnp.asarray(self.theta0)[csrc])
            p = p.at[cidx].set(jnp.asarray(self.base)[cidx] * shift)
        return p

    def predict(self, theta):
        import jax.numpy as jnp

        from calibration.fit import observed_amounts

        p = self.params(theta)
        obs_parts, tia_parts, curve_parts = [], [], []
        for seg in self.segments:
            out = seg["core"](p, *seg["arrays"])
            amounts = out["amounts"]
            amt = observed_amounts(amounts, seg["ts"], seg["rp"], seg["rw"])
            obs_parts.append(amt * seg["mbq"][seg["rp"]])
            if len(seg["preserve"]):
                tia_parts.append(out["tia_nmol_h"][0, seg["preserve"]]
                                 * seg["mbq"][0])
            if len(seg["curve_ts"]):
                c = amounts[seg["curve_ts"]][:, 0, :][:, seg["curve_reg"]]
                curve_parts.append(c.reshape(-1) * seg["mbq"][0])
        return jnp.concatenate(obs_parts + tia_parts + curve_parts)

    def r(self, theta):
        return self.predict(theta) / self.scale

    def decision_errors(self, pred) -> np.ndarray:
        """|pred - reference| / |reference| of the decision entries (observations, TIA)."""
        ref = self.__dict__["reference"][:self.n_decision]
        scale = np.maximum(np.abs(ref), 1e-12 + 1e-9 * np.max(np.abs(ref)))
        return np.abs(np.asarray(pred)[:self.n_decision] - ref) / scale

    @property
    def _idx(self):
        return self.__dict__["idx"]


def curve_times_for(protocol: Protocol, n_names: int) -> tuple:
    """Geometry time points used with ``n_names`` parameters (see the module doc)."""
    if protocol.curve_times_h is not None:
        return tuple(protocol.curve_times_h)
    n_dec = len(protocol.observations) + len(protocol.preserve) * len(protocol.therapy)
    return CURVE_TIMES_H if n_names > n_dec else ()


def prediction_map(spec, protocol: Protocol, names, values=None, reference=None,
                   settings=None, allow_empty: bool = False) -> PredictionMap:
    """Build r(theta). ``values``: {name: value} overriding the spec's defaults (any parameter);
    ``reference``: raw predictions defining the weights (default: this model at theta0)."""
    import jax
    import jax.numpy as jnp

    from pbpk_models.radionuclides import half_life_h, parse_radiopharmaceutical
    from pbpk_models.simulate import SolverSettings, prepare, solve_core

    settings = settings or SolverSettings(**MBAM_SETTINGS)
    names = tuple(names)
    if names == ("full",):
        names = full_parameter_set(spec)
    if not names and not allow_empty:
        raise InputError(f"model {spec.name}: no parameters to reduce (the MBAM parameter set is "
                         f"empty); name them in the protocol's 'parameters' or with --parameters")
    from calibration.fit import check_region_groups, region_weights

    regions = spec.regions
    try:
        groups = check_region_groups(dict(protocol.region_groups), regions)
    except InputError as exc:
        raise InputError(f"{protocol.source}: {exc}") from None
    bad = sorted({o.region for o in protocol.observations} - set(regions) - set(groups)
                 | set(protocol.preserve) - set(regions))
    if bad:
        raise InputError(f"{protocol.source}: unknown region(s) {', '.join(bad)} for model "
                         f"{spec.name}; its regions are {', '.join(regions)}"
                         + (f" (groups: {', '.join(groups)})" if groups else ""))
    reg = protocol.regimen
    therapy = protocol.therapy
    curve_times = np.array(curve_times_for(protocol, len(names)), float)
    t0 = float(reg.times_h.min())
    segments, labels_obs, labels_tia, labels_curve = [], [], [], []
    order = []
    base = None
    pnames = None
    for rp in reg.radiopharmaceuticals:
        rows = [i for i, o in enumerate(protocol.observations) if o.radiopharmaceutical == rp]
        keep = rp in therapy and protocol.preserve
        if not rows and not keep:
            continue
        admins = tuple(a for a in reg.administrations if a.radiopharmaceutical.lower() == rp)
        sub = Regimen(admins)
        t_abs = np.array([t0 + protocol.observations[i].time_h for i in rows])
        first = min(a.time_h for a in admins)
        if len(t_abs) and t_abs.min() < first - 1e-9:
            raise InputError(f"{protocol.source}: an observation of {rp} is before its "
                             f"administration")
        # geometry curves: within 10 half-lives (later activity is decayed away)
        hl = half_life_h(parse_radiopharmaceutical(rp).nuclide)
        ct = first + curve_times[curve_times <= 10 * hl]
        curve_regions = list(dict.fromkeys(
            (list(protocol.preserve) if keep else [])
            + [m for i in rows for m in groups.get(protocol.observations[i].region,
                                                   (protocol.observations[i].region,))]))
        ts = np.unique(np.concatenate([t_abs, [first], ct]))
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
            # (rows, model regions): an observed region is the sum of its members
            "rw": jnp.asarray(region_weights([protocol.observations[i].region for i in rows],
                                              m.regions, groups)),
            "mbq": jnp.asarray(m.mbq_per_nmol),
            "preserve": np.array([m.regions.index(r) for r in protocol.preserve] if keep
                                 else [], np.int32),
            "curve_ts": np.array(np.searchsorted(ts, ct) if len(curve_regions) else [],
                                 np.int32),
            "curve_reg": np.array([m.regions.index(r) for r in curve_regions], np.int32),
        })
        order += rows
        labels_obs += [f"{protocol.observations[i].modality} {protocol.observations[i].region} "
                       f"{protocol.observations[i].time_h:g} h ({rp})" for i in rows]
        if keep:
            labels_tia += [f"TIA {r} ({rp})" for r in protocol.preserve]
        if len(curve_regions):
            labels_curve += [f"curve {r} {t - first:g} h ({rp})" for t in ct
                             for r in curve_regions]
    if not segments:
        raise InputError(f"{protocol.source}: the protocol observes nothing")
    for n in names:
        if n not in pnames:
            raise InputError(spec._unknown_parameter_message(n))
    idx = np.array([pnames.index(n) for n in names], np.int32)
    # ligand copies varied with their principal parameter
    cidx, csrc = [], []
    for k, n in enumerate(names):
        for j, pn in enumerate(pnames):
            if pn.startswith(n + "[") and pn.endswith("]") and pn not in names:
                cidx.append(j)
                csrc.append(k)
    with np.errstate(divide="ignore"):
        theta0 = np.log(np.maximum(base[idx], 0.0))
    if not np.all(np.isfinite(theta0)):
        zero = [n for n, t in zip(names, theta0) if not np.isfinite(t)]
        raise InputError(f"parameters {', '.join(zero)} are zero: MBAM works in log space; leave "
                         f"them out of the parameter set")
    rel = np.array([protocol.observations[i].relative_sigma for i in order]
                   + [protocol.tia_sigma] * len(labels_tia)
                   + [protocol.curve_sigma] * len(labels_curve))
    pm = PredictionMap(spec, protocol, names, base, theta0,
                       tuple(labels_obs + labels_tia + labels_curve),
                       len(labels_obs), segments, None, settings,
                       len(labels_obs) + len(labels_tia))
    pm.__dict__["idx"] = jnp.asarray(idx)
    pm.__dict__["copies"] = (jnp.asarray(np.array(cidx, np.int32)),
                             jnp.asarray(np.array(csrc, np.int32)))
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
