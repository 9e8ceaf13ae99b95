"""How a feature family declares its columns: one table, name -> the function that computes the column.

The table is the single source of a family's column order: its names tuple is the table's keys and its matrix
is filled by walking the table, so a name cannot drift away from the column it labels. Each function reads a
family's shared intermediates (window sums and the like, computed once per call) and returns one column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np

T = TypeVar("T")
Columns = Mapping[str, Callable[[T], np.ndarray]]  # in column order; T: the family's shared intermediates


def fill(out: np.ndarray, columns: Columns[T], shared: T) -> np.ndarray:
    """out[:, j] = the j-th column of the table computed from ``shared``; returns out."""
    for j, column in enumerate(columns.values()):
        out[:, j] = column(shared)
    return out
