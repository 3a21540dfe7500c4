"""Virtual dose-escalation trials on virtual populations, and cohorts of real studies on Dask.

- :mod:`~twin.trials.designs`: 3+3, BOIN, CRM, vectorised over trials;
- :mod:`~twin.trials.populations`: named, versioned virtual populations (``mcrpc``:
  177Lu-PSMA-617; ``net``: 177Lu-DOTATATE on the ``sstr`` model);
- :mod:`~twin.trials.engine`: course doses/BEDs of all patients at all levels, one batched solve
  (vmap, chunks, ``jax.sharding`` over devices);
- :mod:`~twin.trials.outcomes`: pluggable toxicity (NTCP) and efficacy models;
- :mod:`~twin.trials.virtual`: virtual trials and fixed vs dosimetry-guided arms;
- :mod:`~twin.trials.cohort`: real studies through the whole pipeline (``twin run``'s
  ``run_pipeline``), one Dask task per patient.
See docs/trials.md.
"""

from .designs import DESIGNS as DESIGNS
from .designs import OutcomeStream as OutcomeStream
from .designs import TrialResults as TrialResults
from .designs import boin as boin
from .designs import boin_boundaries as boin_boundaries
from .designs import crm as crm
from .designs import crm_skeleton as crm_skeleton
from .designs import run_design as run_design
from .designs import three_plus_three as three_plus_three
from .outcomes import OutcomeModel as OutcomeModel
from .outcomes import default_outcome_model as default_outcome_model
from .populations import POPULATIONS as POPULATIONS
from .populations import radiopharmaceutical_of as radiopharmaceutical_of
from .populations import sample as sample_population
from .virtual import compare_arms as compare_arms
from .virtual import virtual_trial as virtual_trial
