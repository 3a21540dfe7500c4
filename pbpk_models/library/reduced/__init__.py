"""Reduced models shipped with twin: REDUCED.json files written by ``twin reduce`` (MBAM) and
finalised by ``python -m calibration.mbam.library finalize``. Load them with
:func:`calibration.mbam.library.load_shipped`; each file's ``produced`` / ``finalized`` headers
record how it was made (command, date, protocol, tolerance)."""
