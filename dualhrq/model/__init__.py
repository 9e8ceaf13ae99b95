"""The HRM: blocks, conditioning, heads, carry, parameter budget, diagnostics.

The torch classes load on first use (PEP 562), so that importing the torch-free dualhrq.model.vocab, as
serving does, does not import PyTorch through this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from dualhrq.model.vocab import ACTIONS

if TYPE_CHECKING:
    from dualhrq.model.hrm import HRM, Carry, ModelInputs, ModelOutputs

__all__ = ["ACTIONS", "HRM", "Carry", "ModelInputs", "ModelOutputs"]

_FROM_HRM = frozenset({"HRM", "Carry", "ModelInputs", "ModelOutputs"})


def __getattr__(name: str) -> Any:
    if name in _FROM_HRM:
        return getattr(import_module("dualhrq.model.hrm"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
