"""Served actions: the policy's probabilities, calibrated, through a cost-aware decision rule.

The policy's argmax almost never leaves HOLD (HOLD is the majority label in every position state), and its
probabilities are not prices. The rule turns them into an expected forward return and trades only when the
gain over holding clears the cost:

1. calibrate: p = softmax(logits / temperature), the temperature fitted on the validation slice (least NLL);
2. expected forward return: mu = sum_c p_c * m[s, c], with m[s, c] the mean forward return of the TRAINING
   samples of label c in position state s (BUY's are up-moves beyond the threshold, HOLD's mostly noise);
3. every action the label rule allows from state s (flat: BUY, SELL, HOLD; long: HOLD, CLOSE_LONG; short:
   HOLD, CLOSE_SHORT) leaves an exposure e (vocab.EXPOSURE_AFTER) and gains e * mu - |e - e_s| * cost / 2;
4. the best action is taken when its gain beats HOLD's by more than ``min_edge * cost``, otherwise HOLD.

``min_edge`` is fitted on the validation slice: the grid value whose decisions earn the most there, net of
cost. The held-out tail is never used. Free of torch: the server decides with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec
import numpy as np
from numba import njit

from dualhrq.model.vocab import ACTIONS, EXPOSURE_AFTER, HOLD, STATE_EXPOSURE

ALLOWED: tuple[tuple[int, ...], ...] = tuple(
    tuple(ACTIONS.index(a) for a in names)
    for names in (("BUY", "SELL", "HOLD"), ("HOLD", "CLOSE_LONG"), ("HOLD", "CLOSE_SHORT")))  # FLAT, LONG, SHORT
TEMPERATURES = tuple(float(t) for t in np.exp(np.linspace(np.log(0.25), np.log(4.0), 41)))
MIN_EDGES: tuple[float | None, ...] = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, None)
_AFTER = np.asarray(EXPOSURE_AFTER, np.float64)  # [3, 5]
_BEFORE = np.asarray(STATE_EXPOSURE, np.float64)  # [3]
_MASK = np.array([[a in allowed for a in range(len(ACTIONS))] for allowed in ALLOWED])  # [3, 5]


@dataclass(frozen=True)
class Decision:
    """What one sample's heads decided (before the compliance gate)."""

    action: str  # one of ACTIONS
    quantity: float  # in [model.quantity_min, model.quantity_max]; 0 for HOLD
    probs: list[float]  # the policy's probabilities, ACTIONS order
    confidence: float  # the chosen action's probability
    forecast_coarse: float  # next coarse-period log return
    forecast_fine: float  # log return over the label horizon of fine bars
    value: float  # expected realised return of the action, in units of the fine return's training std
    regime: int
    regime_probs: list[float]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class DecisionRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A fitted rule. Returns and the cost are in units of the training std of the forward return."""

    temperature: float
    class_returns: list[list[float]]  # [state][action]: mean forward return of training labels
    cost: float  # round trip
    min_edge: float | None  # in multiples of the cost; None: never trades
    fitted_on: str  # which samples the temperature and min_edge came from, in words
    validation_gain: float  # mean gain per sample over always-HOLD on those samples, at min_edge
    validation_trade_share: float  # share of those samples it did not HOLD

    def __post_init__(self) -> None:  # a stored rule is checked as it is decoded; the error names the field
        shape = np.shape(self.class_returns)
        if shape != (len(ALLOWED), len(ACTIONS)) or not np.isfinite(self.class_returns).all():
            raise ValueError(f"class_returns: expected [{len(ALLOWED)}][{len(ACTIONS)}] finite numbers, got shape "
                             f"{list(shape)}")
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature: expected a finite number > 0, got {self.temperature}")
        for name in ("cost", "min_edge"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < math.inf:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value}")

    @property
    def margin(self) -> float:
        """How far the best action's gain must beat HOLD's (inf: never)."""
        return math.inf if self.min_edge is None else self.min_edge * self.cost

    def gains(self, logits: np.ndarray, state: np.ndarray) -> np.ndarray:
        """[B, 5] expected gain of each action (-inf where the state does not allow it)."""
        logits = np.ascontiguousarray(logits, np.float64)
        state = np.ascontiguousarray(state, np.int64)
        # The compiled loop reads without bounds checks: check the shapes and the states here.
        if logits.ndim != 2 or logits.shape[1] != len(ACTIONS) or state.shape != logits.shape[:1]:
            raise ValueError(f"logits [B, {len(ACTIONS)}] and states [B] expected, got shapes {list(logits.shape)} "
                             f"and {list(state.shape)}")
        if len(state) and not 0 <= int(state.min()) <= int(state.max()) < len(ALLOWED):
            raise ValueError(f"states: must be in 0..{len(ALLOWED) - 1} (FLAT, LONG, SHORT), got "
                             f"{int(state.min())}..{int(state.max())}")
        out = np.empty(logits.shape)
        _gain_rows(logits, state, self.temperature,
                   np.asarray(self.class_returns, np.float64), _AFTER, _BEFORE, _MASK, self.cost, out)
        return out

    def choose(self, logits: np.ndarray, state: np.ndarray) -> np.ndarray:
        """[B] int64 action indices for policy logits [B, 5] in position states [B]."""
        return _decide(self.gains(logits, state), self.margin)

    def choose_row(self, logits: np.ndarray, state: int) -> int:
        """``choose`` for one row, logits [5] (the server's case): one compiled call."""
        logits = np.asarray(logits, np.float64)
        if logits.shape != (len(ACTIONS),):
            raise ValueError(f"logits [{len(ACTIONS)}] expected, got shape {list(logits.shape)}")
        if not 0 <= state < len(ALLOWED):
            raise ValueError(f"state: must be in 0..{len(ALLOWED) - 1} (FLAT, LONG, SHORT), got {state}")
        return int(_choose_row(logits, state, self.temperature, np.asarray(self.class_returns, np.float64), _AFTER,
                               _BEFORE, _MASK, self.cost, self.margin, HOLD))


def _decide(gains: np.ndarray, margin: float) -> np.ndarray:
    out = np.empty(len(gains), np.int64)
    _decide_rows(gains, margin, HOLD, out)
    return out


# The rule's arithmetic, compiled: the server decides one row per request, where numpy's cost per call, not the
# arithmetic, would be the price; fitting runs the same loops over every validation sample.


@njit(cache=True, nogil=True, error_model="numpy")
def _row_gains(logits: np.ndarray, s: int, temperature: float, class_returns: np.ndarray, after: np.ndarray,
               before: np.ndarray, allowed: np.ndarray, cost: float, probs: np.ndarray, out: np.ndarray) -> None:
    """out[a]: e_a * mu - |e_a - e_s| * cost / 2 where state s allows action a, else -inf; mu is the expected
    forward return under the calibrated probabilities softmax(logits / temperature). ``probs``: scratch."""
    n_actions = logits.shape[0]
    top = -np.inf
    for a in range(n_actions):
        top = max(top, logits[a] / temperature)
    total = 0.0
    for a in range(n_actions):
        probs[a] = math.exp(logits[a] / temperature - top)
        total += probs[a]
    mu = 0.0
    for a in range(n_actions):
        mu += probs[a] / total * class_returns[s, a]
    for a in range(n_actions):
        gain = after[s, a] * mu - abs(after[s, a] - before[s]) * (cost / 2)
        out[a] = gain if allowed[s, a] else -np.inf


@njit(cache=True, nogil=True)
def _best(gains: np.ndarray, margin: float, hold: int) -> int:
    """The best action (the first of equals) where its gain beats HOLD's by more than ``margin``, else HOLD."""
    best = 0
    for a in range(1, gains.shape[0]):
        if gains[a] > gains[best]:
            best = a
    return best if gains[best] - gains[hold] > margin else hold


@njit(cache=True, nogil=True, error_model="numpy")
def _gain_rows(logits: np.ndarray, state: np.ndarray, temperature: float, class_returns: np.ndarray,
               after: np.ndarray, before: np.ndarray, allowed: np.ndarray, cost: float, out: np.ndarray) -> None:
    probs = np.empty(logits.shape[1])
    for b in range(logits.shape[0]):
        _row_gains(logits[b], state[b], temperature, class_returns, after, before, allowed, cost, probs, out[b])


@njit(cache=True, nogil=True)
def _decide_rows(gains: np.ndarray, margin: float, hold: int, out: np.ndarray) -> None:
    for b in range(gains.shape[0]):
        out[b] = _best(gains[b], margin, hold)


@njit(cache=True, nogil=True, error_model="numpy")
def _choose_row(logits: np.ndarray, s: int, temperature: float, class_returns: np.ndarray, after: np.ndarray,
                before: np.ndarray, allowed: np.ndarray, cost: float, margin: float, hold: int) -> int:
    gains = np.empty(logits.shape[0])
    _row_gains(logits, s, temperature, class_returns, after, before, allowed, cost, np.empty(logits.shape[0]), gains)
    return _best(gains, margin, hold)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The grid temperature with the least negative log-likelihood of ``labels``."""
    nll = [-np.log(softmax(logits / t)[np.arange(len(labels)), labels] + 1e-300).mean() for t in TEMPERATURES]
    return TEMPERATURES[int(np.argmin(nll))]


def class_returns(labels: np.ndarray, states: np.ndarray, returns: np.ndarray) -> list[list[float]]:
    """[state][action] mean forward return of the samples with that label in that state (0 where none)."""
    table = np.zeros((len(ALLOWED), len(ACTIONS)))
    for s in range(len(ALLOWED)):
        for a in range(len(ACTIONS)):
            sel = (states == s) & (labels == a)
            if sel.any():
                table[s, a] = float(returns[sel].mean())
    return table.tolist()


def realised_gain(actions: np.ndarray, states: np.ndarray, returns: np.ndarray, cost: float) -> np.ndarray:
    """[B] what each decision earned over HOLD: (e_a - e_s) * forward return - |e_a - e_s| * cost / 2."""
    change = _AFTER[states, actions] - _BEFORE[states]
    return change * returns - np.abs(change) * (cost / 2)


def fit_rule(train: tuple[np.ndarray, np.ndarray, np.ndarray], val_logits: np.ndarray,
             val: tuple[np.ndarray, np.ndarray, np.ndarray], cost: float, fitted_on: str) -> DecisionRule:
    """A rule from (labels, states, forward returns) of the training samples (the class returns) and of the
    validation samples with their policy logits (temperature, then min_edge by net gain)."""
    labels, states, returns = (np.asarray(x) for x in val)
    temperature = fit_temperature(np.asarray(val_logits, np.float64), labels)
    rule = DecisionRule(temperature, class_returns(*(np.asarray(x) for x in train)), float(cost), 0.0, fitted_on,
                        0.0, 0.0)
    gains = rule.gains(val_logits, states)
    results = []
    for edge in MIN_EDGES:
        chosen = _decide(gains, math.inf if edge is None else edge * cost)
        results.append((float(realised_gain(chosen, states, returns, cost).mean()), float(np.mean(chosen != HOLD))))
    gains_by_edge = np.array([g for g, _ in results])
    best = len(results) - 1 - int(np.argmax(gains_by_edge[::-1]))  # the widest margin among equals: no trades
    # on validation (gain 0) means "never trade", not the widest margin that happened to trade nothing
    return msgspec.structs.replace(rule, min_edge=MIN_EDGES[best], validation_gain=results[best][0],
                                   validation_trade_share=results[best][1])
