"""Dose engine: voxel TIA -> absorbed dose (kernel convolution), BED, DVH, RT Dose.

See docs/dose.md for the method, its sources and its measured accuracy.
"""

from twin.dosimetry.convolve import (
    KERNEL_FFT_CACHE as KERNEL_FFT_CACHE,
    convolve_dose as convolve_dose,
    convolve_fft as convolve_fft,
    fft_shape as fft_shape,
    next_smooth as next_smooth,
)
from twin.dosimetry.density import (
    density_scale as density_scale,
    hu_to_density as hu_to_density,
    schneider_table as schneider_table,
)
from twin.dosimetry.dose import (
    DoseResult as DoseResult,
    accumulate_cycles as accumulate_cycles,
    check_tia as check_tia,
    compute_dose as compute_dose,
)
from twin.dosimetry.dvh import (
    cumulative_dvh as cumulative_dvh,
    plot_dvh as plot_dvh,
    region_statistics as region_statistics,
)
from twin.dosimetry.images import dose_from_images as dose_from_images
from twin.dosimetry.kernels import (
    DATABASE_NUCLIDES as DATABASE_NUCLIDES,
    DATABASE_VOXEL_SIZES_MM as DATABASE_VOXEL_SIZES_MM,
    MEDIUM_DENSITY_G_CM3 as MEDIUM_DENSITY_G_CM3,
    PointKernelModel as PointKernelModel,
    chain_members as chain_members,
    database_energy_mev as database_energy_mev,
    dose_kernel as dose_kernel,
    fit_point_kernel as fit_point_kernel,
    kernel_energy_mev as kernel_energy_mev,
    load_database_kernel as load_database_kernel,
    local_energy_mev as local_energy_mev,
    voxel_s_values as voxel_s_values,
)
from twin.dosimetry.radiobiology import (
    LKB_KIDNEY as LKB_KIDNEY,
    TISSUES as TISSUES,
    LKBParameters as LKBParameters,
    TissueRadiobiology as TissueRadiobiology,
    bed as bed,
    bed_monoexponential as bed_monoexponential,
    eqd2 as eqd2,
    generalised_eud as generalised_eud,
    lea_catcheside as lea_catcheside,
    ntcp_lkb as ntcp_lkb,
    red_marrow_dose as red_marrow_dose,
    tcp_poisson as tcp_poisson,
    tissue as tissue,
)
from twin.dosimetry.rtdose import (
    read_rtdose as read_rtdose,
    write_nifti as write_nifti,
    write_rtdose as write_rtdose,
)
from twin.dosimetry.voxel_pbpk import (
    RegionSubsystem as RegionSubsystem,
    receptor_scale_from_uptake as receptor_scale_from_uptake,
    region_subsystem as region_subsystem,
    solve_region as solve_region,
    voxel_tia_image as voxel_tia_image,
    voxel_tia_pbpk as voxel_tia_pbpk,
)
from twin.dosimetry.voxel_tia import spread_region_tia as spread_region_tia
