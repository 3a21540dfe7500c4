"""calibration: personalisation of PBPK models (MAP fits, uncertainty) and MBAM reduction.

Imports only ``pbpk_models``.
"""

from calibration.fit import NOISE as NOISE
from calibration.fit import NOISE_LESION as NOISE_LESION
from calibration.fit import is_lesion as is_lesion
from calibration.fit import noise_model as noise_model
from calibration.fit import noise_sigma as noise_sigma
from calibration.fit import NoiseModel as NoiseModel
from calibration.fit import Objective as Objective
from calibration.fit import Problem as Problem
from calibration.fit import build_problem as build_problem
from calibration.fit import fit as fit
from calibration.fit import model_spec as model_spec
from calibration.fit import synthetic_observations as synthetic_observations
from calibration.observations import Observations as Observations
from calibration.priors import PERSONAL as PERSONAL
from calibration.priors import Prior as Prior
from calibration.priors import default_prior as default_prior
from calibration.priors import prior_catalogue as prior_catalogue
from calibration.twinfile import read_twin as read_twin
from calibration.twinfile import twin_from_dict as twin_from_dict
from calibration.twinfile import twin_to_dict as twin_to_dict
from calibration.twinfile import write_twin as write_twin
from calibration.uncertainty import Posterior as Posterior
from calibration.uncertainty import format_identifiability as format_identifiability
from calibration.uncertainty import identifiability as identifiability
from calibration.uncertainty import laplace_covariance as laplace_covariance
