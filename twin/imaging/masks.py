"""Region masks: NIfTI label maps, DICOM RTSTRUCT rasterised onto an image grid, DICOM SEG, and
the user-editable table that maps their names to the model's region names.

A :class:`RegionMasks` is one integer label map on an image grid plus the region name of each
label: one array however many regions (20 regions of a 512x512x300 CT take 157 MB, not 1.5 GB
of boolean masks). Where contours overlap, the smaller region wins (a lesion inside the liver
belongs to the lesion; the body outline keeps only what no organ claims), so 'Rest' is the body
minus the named regions.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.errors import InputError
from twin.imaging.dicom import (
    quiet_dicom,
    _dcmread,
    _float,
    _pixels,
    _str,
    _value,
    enhanced_frame_positions,
)
from twin.imaging.volume import Volume

# Region names of the psma-pbrpk model (the names Observations use).
MODEL_REGIONS = ("Kidney", "SG", "Liver", "Spleen", "Tumor1", "Tumor2", "TumorRest", "Art", "Vein",
                 "RedMarrow", "Bone", "Lungs", "Heart", "Brain", "Muscle", "Skin", "Adipose", "GI",
                 "Prostate", "Rest")

# Common contour names (TG-263 standard names, Mayo CS et al., Int J Radiat Oncol Biol Phys
# 2018;100:1057-1066, doi:10.1016/j.ijrobp.2017.12.013, and frequent variants) -> model regions.
# ``''`` means "ignore this contour". Users extend or override it with a CSV (source_name,region).
DEFAULT_REGION_MAP = {
    "kidney": "Kidney", "kidneys": "Kidney", "kidney_l": "Kidney", "kidney_r": "Kidney",
    "kidney left": "Kidney", "kidney right": "Kidney", "left kidney": "Kidney",
    "right kidney": "Kidney", "kidneys_both": "Kidney",
    "sg": "SG", "parotid": "SG", "parotid_l": "SG", "parotid_r": "SG", "glnd_submand_l": "SG",
    "glnd_submand_r": "SG", "submandibular_l": "SG", "submandibular_r": "SG",
    "salivary": "SG", "salivary glands": "SG", "salivary_glands": "SG",
    "liver": "Liver", "spleen": "Spleen",
    "lung": "Lungs", "lungs": "Lungs", "lung_l": "Lungs", "lung_r": "Lungs",
    "lungs_both": "Lungs", "heart": "Heart", "brain": "Brain", "prostate": "Prostate",
    "bone": "Bone", "bones": "Bone", "skeleton": "Bone", "marrow": "RedMarrow",
    "red marrow": "RedMarrow", "redmarrow": "RedMarrow", "bone_marrow": "RedMarrow",
    "body": "Rest", "external": "Rest", "rest": "Rest", "remainder": "Rest",
    "tumor1": "Tumor1", "tumor2": "Tumor2", "tumorrest": "TumorRest", "gtv": "TumorRest",
    "lacrimal": "Lacrimal", "glnd_lacrimal_l": "Lacrimal", "glnd_lacrimal_r": "Lacrimal",
    "bladder": "Bladder", "couch": "", "table": "",
}


def load_region_map(path=None) -> dict:
    """The name table: defaults updated with a user CSV of columns ``source_name,region``.

    An empty ``region`` means "ignore this contour". Matching is case-insensitive.
    """
    table = dict(DEFAULT_REGION_MAP)
    if path is None:
        return table
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: region map not found; give a CSV with columns "
                         f"source_name,region")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"source_name", "region"} <= set(rows[0]):
        raise InputError(f"{path}: region map needs the columns source_name,region (one row per "
                         f"contour name)")
    for r in rows:
        table[str(r["source_name"]).strip().lower()] = str(r["region"] or "").strip()
    return table


def map_region_name(name: str, table: dict | None = None, unmapped: str = "keep") -> str | None:
    """Model region for a contour/label name; ``None`` to ignore it.

    ``unmapped``: ``'keep'`` (use the name as it is), ``'drop'``, or ``'error'``.
    """
    table = DEFAULT_REGION_MAP if table is None else table
    key = str(name).strip().lower()
    if key in table:
        return table[key] or None
    for m in MODEL_REGIONS:
        if key == m.lower():
            return m
    if unmapped == "keep":
        return str(name).strip()
    if unmapped == "drop":
        return None
    raise InputError(f"region name {name!r} is not in the region map; add a row "
                     f"'{name},<model region>' to your region map CSV (or leave region empty to "
                     f"ignore it)")


@dataclass(frozen=True)
class RegionMasks:
    """A label map on an image grid and the region name of each label (0 = background).

    Attributes:
        labels: integer Volume (``units='label'``).
        names: ``((label, region), ...)`` sorted by label; region names unique.
    """

    labels: Volume
    names: tuple

    def __post_init__(self):
        names = tuple(sorted((int(k), str(v)) for k, v in dict(self.names).items()))
        if len({v for _, v in names}) != len(names):
            raise InputError("two labels carry the same region name; merge them first")
        object.__setattr__(self, "names", names)

    @property
    def regions(self) -> tuple:
        return tuple(v for _, v in self.names)

    @property
    def label_of(self) -> dict:
        return {v: k for k, v in self.names}

    def mask(self, region: str) -> np.ndarray:
        if region not in self.label_of:
            raise InputError(f"no region {region!r}; the masks hold {', '.join(self.regions)}")
        return np.asarray(self.labels.array) == self.label_of[region]

    def volumes_ml(self) -> dict:
        """Region volumes in mL (voxel count x voxel volume)."""
        counts = np.bincount(np.asarray(self.labels.array).ravel().astype(np.int64),
                             minlength=max(self.label_of.values(), default=0) + 1)
        return {v: float(counts[k]) * self.labels.voxel_volume_ml for k, v in self.names}

    def check_grid(self, image: Volume, what: str = "image") -> None:
        """Raise InputError unless the masks lie on ``image``'s grid and frame of reference."""
        a, b = self.labels.frame_of_reference_uid, image.frame_of_reference_uid
        if a and b and a != b:
            raise InputError(f"{self.labels.source}: the masks are in another frame of reference "
                             f"than {image.source or what} ({a} vs {b}); register the images "
                             f"(register_rigid) or use masks drawn on this {what}")
        if not self.labels.same_grid(image):
            raise InputError(f"{self.labels.source}: the masks are on another grid "
                             f"({self.labels.size_xyz} at {self.labels.spacing_mm} mm) than "
                             f"{image.source or what} ({image.size_xyz} at {image.spacing_mm} mm); "
                             f"resample them (resample_masks) or draw them on this {what}")

    def relabel(self, table: dict | None = None, unmapped: str = "keep") -> "RegionMasks":
        """Map region names through ``table``; labels mapping to one region are merged."""
        arr = np.asarray(self.labels.array)
        lut = np.zeros(int(arr.max(initial=0)) + 1, dtype=np.int16)
        new_names: dict[str, int] = {}
        for k, v in self.names:
            target = map_region_name(v, table, unmapped)
            if target is None:
                continue
            new_names.setdefault(target, len(new_names) + 1)
            if k < len(lut):
                lut[k] = new_names[target]
        return RegionMasks(self.labels.with_array(lut[arr], units="label"),
                           tuple((k, v) for v, k in new_names.items()))


