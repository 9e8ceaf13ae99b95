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

import msgspec
import numpy as np

from dualhrq.model.vocab import ACTIONS, EXPOSURE_AFTER, STATE_EXPOSURE

HOLD = ACTIONS.index("HOLD")
ALLOWED: tuple[tuple[int, ...], ...] = tuple(
    tuple(ACTIONS.index(a) for a in names)
    for names in (("BUY", "SELL", "HOLD"), ("HOLD", "CLOSE_LONG"), ("HOLD", "CLOSE_SHORT")))  # FLAT, LONG, SHORT
TEMPERATURES = tuple(float(t) for t in np.exp(np.linspace(np.log(0.25), np.log(4.0), 41)))
MIN_EDGES = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, math.inf)
_AFTER = np.asarray(EXPOSURE_AFTER)  # [3, 5]
_BEFORE = np.asarray(STATE_EXPOSURE)  # [3]
_MASK = np.array([[a in allowed for a in range(len(ACTIONS))] for allowed in ALLOWED])  # [3, 5]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class DecisionRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A fitted rule. Returns and the cost are in units of the training std of the forward return."""

    temperature: float
    class_returns: list[list[float]]  # [state][action]: mean forward return of training labels
    cost: float  # round trip
    min_edge: float  # in multiples of the cost; inf never trades
    fitted_on: str  # which samples the temperature and min_edge came from, in words
    validation_gain: float  # mean gain per sample over always-HOLD on those samples, at min_edge
    validation_trade_share: float  # share of those samples it did not HOLD

    def gains(self, logits: np.ndarray, state: np.ndarray) -> np.ndarray:
        """[B, 5] expected gain of each action (-inf where the state does not allow it)."""
        state = np.asarray(state, np.int64)
        probs = softmax(np.asarray(logits, np.float64) / self.temperature)
        mu = (probs * np.asarray(self.class_returns)[state]).sum(axis=-1)  # [B]
        after = _AFTER[state]
        gain = after * mu[:, None] - np.abs(after - _BEFORE[state][:, None]) * (self.cost / 2)
        return np.where(_MASK[state], gain, -np.inf)

    def choose(self, logits: np.ndarray, state: np.ndarray) -> np.ndarray:
        """[B] int64 action indices for policy logits [B, 5] in position states [B]."""
        return _decide(self.gains(logits, state), self.min_edge * self.cost)

    def to_builtins(self) -> dict[str, object]:
        d = msgspec.to_builtins(self)
        d["min_edge"] = None if math.isinf(self.min_edge) else self.min_edge  # JSON has no inf
        return d

    @classmethod
    def from_builtins(cls, d: object, source: str) -> DecisionRule:
        from dualhrq.errors import ModelLoadError

        try:
            if isinstance(d, dict) and d.get("min_edge", 0.0) is None:
                d = {**d, "min_edge": math.inf}
            rule = msgspec.convert(d, cls)
        except msgspec.ValidationError as e:
            raise ModelLoadError(f"{source}: decision_rule: {e}") from None
        shape = np.shape(rule.class_returns)
        if shape != (len(ALLOWED), len(ACTIONS)) or not np.isfinite(rule.class_returns).all():
            raise ModelLoadError(f"{source}: decision_rule.class_returns: expected [{len(ALLOWED)}][{len(ACTIONS)}] "
                                 f"finite numbers, got shape {list(shape)}")
        for name in ("temperature", "cost", "min_edge"):
            value = getattr(rule, name)
            if math.isnan(value) or value < 0 or (name == "temperature" and not 0 < value < math.inf):
                raise ModelLoadError(f"{source}: decision_rule.{name}: expected a number >= 0"
                                     f"{' and finite, > 0' if name == 'temperature' else ''}, got {value}")
        return rule


def _decide(gains: np.ndarray, margin: float) -> np.ndarray:
    best = gains.argmax(axis=-1)
    edge = gains[np.arange(len(gains)), best] - gains[:, HOLD]
    return np.where(edge > margin, best, HOLD)


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
        chosen = _decide(gains, edge * cost)
        results.append((float(realised_gain(chosen, states, returns, cost).mean()), float(np.mean(chosen != HOLD))))
    gains_by_edge = np.array([g for g, _ in results])
    best = len(results) - 1 - int(np.argmax(gains_by_edge[::-1]))  # the widest margin among equals: no trades
    # on validation (gain 0) means "never trade", not the widest margin that happened to trade nothing
    return msgspec.structs.replace(rule, min_edge=MIN_EDGES[best], validation_gain=results[best][0],
                                   validation_trade_share=results[best][1])
