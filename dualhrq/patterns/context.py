"""The model's pattern context outside serving: lookup without a deadline, and pattern dropout for training.

Training and validation need the same context the runtime gets, computed the same way and with the same
no-look-ahead rule (a sample at time t sees only entries whose outcome was known at t, never its own), but
they have no deadline. Pattern dropout blanks whole contexts at random during training so the model's
regime-only path, the one the runtime fails open to, is trained too (calibrated, not an untested branch).
"""

from __future__ import annotations

import numpy as np

from dualhrq.errors import ConfigurationError
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary


def pattern_context(library: PatternLibrary, encoder: PatternEncoder, pattern_features: np.ndarray,
                    as_of: int | np.ndarray, pattern_dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(pattern_context float32 [B, K, P], pattern_mask float32 [B, K]) for pattern features [B, F] as of
    ``as_of`` (int ns, one or one per row: for training samples, each sample's own time)."""
    return library.pattern_context(encoder.encode(pattern_features), as_of, pattern_dim, k)


def drop_patterns(context: np.ndarray, mask: np.ndarray, rate: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copies with the whole context of each sample blanked (context and mask 0) with probability ``rate``:
    exactly what the runtime sends when it fails open."""
    if not 0 <= rate <= 1:
        raise ConfigurationError(f"train.pattern_dropout: must be in [0, 1], got {rate}")
    keep = (rng.random(len(mask)) >= rate).astype(mask.dtype)
    return context * keep[:, None, None], mask * keep[:, None]