def masks_from_arrays(reference: Volume, masks: dict, source: str = "") -> RegionMasks:
    """Combine boolean masks ``{region: array}`` on ``reference``'s grid; the smaller region wins
    where they overlap."""
    order = sorted(masks, key=lambda n: -int(np.count_nonzero(masks[n])))
    labels = np.zeros(reference.shape, dtype=np.int16)
    names = {}
    for i, name in enumerate(order, start=1):
        m = np.asarray(masks[name], dtype=bool)
        if m.shape != reference.shape:
            raise InputError(f"{source}: mask {name!r} has shape {m.shape}, the image "
                             f"{reference.shape}; the masks are on another grid")
        labels[m] = i
        names[i] = name
    vol = reference.with_array(labels, units="label", modality="", source=source or
                               reference.source, series_uid="", description="region masks")
    return RegionMasks(vol, tuple(names.items()))


def read_label_map(path, names=None, reference: Volume | None = None,
                   region_map: dict | None = None, unmapped: str = "keep") -> RegionMasks:
    """A NIfTI label map with the region name of each label.

    Args:
        names: ``{label: name}``, or a CSV path with columns ``label,name``; ``None`` names the
            labels by number ('1', '2', ...).
        reference: if given, the map must be on this image's grid (else InputError).
    """
    from twin.imaging.io import read_nifti

    vol = read_nifti(path, units="label")
    arr = np.asarray(vol.array)
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise InputError(f"{path}: label map holds non-integer values; give an integer label "
                             f"image (0 = background)")
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 32767:
        raise InputError(f"{path}: labels must be 0..32767")
    arr = arr.astype(np.int16, copy=arr.dtype != np.int16)
    if isinstance(names, (str, Path)):
        p = Path(names)
        try:
            with open(p, newline="") as f:
                rows = list(csv.DictReader(f))
            names = {int(r["label"]): str(r["name"]).strip() for r in rows}
        except (OSError, KeyError, ValueError):
            raise InputError(f"{p}: label names need a CSV with columns label,name") from None
    present = sorted(int(v) for v in np.unique(arr) if v != 0)
    if names is None:
        names = {k: str(k) for k in present}
    names = {int(k): v for k, v in dict(names).items() if int(k) in present}
    masks = RegionMasks(vol.with_array(arr, units="label"), tuple(names.items()))
    if reference is not None:
        masks.check_grid(reference)
    return masks.relabel(region_map, unmapped) if region_map is not None else masks


