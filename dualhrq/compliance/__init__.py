"""Market-rule compliance for model signals (SEC Rule 201, the LULD plan, risk limits).

- sessions.py  ET trading days and regular hours for int-ns timestamps
- ssr.py       SEC Rule 201 state machine (SSRState)
- luld.py      LULD bands, reference price, limit state and trading pause
- gate.py      ComplianceGate: action -> implied order -> SSR / LULD / risk decision (the runtime's hook)
- journal.py   StateJournal: the gate's per-instrument state in SQLite, committed before each decision returns
- checker.py   an independent re-check of emitted decisions (used by replay)
- replay.py    historical bars through the gate, with a report; policies.py: built-in signal sources
- commands.py  the `dualhrq replay` command

The rule tables themselves (RULES_VERSION, SSR, LULD) are data: dualhrq.data.market_rules.
"""
