"""calibration: personalisation of PBPK models (MAP fits, uncertainty) and MBAM reduction.

Imports only ``pbpk_models``.
"""
