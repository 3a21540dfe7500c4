"""pbpk_models: declarative physiologically based pharmacokinetic models of radioligands in JAX.

The model core: units, radionuclide data, the model language, regimens and simulation. It
imports neither ``calibration`` nor ``twin``.
"""
