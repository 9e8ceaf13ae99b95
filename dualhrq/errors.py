"""The error hierarchy used across the package (seed 001's API reference).

Catch ``HRMError`` to handle anything DualHRQ raises on purpose; the subclasses say which stage failed.
"""

from __future__ import annotations


class HRMError(Exception):
    """Base class of every error DualHRQ raises deliberately."""


class ConfigurationError(HRMError):
    """A config file or value is missing, of the wrong type or out of range."""


class ModelLoadError(HRMError):
    """A checkpoint or bundle cannot be loaded: missing file, mismatch, corruption, bad hash."""


class InferenceError(HRMError):
    """The model or an engine failed while computing outputs."""


class ConvergenceError(HRMError):
    """Training diverged (non-finite loss or gradients) or the recurrent state blew up."""


class DataError(HRMError):
    """Input market data is malformed: unsorted timestamps, non-positive prices, NaN, too few bars."""
