"""Treatment planning on a twin: what-if dosimetry, limits, optimisation, adaptive re-planning.

Public API:
- :class:`Limit`, :func:`parse_limit`, :func:`default_limits`, :data:`KNOWN_LIMITS` (sources);
- :class:`PlanSettings`, :class:`Planner` (``what_if(regimen)``, ``optimise(limits, fixed=...)``),
  :class:`Plan` (``to_frame()`` PLAN.csv, ``summary()`` SUMMARY.csv);
- :func:`plan_twin` (posterior -> Plan), :func:`replan` (after cycle k: update the posterior
  with new observations and re-optimise the remaining cycles);
- :func:`interval_table` (what-if: per cycle and cumulative TIA, dose, BED with credible
  intervals); :func:`plot_cumulative` (cumulative BED/dose per organ against cycle with the limits);
- :func:`posterior_from_prior` (a twin without data: the population prior as posterior);
- :func:`parse_lesion_response`, :class:`PerCycleDecrease`, :class:`LQRegression`,
  :data:`LESION_RESPONSE_PRESETS` (optional lesion response between cycles:
  ``Planner(..., lesion_response=...)``, ``--lesion-response``; twin.planning.response).
See docs/planning.md.
"""

from twin.errors import PlanInfeasible as PlanInfeasible

from .limits import KNOWN_LIMITS as KNOWN_LIMITS
from .limits import Limit as Limit
from .limits import default_limits as default_limits
from .limits import parse_limit as parse_limit
from .optimise import Plan as Plan
from .optimise import Planner as Planner
from .optimise import PlanSettings as PlanSettings
from .replan import plan_twin as plan_twin
from .replan import posterior_from_prior as posterior_from_prior
from .replan import replan as replan
from .replan import therapy_schedule as therapy_schedule
from .report import interval_table as interval_table
from .report import plot_cumulative as plot_cumulative
from .response import PRESETS as LESION_RESPONSE_PRESETS
from .response import LQRegression as LQRegression
from .response import PerCycleDecrease as PerCycleDecrease
from .response import parse_lesion_response as parse_lesion_response
