"""DualHRQ: Hierarchical Reasoning Model for market data."""

import os

# NOTE: numba reads this once, when first imported (dualhrq.data.bars and dualhrq.features.kernels import it).
# Intel's SVML, where installed, would vectorise a loop's logs with other rounding in the loop's body than in its
# scalar tail, so a feature row would depend on where it falls in the array; training's and serving's rows must
# not differ (dualhrq.features.kernels warns when numba was imported with SVML before this ran).
os.environ.setdefault("NUMBA_DISABLE_INTEL_SVML", "1")

__version__ = "0.1.0"
