"""Parameter budget per component, counted on an instantiated model (never a formula)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dualhrq.config import BudgetConfig
from dualhrq.model.hrm import HRM


def _count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@dataclass(frozen=True)
class BudgetRow:
    component: str
    params: int
    cap: int | None  # None: no cap of its own (counts toward the total only)

    @property
    def over(self) -> bool:
        return self.cap is not None and self.params > self.cap


def parameter_table(model: HRM, budget: BudgetConfig) -> list[BudgetRow]:
    """Rows for H, L, heads, conditioning, input/embeddings; each injection projection counts to the level it feeds."""
    rows = [
        BudgetRow("h_module", _count(model.h_module, model.l_to_h), budget.h_max),
        BudgetRow("l_module", _count(model.l_module, model.h_to_l), budget.l_max),
        BudgetRow("heads", _count(model.heads), budget.heads_max),
        BudgetRow("conditioning", _count(model.conditioning), budget.conditioning_max),
        BudgetRow("input_embeddings", _count(model.input), None),
    ]
    accounted = sum(r.params for r in rows)
    total = _count(model)
    if accounted != total:  # a new submodule must be assigned a row, or the table would lie
        raise AssertionError(f"parameter table covers {accounted} of {total} parameters")
    return rows


def budget_violations(rows: list[BudgetRow], budget: BudgetConfig) -> list[str]:
    """Human-readable reasons the model is outside its budget; empty when it fits."""
    out = [f"{r.component}: {r.params:,} > cap {r.cap:,}" for r in rows if r.over]
    total = sum(r.params for r in rows)
    if not budget.total_min <= total <= budget.total_max:
        out.append(f"total: {total:,} outside {budget.total_min:,}-{budget.total_max:,}")
    return out
