"""Shared pieces for the runtime tests (no tests here): a scripted engine, bars, free ports."""

from __future__ import annotations

import socket

import numpy as np

from dualhrq.runtime.engine import Engine


class CountingEngine(Engine):
    """A segment that counts: z_H_out = z_H + 1, and a row asks to halt once its count reaches the
    row's regime_features[:, 0]. Lets a test script how many segments each row wants and see the carry fed
    back. The heads echo the count so a test can tell which segment a row's outputs came from."""

    def __init__(self, max_batch: int = 8, delay_s: float = 0.0, n_regimes: int = 3) -> None:
        self.name, self.max_batch = "counting", max_batch
        self.delay_s, self.n_regimes = delay_s, n_regimes
        self.calls: list[int] = []  # batch size of every call

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import time

        if self.delay_s:
            time.sleep(self.delay_s)
        b = len(feeds["h_tokens"])
        self.calls.append(b)
        z_h = feeds["z_H"] + 1
        count = z_h[:, 0, 0]
        want = feeds["regime_features"][:, 0]
        halt = count >= want
        q = np.stack([np.where(halt, 1.0, -1.0), np.where(halt, -1.0, 1.0)], axis=1).astype(np.float32)
        logits = np.zeros((b, 5), np.float32)
        logits[:, 0] = feeds["instrument_id"]  # BUY's logit carries the instrument id: rows stay distinct
        regime = np.full((b, self.n_regimes), 1.0 / self.n_regimes, np.float32)
        return {"policy_logits": logits, "quantity": count.astype(np.float32), "value": count.astype(np.float32),
                "q_logits": q, "forecast_coarse": count.astype(np.float32),
                "forecast_fine": feeds["pattern_mask"].sum(1).astype(np.float32), "regime_probs": regime,
                "z_H_out": z_h, "z_L_out": feeds["z_L"] + 1}


def row_inputs(b: int = 1, want_segments: float = 1.0, instrument: int = 0, t_h: int = 4, t_l: int = 6,
               f: int = 3, k: int = 2, p: int = 2) -> dict[str, np.ndarray]:
    """Non-carry graph inputs for b rows of a small graph."""
    regime = np.zeros((b, 20), np.float32)
    regime[:, 0] = want_segments
    return {"h_tokens": np.zeros((b, t_h, f), np.float32), "l_tokens": np.zeros((b, t_l, f), np.float32),
            "instrument_id": np.full(b, instrument, np.int64), "timeframe_id": np.zeros(b, np.int64),
            "regime_features": regime, "pattern_context": np.zeros((b, k, p), np.float32),
            "pattern_mask": np.zeros((b, k), np.float32)}


def zero_carry(b: int, t_h: int = 4, t_l: int = 6, d: int = 2) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((b, t_h, d), np.float32), np.zeros((b, t_l, d), np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
