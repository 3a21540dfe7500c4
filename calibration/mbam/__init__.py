"""MBAM: model reduction by manifold boundaries (Transtrum & Qiu, PRL 2014;113:098701).

See docs/mbam.md. Pieces: :mod:`~calibration.mbam.predictions` (protocol and r(theta)),
:mod:`~calibration.mbam.geometry` (Jacobian, metric spectrum, A_vv, geodesic, limits),
:mod:`~calibration.mbam.limits` (limits applied to the ModelSpec), :mod:`~calibration.mbam.reduce`
(the loop with re-fits), :mod:`~calibration.mbam.io` (REDUCED.json).
"""

from calibration.mbam.geometry import Geodesic as Geodesic
from calibration.mbam.geometry import Limit as Limit
from calibration.mbam.geometry import avv as avv
from calibration.mbam.geometry import geodesic as geodesic
from calibration.mbam.geometry import identify_limit as identify_limit
from calibration.mbam.geometry import jacobian as jacobian
from calibration.mbam.geometry import plot_spectrum as plot_spectrum
from calibration.mbam.geometry import spectrum as spectrum
from calibration.mbam.io import dumps_hierarchy as dumps_hierarchy
from calibration.mbam.io import load_reduced as load_reduced
from calibration.mbam.limits import apply_limit as apply_limit
from calibration.mbam.predictions import Protocol as Protocol
from calibration.mbam.predictions import prediction_map as prediction_map
from calibration.mbam.reduce import Hierarchy as Hierarchy
from calibration.mbam.reduce import reduce_model as reduce_model
from calibration.mbam.reduce import refit as refit
from calibration.mbam.affine import reduce_affine as reduce_affine
from calibration.mbam.library import load_shipped as load_shipped
from calibration.mbam.library import shipped_names as shipped_names
from calibration.mbam.library import sloppiness_at as sloppiness_at
from calibration.mbam.predictions import full_parameter_set as full_parameter_set
