"""`dualhrq replay --connect`: the decisions of a running server (any number of workers) for a replay.

At each bar's close the server gets the `signal` a gateway would send: the fine bars up to that close, the
coarse bars resampled with the server's coarse rule, and the market at the close. Its model decides and its
gate rules; the replay's independent checker then holds the reply to that same market. A bar without the
history the model needs is a HOLD decided here, as the in-process replay decides it, and never reaches the
server.
"""

from __future__ import annotations

from dualhrq.compliance.gate import GateDecision, MarketSnapshot
from dualhrq.compliance.replay import Decide
from dualhrq.data.bars import Bars
from dualhrq.runtime.client import Client
from dualhrq.runtime.signals import RequestWindows

HOLD = GateDecision("HOLD", 0.0, True, "HOLD", [])


def served_decisions(client: Client, bars: Bars, instrument: str) -> Decide:
    """Bar i's decision, as the server at the other end of ``client`` makes it for ``instrument``."""
    pong = client.ping()
    windows = RequestWindows(bars, pong.coarse_rule, (pong.needs.coarse, pong.needs.fine))

    def decide(i: int, market: MarketSnapshot) -> GateDecision:
        window = windows.at(i)
        if window is None:
            return HOLD
        reply = client.signal(instrument, pong.timeframe, *window,
                              market={"ts": market.ts, "last": market.last, "bid": market.bid, "ask": market.ask,
                                      "prior_close": market.prior_close, "luld_tier": market.luld_tier})
        c = reply.compliance
        return GateDecision(reply.action, reply.quantity, c.allowed, c.original_action, list(c.reasons))

    return decide
