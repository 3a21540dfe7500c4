"""Patient data in and out: DICOM and NIfTI studies, activity quantitation, masks, lesions,
resampling and registration, and the synthetic patient written as real DICOM.

Conventions: arrays ``[z, y, x]``, geometry ``(x, y, z)`` mm in DICOM patient coordinates (see
:mod:`twin.imaging.volume`); activity MBq, concentration MBq/mL, time h inside the code.
"""

from twin.imaging.dicom import (
    FolderIndex as FolderIndex,
    ImageSeries as ImageSeries,
    SeriesInfo as SeriesInfo,
    read_series as read_series,
    scan_folder as scan_folder,
)
from twin.imaging.dicom_extra import read_rtdose as read_rtdose
from twin.imaging.io import (
    read_nifti as read_nifti,
    read_table as read_table,
    write_nifti as write_nifti,
    write_table as write_table,
)
from twin.imaging.lesions import (
    LesionResult as LesionResult,
    fuzzy_c_means as fuzzy_c_means,
    segment_lesions as segment_lesions,
    suv_image as suv_image,
)
from twin.imaging.masks import (
    MODEL_REGIONS as MODEL_REGIONS,
    RegionMasks as RegionMasks,
    load_region_map as load_region_map,
    map_region_name as map_region_name,
    masks_from_arrays as masks_from_arrays,
    read_label_map as read_label_map,
    read_rtstruct as read_rtstruct,
    read_seg as read_seg,
    resample_masks as resample_masks,
)
from twin.imaging.quantitation import (
    InjectionRecord as InjectionRecord,
    decay_correct as decay_correct,
    decay_factor as decay_factor,
    injection_from_dicom as injection_from_dicom,
    pet_concentration as pet_concentration,
    spect_concentration as spect_concentration,
    suv_bw as suv_bw,
)
from twin.imaging.resample import (
    RigidResult as RigidResult,
    register_rigid as register_rigid,
    resample_to as resample_to,
)
from twin.imaging.study import (
    EmissionScan as EmissionScan,
    Patient as Patient,
    Study as Study,
    describe_folder as describe_folder,
    load_study as load_study,
)
from twin.imaging.volume import Volume as Volume
from twin.imaging.phantom import (
    Phantom as Phantom,
    example_tacs as example_tacs,
    make_phantom as make_phantom,
    phantom_study as phantom_study,
    simulate_phantom as simulate_phantom,
    write_phantom as write_phantom,
)
