"""twin: the patient's theranostic digital twin: imaging, dose, planning, trials, command line."""

__version__ = "0.1.0"