# -- RTSTRUCT ---------------------------------------------------------------------------------
def _contour_points(c) -> np.ndarray:
    """ContourData (3006,0050) as floats, parsed from the raw bytes when possible (pydicom's
    per-value DS conversion takes ~100x longer on large structure sets)."""
    from pydicom.tag import Tag

    raw = c.get_item(Tag(0x3006, 0x0050))
    if raw is None:
        raise ValueError("no ContourData")
    val = raw.value
    if isinstance(val, (bytes, bytearray)):
        return np.array(bytes(val).replace(b"\\", b" ").split(), dtype=float)
    if isinstance(val, str):
        return np.array(val.replace("\\", " ").split(), dtype=float)
    return np.asarray([float(v) for v in val], dtype=float)


def _rasterise_slice(polys_ij, shape_yx):
    """Even-odd fill of closed polygons (pixel coordinates (col, row)) at pixel centres."""
    from matplotlib.path import Path as MplPath

    out = np.zeros(shape_yx, dtype=bool)
    for poly in polys_ij:
        x0, y0 = np.floor(poly.min(axis=0)).astype(int)
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, shape_yx[1] - 1), min(y1, shape_yx[0] - 1)
        if x1 < x0 or y1 < y0:
            continue
        yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        inside = MplPath(poly).contains_points(np.c_[xx.ravel(), yy.ravel()]).reshape(yy.shape)
        out[y0:y1 + 1, x0:x1 + 1] ^= inside  # XOR: a contour inside another is a hole
    return out


@quiet_dicom
def read_rtstruct(path, reference: Volume, region_map: dict | None = None,
                  unmapped: str = "keep") -> RegionMasks:
    """Rasterise an RTSTRUCT's closed planar contours onto ``reference``'s grid.

    A voxel belongs to a contour when its centre lies inside (even-odd rule: nested contours on
    one slice are holes, the convention of most planning systems). Contours must lie on the
    reference's slices (within 1% of the slice spacing) and share its frame of reference.

    Raises:
        InputError: other frame of reference, contours between or outside the slices, corrupt
            file.
    """
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=True)
    if _str(ds, "Modality", path) != "RTSTRUCT":
        raise InputError(f"{path}: not an RTSTRUCT (Modality {_str(ds, 'Modality', path)!r})")
    table = load_region_map() if region_map is None else region_map
    try:
        rois = {int(r.ROINumber): (str(r.ROIName).strip(),
                                   str(r.get("ReferencedFrameOfReferenceUID", "")).strip())
                for r in _value(ds, "StructureSetROISequence", [], path)}
        contours = list(_value(ds, "ROIContourSequence", [], path))
    except InputError:
        raise
    except Exception:
        raise InputError(f"{path}: StructureSetROISequence/ROIContourSequence corrupt; "
                         f"re-export the RTSTRUCT") from None
    ref_for = reference.frame_of_reference_uid
    nz, ny, nx = reference.shape
    masks: dict[str, np.ndarray] = {}
    for rc in contours:
        try:
            num = int(rc.ReferencedROINumber)
        except Exception:
            raise InputError(f"{path}: ROIContourSequence item without ReferencedROINumber; "
                             f"re-export the RTSTRUCT") from None
        name, roi_for = rois.get(num, (f"ROI{num}", ""))
        region = map_region_name(name, table, unmapped)
        if region is None:
            continue
        if roi_for and ref_for and roi_for != ref_for:
            raise InputError(f"{path}: contour {name!r} is in another frame of reference than "
                             f"{reference.source} ({roi_for} vs {ref_for}); register the images "
                             f"or use contours drawn on this image")
        per_slice: dict[int, list] = {}
        for c in _value(rc, "ContourSequence", [], path) or []:
            gtype = _str(c, "ContourGeometricType", path).upper()
            if gtype and gtype != "CLOSED_PLANAR":
                continue  # POINT / OPEN_PLANAR contours enclose no volume
            try:
                pts = _contour_points(c).reshape(-1, 3)
            except Exception:
                raise InputError(f"{path}: contour of {name!r} has corrupt ContourData; "
                                 f"re-export the RTSTRUCT") from None
            if len(pts) < 3:
                continue
            ijk = reference.physical_to_index(pts)
            k = ijk[:, 2]
            kr = np.round(k)
            if np.max(np.abs(k - kr)) > 0.01 or np.ptp(kr) != 0:
                raise InputError(f"{path}: a contour of {name!r} does not lie on a slice of "
                                 f"{reference.source}; the RTSTRUCT was drawn on another image "
                                 f"grid: rasterise it on that image, then resample")
            kk = int(kr[0])
            if not (0 <= kk < nz) or np.any(ijk[:, 0] < -0.5) or np.any(ijk[:, 0] > nx - 0.5) or \
                    np.any(ijk[:, 1] < -0.5) or np.any(ijk[:, 1] > ny - 0.5):
                raise InputError(f"{path}: a contour of {name!r} lies outside {reference.source}'s "
                                 f"grid; the RTSTRUCT belongs to another image")
            per_slice.setdefault(kk, []).append(ijk[:, :2])
        m = masks.setdefault(region, np.zeros(reference.shape, dtype=bool))
        for kk, polys in per_slice.items():
            m[kk] |= _rasterise_slice(polys, (ny, nx))
    masks = {k: v for k, v in masks.items() if v.any()}
    if not masks:
        raise InputError(f"{path}: no closed contours to rasterise (after the region map); check "
                         f"the RTSTRUCT and the region map")
    out = masks_from_arrays(reference, masks, source=str(path))
    return out


