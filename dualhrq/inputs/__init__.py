"""Bars -> model inputs exactly as training made them: the InputPipeline and its persisted Artifacts."""

from dualhrq.inputs.artifacts import Artifacts
from dualhrq.inputs.pipeline import InputPipeline

__all__ = ["Artifacts", "InputPipeline"]
