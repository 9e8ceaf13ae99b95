"""Simple strategies the HRM must beat on the same splits: buy-and-hold, momentum sign, one-bar reversal, ridge,
logistic on the direction, the label frequencies per position state, and a multinomial logistic on the five
action labels (the last two are what the HRM's policy head does, without the network).

Each one implements the validation's Predictor interface (``name``, ``fit(train_idx, resume_from)``,
``predict(test_idx)``) over arrays of the whole dataset, and sees at each sample only what is known then.
Their settings (lookback, regularisation) are fixed in the config before a run, never tuned on test windows.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from dualhrq.errors import DataError
from dualhrq.evaluate.metrics import Predictions
from dualhrq.model.vocab import ACTIONS, position_from_probs
from dualhrq.train.evaluation import N_STATES, LabelBaselines


class BuyAndHold:
    """Always long one unit; its forecast is the training window's mean return (a constant: no IC)."""

    name = "buy_and_hold"

    def __init__(self, returns: np.ndarray) -> None:
        self.returns = returns
        self.mean = 0.0

    def fit(self, train_idx: np.ndarray, resume_from: object | None = None) -> None:
        self.mean = float(self.returns[train_idx].mean())

    def predict(self, test_idx: np.ndarray) -> Predictions:
        return Predictions(position=np.ones(len(test_idx)), forecast=np.full(len(test_idx), self.mean))


class MomentumSign:
    """Long after a rising stretch, short after a falling one: the sign of the sum of the ``lookback`` returns
    before the sample (returns[i - 1] ends at sample i, so all of them are known then)."""

    name = "momentum"

    def __init__(self, returns: np.ndarray, lookback: int) -> None:
        csum = np.concatenate([[0.0], np.cumsum(returns)])
        i = np.arange(len(returns))
        self.signal = csum[i] - csum[np.maximum(i - lookback, 0)]

    def fit(self, train_idx: np.ndarray, resume_from: object | None = None) -> None:
        """Nothing to learn: the rule is fixed."""

    def predict(self, test_idx: np.ndarray) -> Predictions:
        s = self.signal[test_idx]
        return Predictions(position=np.sign(s), forecast=s)


class OneBarReversal:
    """Short after an up-bar, long after a down-bar: minus the sign of the last return before the sample."""

    name = "reversal"

    def __init__(self, returns: np.ndarray) -> None:
        self.signal = -np.concatenate([[0.0], returns[:-1]])

    def fit(self, train_idx: np.ndarray, resume_from: object | None = None) -> None:
        """Nothing to learn: the rule is fixed."""

    def predict(self, test_idx: np.ndarray) -> Predictions:
        s = self.signal[test_idx]
        return Predictions(position=np.sign(s), forecast=s)


class StateOnly:
    """The action labels' frequencies per position state of the training window (add-one smoothed): what the
    label rule's state alone predicts. The states come from the bars, the labels from the (maybe permuted)
    training targets."""

    name = "state_only"

    def __init__(self, states: np.ndarray, actions: np.ndarray) -> None:
        self.states, self.actions = np.asarray(states, np.int64), np.asarray(actions, np.int64)
        self.probs = np.full((N_STATES, len(ACTIONS)), 1.0 / len(ACTIONS))

    def fit(self, train_idx: np.ndarray, resume_from: object | None = None) -> None:
        # the state-only baseline `dualhrq train` reports its held-out cross-entropy against
        self.probs = LabelBaselines.fit(self.actions[train_idx], self.states[train_idx]).by_state

    def predict(self, test_idx: np.ndarray) -> Predictions:
        position = position_from_probs(self.probs[self.states[test_idx]])
        return Predictions(position=position, forecast=position)


class _LinearBaseline:
    """Standardise features on the training window, then fit one scikit-learn model per split from scratch."""

    def __init__(self, features: np.ndarray, returns: np.ndarray) -> None:
        self.features = features
        self.returns = returns
        self.model: Pipeline | None = None

    def _fitted(self) -> Pipeline:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: predict called before fit")
        return self.model


class RidgeForecast(_LinearBaseline):
    """Ridge regression of the next return on the features; position = sign of the forecast."""

    name = "ridge"

    def __init__(self, features: np.ndarray, returns: np.ndarray, alpha: float) -> None:
        super().__init__(features, returns)
        self.alpha = alpha

    def fit(self, train_idx: np.ndarray, resume_from: object | None = None) -> None:
        self.model = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha))
        self.model.fit(self.features[train_idx], self.returns[train_idx])

    def predict(self, test_idx: np.ndarray) -> Predictions:
        f = self._fitted().predict(self.features[test_idx])
        return Predictions(position=np.sign(f), forecast=f)


class LogisticDirection(_LinearBaseline):
    """Logistic regression of the next return's direction; position = 2·P(up) − 1, also its score."""

    name = "logistic"

    def __init__(self, features: np.ndarray, returns: np.ndarray, c: float) -> None:
        super().__init__(features, returns)
        self.c = c

    def fit(self, train_idx: np.ndarray, resume_from: object | None = None) -> None:
        up = self.returns[train_idx] > 0
        if up.all() or not up.any():
            raise DataError("logistic baseline: every training return in this split has the same direction")
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=1000))
        self.model.fit(self.features[train_idx], up)

    def predict(self, test_idx: np.ndarray) -> Predictions:
        score = 2 * self._fitted().predict_proba(self.features[test_idx])[:, 1] - 1
        return Predictions(position=score, forecast=score)


class MultinomialActions(_LinearBaseline):
    """Multinomial logistic regression of the five action labels on the features and the one-hot position
    state; position = P(up-move) - P(down-move), also its score."""

    name = "multinomial"

    def __init__(self, features: np.ndarray, states: np.ndarray, actions: np.ndarray, c: float) -> None:
        onehot = np.eye(N_STATES)[np.asarray(states, np.int64)]
        super().__init__(np.concatenate([features, onehot], axis=1), np.zeros(len(features)))
        self.actions, self.c = np.asarray(actions, np.int64), c
        self.classes: np.ndarray = np.arange(len(ACTIONS))

    def fit(self, train_idx: np.ndarray, resume_from: object | None = None) -> None:
        y = self.actions[train_idx]
        if len(np.unique(y)) < 2:
            raise DataError("multinomial baseline: every training label in this split is the same action")
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=1000))
        self.model.fit(self.features[train_idx], y)
        self.classes = self.model.classes_

    def predict(self, test_idx: np.ndarray) -> Predictions:
        probs = np.zeros((len(test_idx), len(ACTIONS)))
        probs[:, self.classes] = self._fitted().predict_proba(self.features[test_idx])
        position = position_from_probs(probs)
        return Predictions(position=position, forecast=position)
