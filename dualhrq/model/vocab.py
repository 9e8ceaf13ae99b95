"""Ids for instruments, timeframes and actions. Instrument and timeframe id 0 is always "unknown", so an unseen
name never fails a request. Free of torch: serving imports it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

UNKNOWN_ID = 0

# The policy head's output order: the index order of policy_logits, action labels and replies.
ACTIONS: tuple[str, ...] = ("BUY", "SELL", "HOLD", "CLOSE_LONG", "CLOSE_SHORT")
HOLD = ACTIONS.index("HOLD")

# The position each action leaves, by the position state before it (rows FLAT, LONG, SHORT of
# dualhrq.features; columns ACTIONS): BUY means "be long", SELL "be short", HOLD keeps what is held, a
# CLOSE flattens its own side and is a no-op otherwise. The value target and the served decision rule both
# price actions with it.
EXPOSURE_AFTER: tuple[tuple[float, ...], ...] = (
    (1.0, -1.0, 0.0, 0.0, 0.0),  # flat
    (1.0, -1.0, 1.0, 0.0, 1.0),  # long
    (1.0, -1.0, -1.0, -1.0, 0.0),  # short
)
STATE_EXPOSURE: tuple[float, ...] = (0.0, 1.0, -1.0)  # what FLAT, LONG, SHORT hold
# The action labels mark a coming move beyond the cost: upwards BUY (from flat) or CLOSE_SHORT (from short),
# downwards SELL or CLOSE_LONG (dualhrq.data.labels).
UP_MOVE = [ACTIONS.index("BUY"), ACTIONS.index("CLOSE_SHORT")]
DOWN_MOVE = [ACTIONS.index("SELL"), ACTIONS.index("CLOSE_LONG")]


def position_from_probs(probs: Any) -> Any:
    """[B] P(up-move) - P(down-move) in [-1, 1] from probabilities over ACTIONS [B, 5] (numpy or torch): the
    signed position that validation scores and the ICs rank."""
    return probs[:, UP_MOVE].sum(-1) - probs[:, DOWN_MOVE].sum(-1)

# Fixed, so every checkpoint agrees on them; new timeframes are appended, never reordered.
TIMEFRAMES: tuple[str, ...] = ("<unknown>", "1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w")


def timeframe_id(name: str) -> int:
    """'1h' -> 5; unknown timeframes map to 0. Case-insensitive ('1H', '1D')."""
    try:
        return TIMEFRAMES.index(name.lower())
    except ValueError:
        return UNKNOWN_ID


class InstrumentVocab:
    """Instrument name -> embedding row; grows by appending (pair it with HRM.grow_instruments)."""

    def __init__(self, names: list[str] | None = None) -> None:
        self._ids = {n: i + 1 for i, n in enumerate(names or [])}

    def __len__(self) -> int:
        return len(self._ids) + 1  # + the unknown row

    def id(self, name: str) -> int:
        return self._ids.get(name, UNKNOWN_ID)

    def add(self, name: str) -> int:
        if name not in self._ids:
            self._ids[name] = len(self._ids) + 1
        return self._ids[name]

    def names(self) -> list[str]:
        return sorted(self._ids, key=self._ids.__getitem__)


def replay_instrument(names: Sequence[str], preferred: str | None = None) -> str:
    """The instrument a model decides a replay of bars as: ``preferred`` (the bars' own) when the model was
    trained on it, else the model's only instrument, else "" (the shared unknown embedding)."""
    if preferred is not None and preferred in names:
        return preferred
    return names[0] if len(names) == 1 else ""
