"""The error hierarchy used across the package, and the exit codes every command shares.

Catch ``HRMError`` to handle anything DualHRQ raises on purpose; the subclasses say which stage failed.
"""

from __future__ import annotations

# The one exit-code table of `dualhrq` (shown in `dualhrq --help`).
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran and a check it exists for failed: parity, budget, leakage, hashes, ...
EXIT_ERROR = 2  # bad input or an error: a config, data or bundle that cannot be used (an HRMError)
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_CODES_HELP = ("exit status: 0 ok; 1 a check failed (parity, parameter budget, leakage, bundle hashes, "
                   "compliance violations, a missed SLO); 2 bad input or an error, named on stderr; "
                   "130 interrupted")


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
