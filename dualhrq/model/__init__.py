"""The HRM: blocks, conditioning, heads, carry, parameter budget, diagnostics."""

from dualhrq.model.heads import ACTIONS
from dualhrq.model.hrm import HRM, Carry, ModelInputs, ModelOutputs

__all__ = ["ACTIONS", "HRM", "Carry", "ModelInputs", "ModelOutputs"]