# -- SEG --------------------------------------------------------------------------------------
@quiet_dicom
def read_seg(path, reference: Volume, region_map: dict | None = None,
             unmapped: str = "keep") -> RegionMasks:
    """Read a DICOM SEG (binary or fractional, PS3.3 C.8.20) onto ``reference``'s grid.

    The SEG frames must lie on the reference's slices with the same in-plane grid (segmentations
    are made on the image they segment); otherwise InputError.
    """
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=False)
    if _str(ds, "Modality", path) != "SEG":
        raise InputError(f"{path}: not a DICOM SEG (Modality {_str(ds, 'Modality', path)!r})")
    table = load_region_map() if region_map is None else region_map
    for_uid = _str(ds, "FrameOfReferenceUID", path)
    if for_uid and reference.frame_of_reference_uid and for_uid != \
            reference.frame_of_reference_uid:
        raise InputError(f"{path}: the SEG is in another frame of reference than "
                         f"{reference.source}; register the images or segment this image")
    frames = _pixels(ds, path)
    nf = frames.shape[0]
    direction, positions, ps = enhanced_frame_positions(ds, path, nf)
    if not np.allclose(direction, reference.direction_matrix, atol=1e-4) or not np.allclose(
            [ps[1], ps[0]], reference.spacing_mm[:2], atol=1e-4) or frames.shape[1:] != \
            reference.shape[1:]:
        raise InputError(f"{path}: the SEG is on another grid than {reference.source}; resample "
                         f"it or segment this image")
    ijk = reference.physical_to_index(positions)
    if np.max(np.abs(ijk - np.round(ijk))) > 0.01 or np.max(np.abs(np.round(ijk[:, :2]))) > 0:
        raise InputError(f"{path}: SEG frames do not lie on {reference.source}'s voxel grid; "
                         f"resample it or segment this image")
    ks = np.round(ijk[:, 2]).astype(int)
    if ks.min() < 0 or ks.max() >= reference.shape[0]:
        raise InputError(f"{path}: SEG frames outside {reference.source}; wrong reference image")
    try:
        segs = {int(s.SegmentNumber): str(s.SegmentLabel).strip()
                for s in _value(ds, "SegmentSequence", [], path)}
        seg_of_frame = [int(fr.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                        for fr in ds.PerFrameFunctionalGroupsSequence]
    except Exception:
        raise InputError(f"{path}: SegmentSequence/SegmentIdentificationSequence corrupt; "
                         f"re-export the SEG") from None
    if _str(ds, "SegmentationType", path).upper() == "FRACTIONAL":
        maxv = _float(ds, "MaximumFractionalValue", path, 255.0)
        binary = frames >= 0.5 * maxv
    else:
        binary = frames > 0
    masks: dict[str, np.ndarray] = {}
    for f_i, (k, sn) in enumerate(zip(ks, seg_of_frame)):
        region = map_region_name(segs.get(sn, f"Segment{sn}"), table, unmapped)
        if region is None:
            continue
        m = masks.setdefault(region, np.zeros(reference.shape, dtype=bool))
        m[k] |= binary[f_i]
    masks = {k: v for k, v in masks.items() if v.any()}
    if not masks:
        raise InputError(f"{path}: the SEG holds no segments (after the region map)")
    return masks_from_arrays(reference, masks, source=str(path))


def resample_masks(masks: RegionMasks, reference: Volume) -> RegionMasks:
    """Nearest-neighbour resampling of the label map onto ``reference``'s grid."""
    from twin.imaging.resample import resample_to

    lab = resample_to(masks.labels, reference, interpolation="nearest")
    return RegionMasks(lab.replace(units="label"), masks.names)
