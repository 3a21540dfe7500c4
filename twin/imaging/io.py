"""NIfTI volumes and tables (CSV, Parquet) in and out; every write atomic, never over an input.

NIfTI is read and written with SimpleITK, which converts NIfTI's RAS world coordinates to the
DICOM LPS convention of :class:`~twin.imaging.volume.Volume`, so geometry survives a round trip.
"""

from __future__ import annotations

from pathlib import Path

from twin.atomic import atomic_path
from twin.errors import InputError
from twin.imaging.volume import Volume


def read_nifti(path, units: str = "", modality: str = "") -> Volume:
    """Read a 3D NIfTI file (``.nii`` or ``.nii.gz``) as a Volume; ``units`` says what it holds."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("NiftiImageIO")
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read NIfTI ({str(exc).strip().splitlines()[-1][:100]}); "
                         f"the file is corrupt or not NIfTI: re-export it") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: vector/colour NIfTI; give a scalar 3D volume")
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    return Volume.from_sitk(img, units=units, modality=modality, source=str(path))


def write_nifti(volume: Volume, path, inputs=()) -> Path:
    """Write a Volume as NIfTI atomically; refuses to overwrite any path in ``inputs``."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(f"{path}: NIfTI file names end in .nii or .nii.gz")
    img = volume.to_sitk()
    with atomic_path(path, inputs=inputs) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=path.name.lower().endswith(".gz"))
    return path


def write_table(df, path, inputs=()) -> Path:
    """Write a DataFrame as CSV (``.csv``) or Parquet (``.parquet``, needs pyarrow), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_path(path, inputs=inputs) as tmp:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        elif suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise InputError(f"{path}: writing Parquet needs the pyarrow package "
                                 f"(pip install pyarrow), or write .csv") from None
            df.to_parquet(tmp, index=False)
        else:
            raise InputError(f"{path}: unknown table format {suffix!r}; use .csv or .parquet")
    return path


def read_table(path):
    """Read a CSV or Parquet table as a DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read table ({type(exc).__name__}); check the file "
                         f"format") from None
