"""A 3D image on a physical grid: the one array type that passes between imaging stages.

Conventions (the same as SimpleITK, so that conversion is exact):

- ``array`` is indexed ``[z, y, x]`` (slice, row, column);
- ``spacing_mm``, ``origin_mm`` are ``(x, y, z)`` in millimetres, in the DICOM patient
  coordinate system (LPS: +x to the patient's left, +y posterior, +z superior; DICOM PS3.3
  C.7.6.2.1.1);
- ``direction`` is the 3x3 matrix, row-major as 9 numbers, whose *columns* are the unit vectors of
  the x, y and z index axes; a voxel's centre is ``origin + direction @ (spacing * (i, j, k))``.

Volumes are immutable: the array is made read-only, and every operation returns a new Volume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from twin.errors import InputError

# Two grids are "the same" when every voxel centre agrees to this distance (mm). DICOM DS values
# carry at most 16 characters, so positions written and read back agree to ~1e-10 mm; 1e-4 mm is
# far below any voxel size and above rounding noise.
GRID_TOLERANCE_MM = 1e-4


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image with its geometry and what its values mean.

    Attributes:
        array: voxel values, shape ``(nz, ny, nx)``.
        spacing_mm: voxel size ``(x, y, z)`` in mm.
        origin_mm: centre of voxel ``[0, 0, 0]`` in patient coordinates (mm).
        direction: 9 numbers, row-major 3x3, columns = index-axis unit vectors.
        units: what the values are: ``'HU'``, ``'MBq/mL'``, ``'counts'``, ``'SUVbw'``,
            ``'label'``, ``'MBq h'`` (per voxel) or ``''``.
        modality: DICOM modality (``'CT'``, ``'PT'``, ``'NM'``) or ``''``.
        frame_of_reference_uid: DICOM FrameOfReferenceUID; ``''`` when unknown (NIfTI).
        series_uid: DICOM SeriesInstanceUID or ``''``.
        acquisition_start: start of the acquisition, ``None`` when unknown.
        description: free text (SeriesDescription); never patient-identifying.
        source: the file or folder read, for error messages.
    """

    array: np.ndarray
    spacing_mm: tuple
    origin_mm: tuple
    direction: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    units: str = ""
    modality: str = ""
    frame_of_reference_uid: str = ""
    series_uid: str = ""
    acquisition_start: datetime | None = None
    description: str = ""
    source: str = ""

    def __post_init__(self):
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InputError(f"{self.source or 'volume'}: expected a 3D image, got shape "
                             f"{arr.shape}")
        if arr.flags.writeable:
            arr = arr.view()
            arr.flags.writeable = False
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))
        object.__setattr__(self, "direction", tuple(float(s) for s in self.direction))
        if len(self.spacing_mm) != 3 or len(self.origin_mm) != 3 or len(self.direction) != 9:
            raise InputError(f"{self.source or 'volume'}: spacing and origin need 3 numbers, "
                             f"direction 9")
        if min(self.spacing_mm) <= 0 or not np.all(np.isfinite(self.spacing_mm)):
            raise InputError(f"{self.source or 'volume'}: voxel spacing must be positive, got "
                             f"{self.spacing_mm}")

    # -- geometry -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """``(nz, ny, nx)``."""
        return tuple(self.array.shape)

    @property
    def size_xyz(self) -> tuple:
        """``(nx, ny, nz)`` as SimpleITK counts it."""
        return tuple(int(n) for n in self.array.shape[::-1])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
        sx, sy, sz = self.spacing_mm
        return sx * sy * sz / 1000.0

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical(self, ijk) -> np.ndarray:
        """Voxel index ``(..., 3)`` as ``(x, y, z)`` index order -> patient position in mm."""
        ijk = np.asarray(ijk, dtype=float)
        scaled = ijk * np.asarray(self.spacing_mm)
        return np.asarray(self.origin_mm) + scaled @ self.direction_matrix.T

    def physical_to_index(self, xyz) -> np.ndarray:
        """Patient position in mm ``(..., 3)`` -> continuous voxel index ``(i, j, k)``."""
        xyz = np.asarray(xyz, dtype=float) - np.asarray(self.origin_mm)
        return (xyz @ self.direction_matrix) / np.asarray(self.spacing_mm)

    def same_grid(self, other: "Volume", tol_mm: float = GRID_TOLERANCE_MM) -> bool:
        """True when both volumes have the same shape and every voxel centre within ``tol_mm``."""
        if self.shape != other.shape:
            return False
        # The farthest corner moves most under a spacing or direction difference.
        corners = np.array([[0, 0, 0], [n - 1 for n in self.size_xyz]], dtype=float)
        return bool(np.max(np.abs(self.index_to_physical(corners)
                                  - other.index_to_physical(corners))) <= tol_mm)

    def geometry(self) -> dict:
        """Geometry only (for messages and JSON): spacing, origin, direction, size."""
        return {"size_xyz": list(self.size_xyz), "spacing_mm": list(self.spacing_mm),
                "origin_mm": list(self.origin_mm), "direction": list(self.direction),
                "frame_of_reference_uid": self.frame_of_reference_uid}

    def with_array(self, array, **changes) -> "Volume":
        """The same grid with new values (and optionally other fields changed)."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise InputError(f"{self.source or 'volume'}: new array shape {array.shape} differs "
                             f"from the grid {self.shape}")
        return dataclasses.replace(self, array=array, **changes)

    def replace(self, **changes) -> "Volume":
        return dataclasses.replace(self, **changes)

    # -- SimpleITK ------------------------------------------------------------------------
    def to_sitk(self):
        """A SimpleITK image with exactly this geometry (the array is copied)."""
        import SimpleITK as sitk

        arr = self.array
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        img.SetSpacing(self.spacing_mm)
        img.SetOrigin(self.origin_mm)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img, **fields) -> "Volume":
        """A Volume from a 3D SimpleITK image (geometry copied exactly)."""
        import SimpleITK as sitk

        if img.GetDimension() != 3:
            raise InputError(f"{fields.get('source', 'image')}: expected a 3D image, got "
                             f"{img.GetDimension()}D; give a single 3D volume")
        return cls(array=sitk.GetArrayFromImage(img), spacing_mm=img.GetSpacing(),
                   origin_mm=img.GetOrigin(), direction=img.GetDirection(), **fields)


def check_axial(direction, source: str, tol: float = 1e-4) -> None:
    """Raise InputError unless the rows run along +-x and the columns along +-y (axial slices).

    Oblique and sagittal/coronal acquisitions are rejected rather than silently resampled: the
    user should reformat them to axial in their viewer or resample them explicitly.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    row, col = d[:, 0], d[:, 1]
    if abs(abs(row[0]) - 1) > tol or abs(abs(col[1]) - 1) > tol:
        raise InputError(
            f"{source}: image orientation {np.round(np.r_[row, col], 4).tolist()} is not axial; "
            f"reformat the series to axial slices (ImageOrientationPatient 1\\0\\0\\0\\1\\0) first")
